package notify

import (
	"reflect"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shared is a user's handle on the Hub that every user of one Redis client
// shares (see [Share]). It is the Hub in every way but Close, which lets go
// of the handle; the last handle's Close closes the Hub.
type Shared struct {
	*Hub
	sh      *sharedHub // nil: the Hub is this handle's own
	onError func(error)
	once    sync.Once
}

// sharedHub is a Hub and its users.
type sharedHub struct {
	key  shareKey
	hub  *Hub
	refs int // guarded by hubs.mu

	mu    sync.Mutex // guards users
	users map[*Shared]struct{}
}

type shareKey struct {
	rdb  redis.UniversalClient
	beat time.Duration
}

// hubs holds the shared Hubs by client.
var hubs struct {
	mu sync.Mutex // guards m and every sharedHub's refs
	m  map[shareKey]*sharedHub
}

// Share returns a handle on the Hub of rdb: every caller of Share with the
// same client (and the same Options.Heartbeat) shares one Hub, and so one
// set of pub/sub connections and goroutines, however many handles there
// are. The Hub's refusal count ([Hub.Errors]) is the Hub's, not the
// handle's; opt.OnError is called for the refusals the Hub reports while
// the handle is open. A client whose dynamic type cannot be a map key gets
// a Hub of its own. Each handle must be closed with [Shared.Close].
func Share(rdb redis.UniversalClient, opt *Options) *Shared {
	var o Options
	if opt != nil {
		o = *opt
	}
	s := &Shared{onError: o.OnError}
	if rdb == nil || !reflect.TypeOf(rdb).Comparable() {
		s.Hub = New(rdb, opt)
		return s
	}
	beat := o.Heartbeat
	if beat <= 0 {
		beat = defaultBeat
	}
	k := shareKey{rdb: rdb, beat: beat}
	hubs.mu.Lock()
	defer hubs.mu.Unlock()
	sh := hubs.m[k]
	if sh == nil {
		sh = &sharedHub{key: k, users: make(map[*Shared]struct{})}
		sh.hub = New(rdb, &Options{Heartbeat: beat, OnError: sh.tell})
		if hubs.m == nil {
			hubs.m = make(map[shareKey]*sharedHub)
		}
		hubs.m[k] = sh
	}
	sh.refs++
	sh.mu.Lock()
	sh.users[s] = struct{}{}
	sh.mu.Unlock()
	s.Hub, s.sh = sh.hub, sh
	return s
}

// tell passes a refusal to the OnError of every open handle.
func (sh *sharedHub) tell(err error) {
	sh.mu.Lock()
	var fns []func(error)
	for s := range sh.users {
		if s.onError != nil {
			fns = append(fns, s.onError)
		}
	}
	sh.mu.Unlock()
	for _, fn := range fns {
		fn(err)
	}
}

// Close lets go of the handle; the last handle of a Hub closes it (see
// [Hub.Close]). The Subs and Listeners the handle's user made must be
// closed by that user: they are the Hub's, and stay until then. Close is
// idempotent.
func (s *Shared) Close() error {
	var err error
	s.once.Do(func() {
		if s.sh == nil {
			err = s.Hub.Close()
			return
		}
		sh := s.sh
		sh.mu.Lock()
		delete(sh.users, s)
		sh.mu.Unlock()
		hubs.mu.Lock()
		sh.refs--
		last := sh.refs == 0
		if last {
			delete(hubs.m, sh.key)
		}
		hubs.mu.Unlock()
		if last {
			err = sh.hub.Close()
		}
	})
	return err
}
