package budget

// Key pools (Options.Keys): several credentials, each a budget of its own
// beside the budget's hash (keyfield.lua), a booking going on the key whose
// slot comes first by the pool's index (keys.lua; keybook.go), the
// upstream's word applied to the key that made the call, keys removed for
// the whole fleet (keys_remove.lua), and what every server hears of them.
// While Redis is unreachable, see keylocal.go.

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// ErrNoKeys is what [Budget.Reserve] returns, wrapped, when every key of
// [Options].Keys this server holds was removed from the pool ([Budget.Remove],
// or a 401 observed through a reservation): no call can be made.
var ErrNoKeys = errors.New("budget: no live key in the pool")

var (
	//go:embed keyfield.lua
	keyfieldLua string
	//go:embed keys.lua
	keysLua string
	//go:embed keys_remove.lua
	keysRemoveLua string

	keysWaitScript = redis.NewScript(keyfieldLua + keysLua + "local kreply = (function()\n" + waitLua +
		"\nend)()\nif kreply[1] == 0 then ksum(kreply[3] - kreply[2]) end\nreturn {kreply, kidx, kgone, gen}\n")
	keyPauseScript    = redis.NewScript(keyfieldLua + inKey(pauseLua))
	keyCapScript      = redis.NewScript(keyfieldLua + inKey(capLua))
	keyGivebackScript = redis.NewScript(keyfieldLua + inKey(givebackLua))
	keyShiftScript    = redis.NewScript(keyfieldLua + inKey(shiftLua))
	keysRemoveScript  = redis.NewScript(keysRemoveLua)
)

// inKey runs script, a script of the budget's hash, on the hash of a key
// (see keyfield.lua), and writes the key's summary after it.
func inKey(script string) string {
	return "kone()\nlocal kreply = (function()\nlocal redis = kredis\n" + script + "\nend)()\nksum()\nreturn kreply\n"
}

// removedKeep is how long Redis keeps a key's removal after the latest:
// servers restarted meanwhile with the key still in Options.Keys do not
// book it. A server that knows of the removal writes it back when Redis
// lost it.
const removedKeep = 30 * 24 * time.Hour

// noKey is the wait script's kind when no key of the caller's is live.
const noKey = 5

// keyID returns the id a credential has in Redis, in messages and in logs:
// the first 64 bits of a SHA-256 of it, in hex. The credential itself is
// never written anywhere.
func keyID(cred string) string {
	h := sha256.Sum256([]byte("locksmith/budget key\x00" + cred))
	return hex.EncodeToString(h[:8])
}

// pool is the keys of a Budget with Options.Keys.
type pool struct {
	ids     []string       // the keys' ids, in the order of Options.Keys, duplicates dropped
	hashes  []string       // the keys' hashes, P{name}:budget:k:ID
	creds   []string       // the credentials, by the same index
	index   map[string]int // by id
	local   []*localLimiter
	zset    string // the pool's index, P{name}:budget:keys
	removed string // P{name}:budget:removed
	keep    int64  // removedKeep, in ms
	// sum is the summary's arguments (see keyfield.lua): the tau of the
	// Limit, each extra dimension's field, tau and cap, and their number.
	sum []any
	// gen is the generation of the index this server last announced its
	// keys in (see keys.lua), or 0 to announce them at the next booking.
	gen atomic.Int64
	// bookKeys are a booking's KEYS; boxedKeep, keep as an argument.
	bookKeys  []string
	boxedKeep any

	mu   sync.Mutex // guards keys, live and foreign
	keys []keyState
	live *liveKeys // nil when the keys removed changed since it was made
	// foreign holds the ids of keys not in this server's Options.Keys
	// removed while Redis was unreachable: written back once it is
	// (pending says there are some).
	foreign map[string]struct{}
	pending atomic.Bool
}

// maxForeignRemovals bounds the removals of other servers' keys kept while
// Redis is unreachable.
const maxForeignRemovals = 1000

// keyState is what this server knows of one key of its pool.
type keyState struct {
	removed bool
	// The end of the key's latest pause heard of, and of the latest
	// respace of its schedule, µs of the Redis clock.
	pauseAt, respacedAt int64
	// mine is the latest tat this server set or learned of the key, sent
	// with each booking (as Budget.mineTAT is for a budget of one key).
	mine int64
	// localPause is the end of a pause of the key kept in this process
	// while Redis was unreachable.
	localPause time.Time
	// shifts are the moves of the key's schedule past calls that left
	// late heard of (see shift.go), in order of instant; forgot is the
	// latest instant of those dropped.
	shifts []respace
	forgot int64
}

func newPool(b *Budget) *pool {
	p := &pool{index: make(map[string]int), zset: b.key + ":keys", removed: b.key + ":removed",
		keep: removedKeep.Milliseconds()}
	for _, cred := range b.opt.Keys {
		id := keyID(cred)
		if _, dup := p.index[id]; dup {
			continue
		}
		p.index[id] = len(p.ids)
		p.ids = append(p.ids, id)
		p.hashes = append(p.hashes, p.hash(b, id))
		p.creds = append(p.creds, cred)
		p.local = append(p.local, newLocalLimiter(b.lim, b.dims, b.opt.FleetSize))
	}
	p.keys = make([]keyState, len(p.ids))
	p.bookKeys, p.boxedKeep = []string{b.key, p.zset, p.removed}, p.keep
	p.sum = append(p.sum, b.tau)
	for _, d := range b.dims {
		p.sum = append(p.sum, d.field, d.tau, d.cap)
	}
	p.sum = append(p.sum, len(b.dims))
	return p
}

// hash returns the name of the hash of the key of id.
func (p *pool) hash(b *Budget, id string) string { return b.key + ":k:" + id }

// onKey returns the script, KEYS and ARGV that run s, a script of the
// budget's hash, with args: on the budget's hash itself when k is 0, else
// on the hash of key k (1 + its index in the pool) by ks, its keyed
// version (see keyfield.lua).
func (b *Budget) onKey(k int, s, ks *redis.Script, args []any) (*redis.Script, []string, []any) {
	if k == 0 {
		return s, []string{b.key}, args
	}
	p := b.pool
	return ks, []string{b.key, p.hashes[k-1], p.zset}, append(append(args, p.sum...), p.ids[k-1])
}

// maxKeys is the most distinct keys a pool takes: each booking's script
// reads them all once a generation, and Redis's Lua unpacks at most 8,000
// values in one call (5,000 keys failed with "too many results to
// unpack").
const maxKeys = 1000

// checkKeys returns an error when opt's keys cannot be used.
func checkKeys(opt Options) error {
	distinct := make(map[string]struct{}, len(opt.Keys))
	for i, k := range opt.Keys {
		if k == "" {
			return fmt.Errorf("key %d of Keys is empty", i)
		}
		distinct[k] = struct{}{}
	}
	if len(distinct) > maxKeys {
		return fmt.Errorf("too many keys: %d distinct, at most %d", len(distinct), maxKeys)
	}
	if len(opt.Keys) > 0 && opt.Adaptive {
		return errors.New("keys with Adaptive: a learned rate per key is not supported")
	}
	return nil
}

// liveKeys returns how many keys of the pool are not removed: Stats.Keys.
func (b *Budget) liveKeys() int {
	if b.pool == nil {
		return 0
	}
	p := b.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range p.keys {
		if !k.removed {
			n++
		}
	}
	return n
}

// noKeysError is Reserve's error when no key of the pool is live.
func (b *Budget) noKeysError(op string) error {
	return fmt.Errorf("budget: %s %s: every key of Options.Keys was removed: %w", op, redisx.Quote(b.name), ErrNoKeys)
}

// keyOf returns the key (1 + its index in the pool) of the reservation of b
// that ctx carries, or 0.
func (b *Budget) keyOf(ctx context.Context) int {
	if r := FromContext(ctx); r != nil && r.b == b {
		return r.r.kidx
	}
	return 0
}

// keyMessage hears a message of a pool's on the budget's channel: a key's
// pause, "k ID END [RESPACED K]" (see keyfield.lua), a move of its schedule
// past a call that left late, "k ID s AT FROM D" (see shift.lua), or its
// removal, "r ID". It reports whether m was one; keys not in this server's
// pool are ignored. Callers sleeping on a key whose schedule a late call
// moved move their slots with it, in place; after a pause, a respace or a
// removal they book again.
func (b *Budget) keyMessage(m string) bool {
	switch {
	case strings.HasPrefix(m, "r "):
		if b.pool != nil {
			if i, ok := b.pool.index[m[2:]]; ok {
				b.keyRemoved(i)
			}
		}
		return true
	case strings.HasPrefix(m, "k "):
		id, body, _ := strings.Cut(m[2:], " ")
		if s, ok := strings.CutPrefix(body, "s "); ok {
			// As the budget's own moves (see message): one shift.lua never
			// announces is dropped.
			f := strings.Fields(s)
			if len(f) != 3 || b.pool == nil {
				return true
			}
			at, aerr := strconv.ParseInt(f[0], 10, 64)
			from, ferr := strconv.ParseInt(f[1], 10, 64)
			d, derr := strconv.ParseInt(f[2], 10, 64)
			if i, ok := b.pool.index[id]; ok && aerr == nil && ferr == nil && derr == nil && at > 0 && from > 0 && d > 0 && d <= b.t {
				b.keyShifted(i, respace{at: at, from: from, d: d})
			}
			return true
		}
		ends, rest, _ := strings.Cut(body, " ")
		respaced, _, _ := strings.Cut(rest, " ")
		at, err := strconv.ParseInt(ends, 10, 64)
		var rs int64
		if err == nil && respaced != "" {
			rs, err = strconv.ParseInt(respaced, 10, 64)
		}
		if b.pool != nil && err == nil {
			if i, ok := b.pool.index[id]; ok {
				b.keyHeard(i, at, rs)
			}
		}
		return true
	}
	return false
}

// keyHeard records that key i is paused until at and that its schedule
// was respaced at respaced (µs of the Redis clock; 0 for not), and wakes
// the sleeping Waits to look.
func (b *Budget) keyHeard(i int, at, respaced int64) {
	p := b.pool
	p.mu.Lock()
	k := &p.keys[i]
	grew := at > k.pauseAt || respaced > k.respacedAt
	k.pauseAt = max(k.pauseAt, at)
	if respaced > k.respacedAt {
		k.respacedAt = respaced
		// What this server remembers of the old schedule must not push
		// the new one back out.
		k.mine = min(k.mine, respaced+b.t+b.tau)
	}
	p.mu.Unlock()
	if grew {
		b.wakeSleepers()
	}
}

// knownRespaceOf is the latest respace heard of, of the budget's
// schedule, or of key k's (1 + its index; 0 for the budget's).
func (b *Budget) knownRespaceOf(k int) int64 {
	if k == 0 {
		return b.knownRespace()
	}
	p := b.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[k-1].respacedAt
}

// heardOf records a pause ending at at and a respace at respaced read from
// Redis (see readPause): the budget's, or key k's (1 + its index).
func (b *Budget) heardOf(k int, at, respaced int64) {
	if k == 0 {
		b.heard(at, respaced, 0)
		return
	}
	b.keyHeard(k-1, at, respaced)
}

// keyRemoved marks key i removed in this server, and wakes the sleeping
// Waits: those on the key book again on the others.
func (b *Budget) keyRemoved(i int) {
	p := b.pool
	p.mu.Lock()
	was := p.keys[i].removed
	p.keys[i].removed = true
	p.live = nil
	p.mu.Unlock()
	if !was {
		b.log("a key was removed from the pool", "key", p.ids[i])
		b.wakeSleepers()
		b.mu.Lock()
		close(b.keysGone)
		b.keysGone = make(chan struct{})
		b.mu.Unlock()
	}
}

// wakeSleepers has every sleeping Wait look at the pauses again.
func (b *Budget) wakeSleepers() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.paused != nil {
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// keysPaused reports whether every live key of the pool is paused at now
// (µs of the Redis clock), as far as this server has heard.
func (b *Budget) keysPaused(now int64) bool {
	if b.pool == nil {
		return false
	}
	p := b.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	live := 0
	for _, k := range p.keys {
		if !k.removed {
			if k.pauseAt <= now {
				return false
			}
			live++
		}
	}
	return live > 0
}

// Remove removes the credential key from the budget's pool of keys
// ([Options].Keys) for the whole fleet: a revoked credential. Every server
// stops booking it within a message on the budget's channel (a server that
// missed it, at its next booking); callers sleeping on a slot of the key
// book again on the others. A 401 observed through a reservation
// ([Reservation.Observe]) removes the reservation's key. A key stays
// removed for 30 days after its latest removal, even for servers restarted
// with it in Options.Keys, and for as long as a server that knows of it
// runs, even when Redis loses it (FLUSHALL, a restart without
// persistence). A key not in this server's Options.Keys is removed for the
// servers that have it. Once every key of a server's is removed, its
// Reserve fails with an error wrapping [ErrNoKeys]. The credential is never
// written to Redis nor logged: a hash of it names it.
//
// When Redis is unreachable the key is removed in this process at once,
// and for the fleet at this server's first booking once Redis is back.
// Remove returns an error when the budget has no Options.Keys, or key is
// empty.
func (b *Budget) Remove(ctx context.Context, key string) error {
	if err := b.check(); err != nil {
		return err
	}
	switch {
	case b.pool == nil:
		return fmt.Errorf("budget: remove %s: the budget has no Options.Keys", redisx.Quote(b.name))
	case key == "":
		return fmt.Errorf("budget: remove %s: empty key", redisx.Quote(b.name))
	}
	return b.removeID(ctx, keyID(key))
}

// removeID removes the key of id for the fleet.
func (b *Budget) removeID(ctx context.Context, id string) error {
	p := b.pool
	if i, ok := p.index[id]; ok {
		b.keyRemoved(i)
	}
	_, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		keys := []string{b.key, p.zset, p.removed, p.hash(b, id)}
		return keysRemoveScript.Run(ctx, b.rdb.Redis(), keys, id, p.keep, b.rdb.PublishFlag()).Int64()
	}, nil)
	switch {
	case err != nil && redisx.Outage(err):
		// The next booking announces this server's keys, and writes the
		// removal back; another server's key is written back after it.
		p.gen.Store(0)
		if _, ok := p.index[id]; !ok {
			p.mu.Lock()
			if p.foreign == nil {
				p.foreign = make(map[string]struct{})
			}
			if len(p.foreign) < maxForeignRemovals {
				p.foreign[id] = struct{}{}
			}
			p.mu.Unlock()
			p.pending.Store(true)
		}
		return nil
	case err != nil:
		return b.fail(ctx, "remove", err)
	}
	return nil
}

// writeBackRemovals removes, for the fleet, the keys of other servers
// removed here while Redis was unreachable; one that cannot be written
// yet (Redis away again) stays for the next booking, one Redis refuses is
// dropped (and logged) rather than tried at every booking.
func (b *Budget) writeBackRemovals() {
	p := b.pool
	p.mu.Lock()
	ids := make([]string, 0, len(p.foreign))
	for id := range p.foreign {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(b.base, giveBackTimeout)
		err := b.removeID(ctx, id)
		cancel()
		if err == nil && p.pending.Load() {
			return // Redis away again: kept by removeID, pending again
		}
		if err != nil {
			b.log("writing back the removal of another server's key failed; it is dropped", "err", err)
		}
		p.mu.Lock()
		delete(p.foreign, id)
		p.mu.Unlock()
	}
}

// observeKey is Observe on a budget with Options.Keys: the response is
// applied to the key of the reservation ctx carries, a 401 removes it; a
// response with something to apply and no reservation to tell its key is
// an error.
func (b *Budget) observeKey(ctx context.Context, h http.Header, status int, now time.Time, f feedback) error {
	k := b.keyOf(ctx)
	var caps []any
	if f.pause <= 0 {
		caps = b.capsOf(h, now, f)
	}
	switch {
	case k == 0 && (status == http.StatusUnauthorized || f.pause > 0 || len(caps) > 0):
		return fmt.Errorf("budget: observe %s: the budget has Options.Keys and ctx carries no reservation of it: "+
			"observe a response through its call's reservation (Reservation.Observe), which tells its key", redisx.Quote(b.name))
	case k == 0:
		return nil
	case status == http.StatusUnauthorized:
		return b.removeID(ctx, b.pool.ids[k-1])
	case f.pause > 0:
		f.key = k
		return b.apply(ctx, "observe", f)
	case len(caps) > 0:
		return b.applyCaps(ctx, "observe", caps, k)
	}
	return nil
}
