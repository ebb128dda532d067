package fill_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// profile has an unexported field, which the codec drops, and a time in a
// fixed zone, which the codec does not keep.
type profile struct {
	Name    string
	Joined  time.Time
	secret  string
	Friends map[string]int
}

// TestSameValueEverywhere: the callers on the loading server get the value
// as the codec returns it, as every other server and every later hit does,
// not the loader's own object.
func TestSameValueEverywhere(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 20*time.Second)
	friends := map[string]int{"x": 1}
	loaded := profile{Name: "n", Joined: time.Date(2020, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600)),
		secret: "s", Friends: friends}
	first, err := fill.Get(ctx, a, "p", func(context.Context) (profile, error) { return loaded, nil })
	if err != nil {
		t.Fatal(err)
	}
	other, err := fill.Get(ctx, b, "p", func(context.Context) (profile, error) { t.Error("loaded again"); return profile{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(first, other) {
		t.Fatalf("loading server got %+v; another server %+v", first, other)
	}
	if first.secret != "" {
		t.Error("the loading server's callers got the loader's unexported field")
	}
	if !first.Joined.Equal(loaded.Joined) {
		t.Errorf("Joined = %v; want the instant %v", first.Joined, loaded.Joined)
	}
	first.Friends["y"] = 2
	if len(friends) != 1 {
		t.Error("the callers share the loader's map")
	}
}

type ctxKey struct{}

// TestLoaderKeepsCallerValues: the loader's ctx is detached from the
// caller's cancellation, not from its values.
func TestLoaderKeepsCallerValues(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx, cancel := context.WithCancel(context.WithValue(redistest.Context(t, 20*time.Second), ctxKey{}, "request-42"))
	defer cancel()
	v, err := fill.Get(ctx, c, "k", func(ctx context.Context) (string, error) {
		s, _ := ctx.Value(ctxKey{}).(string)
		if ctx.Done() == nil {
			return "", errors.New("the loader's ctx cannot end")
		}
		return s, nil
	})
	if err != nil || v != "request-42" {
		t.Fatalf("got %q, %v; want the caller's value in the loader's ctx", v, err)
	}
}

type account struct {
	ID   int
	Tags []string
}

// TestTwoTypesOnOneKey: servers reading one key as two types that cannot
// decode each other do not reload it in turn on every read: after at most
// one overwrite, the second type gets a clear error naming the key and both
// types.
func TestTwoTypesOnOneKey(t *testing.T) {
	m, rdb := redistest.Mini(t)
	structs := newCache(t, rdb, nil)
	ints := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 20*time.Second)
	var loads int
	var conflict *fill.TypeConflictError
	for i := range 100 {
		if i%2 == 0 {
			_, err := fill.Get(ctx, structs, "k", func(context.Context) (account, error) {
				loads++
				return account{ID: 1, Tags: []string{"a"}}, nil
			})
			if err != nil && !errors.As(err, &conflict) {
				t.Fatalf("struct read: %v", err)
			}
		} else {
			_, err := fill.Get(ctx, ints, "k", func(context.Context) (int, error) { loads++; return 7, nil })
			if err != nil && !errors.As(err, &conflict) {
				t.Fatalf("int read: %v", err)
			}
		}
	}
	if loads > 2 {
		t.Errorf("%d loads for 100 alternating reads; want at most 2", loads)
	}
	if conflict == nil {
		t.Fatal("no TypeConflictError")
	}
	msg := conflict.Error()
	if !errors.Is(conflict, fill.ErrTypeConflict) || !strings.Contains(msg, `"k"`) ||
		!strings.Contains(msg, "fill_test.account") || !strings.Contains(msg, "int") {
		t.Errorf("error %q: want the key and both types", msg)
	}
	if st := structs.Stats().TypeConflicts + ints.Stats().TypeConflicts; st == 0 {
		t.Error("TypeConflicts not counted")
	}
}

// TestSchemaChange: an entry written by an older release as a type that no
// longer decodes into the reader's is reloaded once, then served.
func TestSchemaChange(t *testing.T) {
	m, rdb := redistest.Mini(t)
	old := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	type v1 struct{ ID string }
	if _, err := fill.Get(ctx, old, "k", func(context.Context) (v1, error) { return v1{ID: "x"}, nil }); err != nil {
		t.Fatal(err)
	}
	current := newCache(t, redistest.Client(t, m.Addr()), nil)
	type v2 struct{ ID int }
	var loads int
	for range 5 {
		v, err := fill.Get(ctx, current, "k", func(context.Context) (v2, error) { loads++; return v2{ID: 9}, nil })
		if err != nil || v.ID != 9 {
			t.Fatalf("got %+v, %v", v, err)
		}
	}
	if loads != 1 {
		t.Errorf("loads = %d; want 1", loads)
	}
}

// TestNotFoundNamesKey: a cached absence's error names the key.
func TestNotFoundNamesKey(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	missing := func(context.Context) (int, error) { return 0, fill.ErrNotFound }
	if _, err := fill.Get(ctx, c, "user:42", missing); !errors.Is(err, fill.ErrNotFound) {
		t.Fatalf("first: %v", err)
	}
	_, err := fill.Get(ctx, c, "user:42", missing)
	if !errors.Is(err, fill.ErrNotFound) || err.Error() != `fill: "user:42": not found` {
		t.Fatalf("cached absence: got %v", err)
	}
}

// TestSetTTL: a loader sets its value's TTL, or has it not stored at all
// while its waiters still get it.
func TestSetTTL(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{PollInterval: time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, a, "short", func(ctx context.Context) (int, error) {
		fill.SetTTL(ctx, 7*time.Second)
		return 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	if ttl := m.TTL("__locksmith:{short}:value"); ttl != 7*time.Second {
		t.Errorf("TTL = %v; want the loader's 7s", ttl)
	}
	started, open := make(chan struct{}), make(chan struct{})
	lead := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, a, "nostore", func(ctx context.Context) (int, error) {
			close(started)
			<-open
			fill.SetTTL(ctx, 0)
			return 2, nil
		})
		lead <- err
	}()
	<-started
	follower := make(chan int, 1)
	go func() {
		v, err := fill.Get(ctx, b, "nostore", func(ctx context.Context) (int, error) {
			fill.SetTTL(ctx, 0)
			return 3, nil
		})
		if err != nil {
			t.Error(err)
		}
		follower <- v
	}()
	// Subscribed: an unstored value reaches only the waiters listening.
	redistest.WaitFor(t, "the follower waits", func() bool {
		n, _ := rdb.PubSubNumSub(ctx, "__locksmith:{nostore}").Result()
		return n["__locksmith:{nostore}"] == 1
	})
	close(open)
	if err := <-lead; err != nil {
		t.Fatal(err)
	}
	// The follower gets the value from the message or, when it looked
	// again between the release and the message's arrival, from what the
	// holder left for its waiters.
	if v := <-follower; v != 2 {
		t.Errorf("follower got %d; want the unstored 2", v)
	}
	if m.Exists("__locksmith:{nostore}:value") || m.Exists("__locksmith:{nostore}") {
		t.Errorf("keys left: %v", m.Keys())
	}
	// The next Get loads: nothing was stored.
	if v, _ := fill.Get(ctx, b, "nostore", func(context.Context) (int, error) { return 4, nil }); v != 4 {
		t.Errorf("next Get: got %d; want a new load", v)
	}
}

type person struct {
	Name string
	Age  int
}

type contact struct{ Email string }

// TestLenientDecodeOfAnotherType: an entry of another type that the codec
// decodes leniently (no field in common: a zero value) is never served as
// a hit: the reader's loader runs, or it gets a TypeConflictError. An
// entry of the same type with fields added or missing still decodes.
func TestLenientDecodeOfAnotherType(t *testing.T) {
	m, rdb := redistest.Mini(t)
	people := newCache(t, rdb, nil)
	contacts := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 20*time.Second)
	for i := range 10 {
		if i%2 == 0 {
			p, err := fill.Get(ctx, people, "k", func(context.Context) (person, error) { return person{"ann", 30}, nil })
			if err == nil && p.Name == "" {
				t.Fatalf("read %d: a zero person served as a hit", i)
			}
			if err != nil && !errors.Is(err, fill.ErrTypeConflict) {
				t.Fatalf("read %d: %v", i, err)
			}
		} else {
			c, err := fill.Get(ctx, contacts, "k", func(context.Context) (contact, error) { return contact{"a@b"}, nil })
			if err == nil && c.Email == "" {
				t.Fatalf("read %d: a zero contact served as a hit", i)
			}
			if err != nil && !errors.Is(err, fill.ErrTypeConflict) {
				t.Fatalf("read %d: %v", i, err)
			}
		}
	}

	// The same type, written with a field fewer (an older release): read.
	type older struct{ Name string }
	payload, err := codec.MsgPack.Marshal(older{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	entry := envelope.Encode(nil, envelope.Entry{CreatedAt: time.Now(), Type: "github.com/locksmith-go/locksmith/fill_test.person",
		Payload: payload}, 0)
	m.Set("__locksmith:{same}:value", string(entry))
	m.SetTTL("__locksmith:{same}:value", time.Hour)
	p, err := fill.Get(ctx, people, "same", func(context.Context) (person, error) { t.Error("reloaded"); return person{}, nil })
	if err != nil || p.Name != "bob" {
		t.Fatalf("got %+v, %v; want bob from the older entry", p, err)
	}
}
