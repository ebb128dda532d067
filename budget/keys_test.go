package budget_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// reserveKey reserves a call on b within 200ms (at once, for a limit of one call per second or slower)
// and returns its key, done.
func reserveKey(t *testing.T, b *budget.Budget) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if err := r.Done(context.Background()); err != nil {
		t.Fatalf("Done: %v", err)
	}
	return r.Key()
}

// TestKeysSpread: three keys of one call per second each take three calls
// at once, one each; the fourth has no slot within its deadline.
func TestKeysSpread(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b", "key-c"}
	b := newBudget(t, rdb, "spread", budget.Limit{Rate: 1}, &budget.Options{Keys: keys})
	got := map[string]int{}
	for range 3 {
		got[reserveKey(t, b)]++
	}
	for _, k := range keys {
		if got[k] != 1 {
			t.Fatalf("keys booked: %v; want each of %v once", got, keys)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.Reserve(ctx, budget.Foreground, budget.Cost{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth Reserve within 100ms: %v; want an error wrapping context.DeadlineExceeded", err)
	}
	if n := b.Stats().Keys; n != 3 {
		t.Fatalf("Stats().Keys = %d; want 3", n)
	}
}

// rateLimited is a 429's header asking for secs seconds.
func rateLimited(secs string) http.Header {
	h := http.Header{}
	h.Set("Retry-After", secs)
	return h
}

// TestKeysPauseOneKey: a 429 observed through a reservation pauses its key
// only: the next calls go on the others at once, and the budget is not
// paused.
func TestKeysPauseOneKey(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b", "key-c"}
	b := newBudget(t, rdb, "pause-one", budget.Limit{Rate: 1}, &budget.Options{Keys: keys})
	ctx := context.Background()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	limited := r.Key()
	if err := r.Observe(ctx, rateLimited("30"), http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 2 {
		got[reserveKey(t, b)] = true
	}
	if got[limited] || len(got) != 2 {
		t.Fatalf("keys booked after a 429 on %s: %v; want the two others", limited, got)
	}
	if b.Paused() {
		t.Fatal("Paused() = true with two keys live; want false")
	}
	if n := b.Stats().PausesRateLimited; n != 1 {
		t.Fatalf("Stats().PausesRateLimited = %d; want 1", n)
	}
	// The key's pause is in the key's hash; the budget's own is not set.
	if p := field(t, rdb, b, "pause"); p != -1 {
		t.Fatalf("the budget's pause = %d; want none", p)
	}
	p, err := rdb.HGet(ctx, budget.Key(b)+":k:"+budget.KeyID(limited), "pause").Int64()
	if err != nil || p <= redisNow(t, rdb) {
		t.Fatalf("the key's pause = %d (%v); want one ahead", p, err)
	}
}

// TestKeysRemove: a removed key is booked no more; with every key removed,
// Reserve fails with ErrNoKeys.
func TestKeysRemove(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "remove", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	ctx := context.Background()
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	if n := b.Stats().Keys; n != 1 {
		t.Fatalf("Stats().Keys = %d after a Remove; want 1", n)
	}
	for range 5 {
		if k := reserveKey(t, b); k != "key-b" {
			t.Fatalf("booked %q after key-a was removed; want key-b", k)
		}
	}
	// Removing it again, or a key this server does not hold, is no error.
	for _, k := range []string{"key-a", "key-z"} {
		if err := b.Remove(ctx, k); err != nil {
			t.Fatalf("Remove(%q): %v", k, err)
		}
	}
	if err := b.Remove(ctx, "key-b"); err != nil {
		t.Fatal(err)
	}
	_, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if !errors.Is(err, budget.ErrNoKeys) {
		t.Fatalf("Reserve with every key removed: %v; want an error wrapping ErrNoKeys", err)
	}
	if strings.Contains(err.Error(), "key-") {
		t.Fatalf("the error %q names a credential", err)
	}
	if n := b.Stats().Keys; n != 0 {
		t.Fatalf("Stats().Keys = %d; want 0", n)
	}
}

// TestKeys401: a 401 observed through a reservation removes its key, for
// another server too.
func TestKeys401(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "401", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	other := newBudget(t, redistest.Client(t, m.Addr()), "401", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	ctx := context.Background()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	revoked := r.Key()
	if err := r.Observe(ctx, http.Header{}, http.StatusUnauthorized); err != nil {
		t.Fatal(err)
	}
	_ = r.Done(ctx)
	if n := b.Stats().Keys; n != 1 {
		t.Fatalf("Stats().Keys = %d after a 401; want 1", n)
	}
	// The other server learns it by its booking even without the message.
	for range 4 {
		if k := reserveKey(t, other); k == revoked {
			t.Fatalf("the other server booked the key revoked by a 401")
		}
	}
	if n := other.Stats().Keys; n != 1 {
		t.Fatalf("the other server's Stats().Keys = %d; want 1", n)
	}
}

// TestKeysMisuse: what a budget with Keys cannot do gets a clear error.
func TestKeysMisuse(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ctx := context.Background()
	b := newBudget(t, rdb, "misuse", budget.Limit{Rate: 100}, &budget.Options{Keys: []string{"key-a"}})
	if err := b.Wait(ctx, budget.Foreground); err == nil || !strings.Contains(err.Error(), "Reserve") {
		t.Fatalf("Wait with Keys: %v; want an error that says to use Reserve", err)
	}
	if err := b.Observe(ctx, rateLimited("5"), http.StatusTooManyRequests); err == nil {
		t.Fatal("Observe(429) without a reservation, with Keys: nil; want an error")
	}
	if err := b.Observe(ctx, http.Header{}, http.StatusOK); err != nil {
		t.Fatalf("Observe(200) of nothing, without a reservation: %v; want nil", err)
	}
	if b.Paused() {
		t.Fatal("an Observe refused paused the budget")
	}
	plain := newBudget(t, rdb, "misuse-plain", budget.Limit{Rate: 100}, nil)
	if err := plain.Remove(ctx, "key-a"); err == nil {
		t.Fatal("Remove on a budget without Keys: nil; want an error")
	}
	if err := b.Remove(ctx, ""); err == nil {
		t.Fatal(`Remove(""): nil; want an error`)
	}
	r, err := plain.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	if k := r.Key(); k != "" {
		t.Fatalf("Key() without Keys = %q; want \"\"", k)
	}
	for _, tc := range []struct {
		name string
		opt  budget.Options
		want string
	}{
		{"empty key", budget.Options{Keys: []string{"key-a", ""}}, "empty"},
		{"with adaptive", budget.Options{Keys: []string{"key-a"}, Adaptive: true}, "with Adaptive"},
		{"too many", budget.Options{Keys: manyKeys(1001)}, "too many keys: 1001 distinct, at most 1000"},
	} {
		bad := newBudget(t, rdb, "bad", budget.Limit{Rate: 1}, &tc.opt)
		if _, err := bad.Reserve(ctx, budget.Foreground, budget.Cost{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Reserve: %v; want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// TestKeysNotInClear: no credential appears in Redis, in a key, a field or
// a value, and the log names keys by their id.
func TestKeysNotInClear(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"sk-secret-one", "sk-secret-two"}
	var log redistest.Buffer
	b := newBudget(t, rdb, "clear", budget.Limit{Rate: 1}, &budget.Options{Keys: keys, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	ctx := context.Background()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	h := rateLimited("20")
	h.Set("X-Rate-Limit-Remaining", "0")
	if err := r.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	_ = r.Done(ctx)
	if err := b.Remove(ctx, "sk-secret-two"); err != nil {
		t.Fatal(err)
	}
	var dump strings.Builder
	for _, k := range m.Keys() {
		dump.WriteString(k + "\n")
		if fields, err := m.HKeys(k); err == nil {
			for _, f := range fields {
				dump.WriteString(f + "=" + m.HGet(k, f) + "\n")
			}
		}
	}
	dump.WriteString(log.String())
	for _, k := range keys {
		if strings.Contains(dump.String(), k) {
			t.Fatalf("the credential %q is in clear in Redis or the log:\n%s", k, dump.String())
		}
	}
	if !strings.Contains(log.String(), budget.KeyID("sk-secret-two")) {
		t.Fatalf("the log does not name the key removed by its id:\n%s", log.String())
	}
}

// TestKeysFlushAll: a removal Redis lost is written back by a server that
// knows of it: a server started afterwards with the same keys does not book
// the removed one.
func TestKeysFlushAll(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "flush", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	ctx := context.Background()
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	m.FlushAll()
	if k := reserveKey(t, b); k != "key-b" {
		t.Fatalf("booked %q after FLUSHALL; want key-b", k)
	}
	restarted := newBudget(t, redistest.Client(t, m.Addr()), "flush", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	for range 4 {
		if k := reserveKey(t, restarted); k != "key-b" {
			t.Fatalf("a server started after FLUSHALL booked %q; want key-b only", k)
		}
	}
}

// TestKeysUnion: servers with different lists share the keys they have in
// common, each booking only its own; a key one server added is live for it.
func TestKeysUnion(t *testing.T) {
	m, rdb := redistest.Mini(t)
	short := newBudget(t, rdb, "union", budget.Limit{Rate: 1}, &budget.Options{Keys: []string{"key-a", "key-b"}})
	long := newBudget(t, redistest.Client(t, m.Addr()), "union", budget.Limit{Rate: 1}, &budget.Options{Keys: []string{"key-b", "key-a", "key-c"}})
	got := map[string]int{}
	got[reserveKey(t, short)]++
	got[reserveKey(t, long)]++
	got[reserveKey(t, long)]++
	if got["key-a"] != 1 || got["key-b"] != 1 || got["key-c"] != 1 {
		t.Fatalf("keys booked: %v; want each of key-a, key-b, key-c once", got)
	}
	// key-a and key-b are taken for a second: the short list has nothing
	// within 200ms.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := short.Reserve(ctx, budget.Foreground, budget.Cost{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Reserve on the short list: %v; want an error wrapping context.DeadlineExceeded", err)
	}
	if a, b := short.Stats().Keys, long.Stats().Keys; a != 2 || b != 3 {
		t.Fatalf("Stats().Keys = %d and %d; want 2 and 3", a, b)
	}
}

// TestKeysRemaining: "remaining" headers observed through a reservation
// are its key's: remaining 0 pauses that key until the reset, a few
// remaining cap it, and the other keys go on.
func TestKeysRemaining(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b", "key-c"}
	b := newBudget(t, rdb, "remaining", budget.Limit{Rate: 1000, Burst: 10}, &budget.Options{Keys: keys})
	ctx := context.Background()
	reset := strconv.FormatInt(time.Now().Add(30*time.Second).Unix(), 10)
	observe := func(remaining string) string {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("X-Rate-Limit-Remaining", remaining)
		h.Set("X-Rate-Limit-Reset", reset)
		if err := r.Observe(ctx, h, http.StatusOK); err != nil {
			t.Fatal(err)
		}
		_ = r.Done(ctx)
		return r.Key()
	}
	exhausted := observe("0")
	capped := observe("2")
	if exhausted == capped {
		t.Fatalf("both reservations went on %s; want two keys (a full bucket ties: the most left first)", capped)
	}
	got := map[string]int{}
	for range 12 {
		got[reserveKey(t, b)]++
	}
	if got[exhausted] != 0 || got[capped] > 2 {
		t.Fatalf("keys booked: %v; want none on the exhausted key, at most 2 on the one capped at 2", got)
	}
	if st := b.Stats(); st.PausesExhausted != 1 || st.PullDowns != 1 {
		t.Fatalf("Stats: PausesExhausted %d, PullDowns %d; want 1, 1", st.PausesExhausted, st.PullDowns)
	}
}

// TestKeysMeters: each key has its own meters; a reservation's units not
// spent go back to its key at Done, and a cancelled one's at Cancel; with a
// concurrency cap per key too, in the same round trips.
func TestKeysMeters(t *testing.T) {
	for _, conc := range []int{0, 2} {
		t.Run(fmt.Sprintf("concurrency=%d", conc), func(t *testing.T) { testKeysMeters(t, conc) })
	}
}

func testKeysMeters(t *testing.T, conc int) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "meters-keys", budget.Limit{Rate: 1000, Burst: 1000}, &budget.Options{
		Keys:        keys,
		Meters:      map[string][]budget.Limit{"tokens": {{Rate: 100, Per: time.Minute, Burst: 100}}},
		Concurrency: conc,
	})
	ctx := context.Background()
	want := budget.Cost{Meters: map[string]int64{"tokens": 100}}
	reserve := func() (*budget.Reservation, error) {
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		return b.Reserve(ctx, budget.Foreground, want)
	}
	r1, err := reserve()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := reserve()
	if err != nil {
		t.Fatal(err)
	}
	if r1.Key() == r2.Key() {
		t.Fatalf("two reservations of a key's whole bucket both went on %s", r1.Key())
	}
	if _, err := reserve(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third reservation of 100 tokens: %v; want an error wrapping context.DeadlineExceeded", err)
	}
	r1.Spent(budget.Cost{Meters: map[string]int64{"tokens": 10}})
	if err := r1.Done(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	// key-b's 100 are back, and 90 of key-a's.
	for _, tc := range []struct {
		units int64
		key   string
	}{{100, r2.Key()}, {90, r1.Key()}} {
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": tc.units}})
		cancel()
		if err != nil {
			t.Fatalf("%d tokens after the give-backs: %v", tc.units, err)
		}
		if r.Key() != tc.key {
			t.Fatalf("%d tokens went on %s; want %s, the only key with as many", tc.units, r.Key(), tc.key)
		}
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if conc > 0 {
		emptySlots(t, rdb, b)
	}
}

// TestKeysBackground: background calls spread over the keys too, each key
// keeping its own pace, and foreground calls still go first; with a
// concurrency cap per key too (a call told to come back holds no slot).
func TestKeysBackground(t *testing.T) {
	for _, conc := range []int{0, 1} {
		t.Run(fmt.Sprintf("concurrency=%d", conc), func(t *testing.T) { testKeysBackground(t, conc) })
	}
}

func testKeysBackground(t *testing.T, conc int) {
	_, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "bg-keys", budget.Limit{Rate: 20}, &budget.Options{Keys: keys, Concurrency: conc})
	var rec recorder
	rec.watch(b)
	ctx := redistest.Context(t, 10*time.Second)
	got := map[string]int{}
	for range 8 {
		r, err := b.Reserve(ctx, budget.Background, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		got[r.Key()]++
		_ = r.Done(ctx)
	}
	if got["key-a"] != 4 || got["key-b"] != 4 {
		t.Fatalf("background calls per key: %v; want 4 each", got)
	}
	for _, k := range []int{1, 2} {
		var slots []int64
		for _, bk := range rec.inOrder() {
			if bk.Key == k {
				slots = append(slots, bk.Slot)
			}
		}
		for i := 1; i < len(slots); i++ {
			if d := slots[i] - slots[i-1]; d < 50_000 {
				t.Fatalf("key %d: slots %d µs apart; want at least 50ms (20/s)", k, d)
			}
		}
	}
	if conc > 0 {
		emptySlots(t, rdb, b)
	}
}

// TestKeysRedisDown: while Redis is unreachable, each key has a local
// limiter, a reservation still tells its key, and a 429 pauses its key
// only, locally.
func TestKeysRedisDown(t *testing.T) {
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, unreachable(t), "down-keys", budget.Limit{Rate: 1}, &budget.Options{Keys: keys})
	reserve := func(d time.Duration) (*budget.Reservation, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return b.Reserve(ctx, budget.Foreground, budget.Cost{})
	}
	r, err := reserve(10 * time.Second) // finds Redis unreachable
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Observe(context.Background(), rateLimited("60"), http.StatusTooManyRequests); err != nil {
		t.Fatalf("Observe(429) with Redis down: %v; want nil (kept locally)", err)
	}
	r2, err := reserve(200 * time.Millisecond)
	if err != nil {
		t.Fatalf("the other key, locally: %v", err)
	}
	if r2.Key() == r.Key() || r2.Key() == "" {
		t.Fatalf("keys: %q then %q; want the two keys", r.Key(), r2.Key())
	}
	if _, err := reserve(200 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third call: %v; want an error wrapping context.DeadlineExceeded (one key paused, the other's next slot 1s away)", err)
	}
	if err := b.Remove(context.Background(), r2.Key()); err != nil {
		t.Fatalf("Remove with Redis down: %v; want nil (kept locally)", err)
	}
	if n := b.Stats().Keys; n != 1 {
		t.Fatalf("Stats().Keys = %d; want 1", n)
	}
	if st := b.Stats(); st.LocalWaits < 2 || st.LocalPauses != 1 {
		t.Fatalf("Stats: LocalWaits %d, LocalPauses %d; want at least 2, 1", st.LocalWaits, st.LocalPauses)
	}
}

// TestKeysMissedRemoval: a server that missed the message of a removal
// hears of it at its next booking, by the index's generation.
func TestKeysMissedRemoval(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "missed", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	reserveKey(t, b)
	// Another server removed key-a, and its message was lost: Redis holds
	// the removal, and the index's new generation.
	id := budget.KeyID("key-a")
	index := budget.Key(b) + ":keys"
	m.HSet(budget.Key(b)+":removed", id, "1")
	if _, err := m.ZRem(index, id); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ZAdd(index, -float64(time.Now().UnixMicro()), "#"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if k := reserveKey(t, b); k != "key-b" {
			t.Fatalf("booked %q after key-a was removed; want key-b", k)
		}
	}
	if n := b.Stats().Keys; n != 1 {
		t.Fatalf("Stats().Keys = %d; want 1: the booking reported the removal", n)
	}
}

// TestKeysPauseUntil: a pause of the budget (PauseUntil) holds for every
// key, for a booking made before this server heard of it too.
func TestKeysPauseUntil(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "pause-all", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	other := newBudget(t, redistest.Client(t, m.Addr()), "pause-all", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	var rec recorder
	rec.watch(other)
	ctx := context.Background()
	reserveKey(t, other) // the other server is up, and knows the pool
	until := time.Now().Add(300 * time.Millisecond)
	if err := b.PauseUntil(ctx, until); err != nil {
		t.Fatal(err)
	}
	end := field(t, rdb, b, "pause")
	for range 2 {
		r, err := other.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Done(ctx)
	}
	for _, k := range rec.inOrder()[1:] {
		if k.Slot < end {
			t.Fatalf("a booking on key %d at %d, before the budget's pause ends at %d", k.Key, k.Slot, end)
		}
	}
}

// TestKeysIndexLost: when the pool's index is lost (it outlived its idle
// hour, or was evicted) while a key's hash lives on, the key joins the new
// index with its own summary: a key paused for two hours is not taken for
// a free one.
func TestKeysIndexLost(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "index-lost", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	ctx := context.Background()
	for _, k := range keys {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Key() == k {
			continue
		}
		_ = r.Done(ctx)
	}
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	paused := r.Key()
	if err := r.Observe(ctx, rateLimited("7200"), http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	m.Del(budget.Key(b) + ":keys")
	for range 3 {
		if k := reserveKey(t, b); k == paused {
			t.Fatalf("booked %s, paused for two hours, after the index was lost", k)
		}
	}
}

// TestKeysRemoveWhileDown: a key removed while Redis is unreachable is
// removed in this process at once, and for the fleet at this server's
// first booking once Redis is back.
func TestKeysRemoveWhileDown(t *testing.T) {
	m, rdb := redistest.Mini(t)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "remove-down", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	reserveKey(t, b)
	m.Close()
	if err := b.Remove(context.Background(), "key-a"); err != nil {
		t.Fatalf("Remove with Redis down: %v; want nil (kept in this process)", err)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	removed := budget.Key(b) + ":removed"
	redistest.WaitFor(t, "the removal written back", func() bool {
		reserveKey(t, b)
		return m.Exists(removed) && m.HGet(removed, budget.KeyID("key-a")) != ""
	})
	fresh := newBudget(t, redistest.Client(t, m.Addr()), "remove-down", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	for range 3 {
		if k := reserveKey(t, fresh); k != "key-b" {
			t.Fatalf("a server started later booked %q; want key-b only", k)
		}
	}
}

// manyKeys returns n distinct credentials.
func manyKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "token-" + strconv.Itoa(i)
	}
	return keys
}

// TestKeysAtMost: a pool of the most keys a budget takes books on a real
// redis-server (5,000 failed in Redis's Lua before the limit was set), and
// duplicates do not count towards the limit.
func TestKeysAtMost(t *testing.T) {
	s := redistest.Start(t, nil)
	keys := append(manyKeys(1000), manyKeys(1000)...)
	b := newBudget(t, s.Client(t, nil), "most", budget.Limit{Rate: 10}, &budget.Options{Keys: keys})
	ctx := redistest.Context(t, 20*time.Second)
	for range 3 {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.Stats().Keys; got != 1000 {
		t.Fatalf("Stats().Keys = %d; want 1000", got)
	}
}

// TestKeysRemoveForeignWhileDown: a server that removes another server's
// key (not in its own Options.Keys) while Redis is unreachable writes the
// removal back once Redis answers again, as it does for its own keys: the
// server that has the key stops booking it.
func TestKeysRemoveForeignWhileDown(t *testing.T) {
	m, rdb := redistest.Mini(t)
	x := newBudget(t, rdb, "remove-foreign", budget.Limit{Rate: 100}, &budget.Options{Keys: []string{"key-x"}})
	y := newBudget(t, redistest.Client(t, m.Addr()), "remove-foreign", budget.Limit{Rate: 100}, &budget.Options{Keys: []string{"key-y"}})
	reserveKey(t, x)
	reserveKey(t, y)
	m.Close()
	if err := x.Remove(context.Background(), "key-y"); err != nil {
		t.Fatalf("Remove of another server's key with Redis down: %v; want nil", err)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	removed := budget.Key(x) + ":removed"
	redistest.WaitFor(t, "the removal written back", func() bool {
		reserveKey(t, x)
		return m.Exists(removed) && m.HGet(removed, budget.KeyID("key-y")) != ""
	})
	redistest.WaitFor(t, "the server with the key stops booking it", func() bool {
		r, err := y.Reserve(context.Background(), budget.Foreground, budget.Cost{})
		if err == nil {
			_ = r.Done(context.Background())
			return false
		}
		if !errors.Is(err, budget.ErrNoKeys) {
			t.Fatalf("Reserve on the server whose only key was removed: %v; want ErrNoKeys", err)
		}
		return true
	})
}
