package fill

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/internal/flight"
)

// Batcher gathers single-key Gets that arrive within BatchOptions.Window of
// one another (or until BatchOptions.MaxSize keys) into one batch, read or
// claimed together as [GetMany] does and loaded with one loader call:
// dataloader's pattern, with fill's fleet-wide guarantee that each key is
// loaded once. Each caller waits with its own ctx; a caller that gives up
// never cancels the batch, which runs detached from its callers, like a
// flight. A key another server is loading never enters this server's
// batch: it is awaited by push instead. With a budget (one slot per call),
// the keys that arrive while a batch waits for its slot join it, up to
// MaxSize: a budget-bound Batcher sends full batches rather than one small
// batch per Window. With BatchOptions.FleetWide, the keys it claims join
// the fleet's batches instead of its own: one server loads the keys every
// server missed (see BatchOptions.FleetWide). It is safe for concurrent
// use.
type Batcher[T any] struct {
	b   *batch[T]
	err error // the options', returned by every Get

	mu      sync.Mutex // guards pending, timer and holders
	pending []batchItem
	timer   *time.Timer
	holders int // batches waiting for their budget slot: new keys wait to join them
}

// NewBatcher returns a Batcher on c that loads with load. A nil opt gives
// the defaults. With BatchOptions.FleetWide but no Name, every Get returns
// an error wrapping [ErrInvalid].
func NewBatcher[T any](c *Cache, load func(ctx context.Context, keys []string) (map[string]T, error), opt *BatchOptions) *Batcher[T] {
	bt := &Batcher[T]{b: newBatch[T](c, load, opt.withDefaults())}
	switch o := bt.b.opt; {
	case o.FleetWide && o.Name == "":
		bt.err = fmt.Errorf("%w: a FleetWide Batcher needs a Name", ErrInvalid)
	case o.FleetWide && c != nil:
		bt.b.fleet = newGatherer(bt.b)
	}
	return bt
}

// Get returns the value cached for key, or loads it in the next batch. An
// absent key (cached as absent, or missing from the loader's map) gives an
// error wrapping [ErrNotFound].
func (bt *Batcher[T]) Get(ctx context.Context, key string) (T, error) {
	c := bt.b.c
	err := begin(ctx, c, bt.b.load == nil, "Batcher")
	if err == nil {
		err = bt.err
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return call[T](ctx, c, key, func(f *flight.Call) { bt.add(ctx, batchItem{key: key, f: f, at: time.Now()}) })
}

func (bt *Batcher[T]) add(ctx context.Context, it batchItem) {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.pending = append(bt.pending, it)
	if bt.holders > 0 {
		return // joins a batch waiting for its budget slot
	}
	switch {
	case len(bt.pending) >= bt.b.opt.MaxSize:
		if bt.timer != nil {
			bt.timer.Stop()
			bt.timer = nil
		}
		items := bt.pending
		bt.pending = nil
		go bt.b.run(ctx, items, bt.b.callOptions(), &batcherJoin[T]{bt: bt, ctx: ctx})
	case len(bt.pending) == 1:
		bt.timer = time.AfterFunc(bt.b.window(), func() { bt.flush(ctx) })
	}
}

func (bt *Batcher[T]) flush(ctx context.Context) {
	bt.mu.Lock()
	if bt.holders > 0 {
		bt.mu.Unlock()
		return // the pending keys join the batch waiting for its slot
	}
	items := bt.pending
	bt.pending, bt.timer = nil, nil
	bt.mu.Unlock()
	if len(items) > 0 {
		bt.b.run(ctx, items, bt.b.callOptions(), &batcherJoin[T]{bt: bt, ctx: ctx})
	}
}

// joiner lets a batch that waits for its budget slot take the keys that
// arrived meanwhile: a budget-bound Batcher then sends full batches, not one
// small batch per Window, each waiting for a slot of its own.
type joiner interface {
	// hold is called when the batch starts waiting: keys arriving from now
	// on wait for it instead of starting a window of their own.
	hold()
	// take is called when the slot came (or the wait ended): up to n of the
	// keys that arrived join the batch; the rest start a new window.
	take(n int) []batchItem
}

type batcherJoin[T any] struct {
	bt  *Batcher[T]
	ctx context.Context
}

func (j *batcherJoin[T]) hold() {
	bt := j.bt
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.holders++
	if bt.timer != nil {
		bt.timer.Stop()
		bt.timer = nil
	}
}

func (j *batcherJoin[T]) take(n int) []batchItem {
	bt := j.bt
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.holders--
	n = min(n, len(bt.pending))
	items := bt.pending[:n:n]
	bt.pending = bt.pending[n:]
	if bt.holders == 0 && len(bt.pending) > 0 && bt.timer == nil {
		ctx := j.ctx
		bt.timer = time.AfterFunc(bt.b.window(), func() { bt.flush(ctx) })
	}
	return items
}
