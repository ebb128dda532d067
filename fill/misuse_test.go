package fill_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestNilClient: a Cache made on a nil client (a nil interface, or a nil
// *redis.Client in one) returns an error wrapping ErrInvalid from every
// call instead of panicking inside go-redis.
func TestNilClient(t *testing.T) {
	ctx := redistest.Context(t, 20*time.Second)
	var nilClient *redis.Client
	for name, rdb := range map[string]redis.UniversalClient{"nil interface": nil, "nil *redis.Client": nilClient} {
		t.Run(name, func(t *testing.T) {
			c := fill.New(rdb, nil)
			load := func(context.Context) (int, error) { t.Error("loader ran"); return 1, nil }
			if _, err := fill.Get(ctx, c, "k", load); !errors.Is(err, fill.ErrInvalid) {
				t.Errorf("Get: got %v; want ErrInvalid", err)
			}
			many := func(context.Context, []string) (map[string]int, error) { t.Error("loader ran"); return nil, nil }
			if _, err := fill.GetMany(ctx, c, []string{"k"}, many); !errors.Is(err, fill.ErrInvalid) {
				t.Errorf("GetMany: got %v; want ErrInvalid", err)
			}
			if _, err := fill.NewBatcher(c, many, nil).Get(ctx, "k"); !errors.Is(err, fill.ErrInvalid) {
				t.Errorf("Batcher.Get: got %v; want ErrInvalid", err)
			}
			if err := c.Delete(ctx, "k"); !errors.Is(err, fill.ErrInvalid) {
				t.Errorf("Delete: got %v; want ErrInvalid", err)
			}
			_ = c.Stats()
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

// TestNilCache: calls on a nil *Cache return an error wrapping ErrInvalid.
func TestNilCache(t *testing.T) {
	ctx := redistest.Context(t, 20*time.Second)
	var c *fill.Cache
	load := func(context.Context) (int, error) { t.Error("loader ran"); return 1, nil }
	if _, err := fill.Get(ctx, c, "k", load); !errors.Is(err, fill.ErrInvalid) {
		t.Errorf("Get: got %v; want ErrInvalid", err)
	}
	many := func(context.Context, []string) (map[string]int, error) { t.Error("loader ran"); return nil, nil }
	if _, err := fill.GetMany(ctx, c, []string{"k"}, many); !errors.Is(err, fill.ErrInvalid) {
		t.Errorf("GetMany: got %v; want ErrInvalid", err)
	}
	if _, err := fill.NewBatcher(c, many, nil).Get(ctx, "k"); !errors.Is(err, fill.ErrInvalid) {
		t.Errorf("Batcher.Get: got %v; want ErrInvalid", err)
	}
	if err := c.Delete(ctx, "k"); !errors.Is(err, fill.ErrInvalid) {
		t.Errorf("Delete: got %v; want ErrInvalid", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestBatchOptionsIsNotAnOption: BatchOptions configures batches only, so
// it is no Option: passed to Get it would be ignored. GetMany takes it
// through WithBatchOptions.
func TestBatchOptionsIsNotAnOption(t *testing.T) {
	option := reflect.TypeFor[fill.Option]()
	for _, typ := range []reflect.Type{reflect.TypeFor[fill.BatchOptions](), reflect.TypeFor[*fill.BatchOptions]()} {
		if typ.Implements(option) {
			t.Errorf("%v implements fill.Option; want it not to", typ)
		}
	}
	if !reflect.TypeOf(fill.WithBatchOptions(nil)).Implements(option) {
		t.Error("WithBatchOptions does not give a fill.Option")
	}
}
