package redistest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// HoldScript is a go-redis hook that holds back the first script call
// (EVALSHA) whose arguments name Name, once armed, until Release is
// closed: a call on its way, for a test of what its caller does meanwhile.
// Held is closed once it holds the call. With Ran set, the call runs first
// and its reply is held: Redis has done its work, the caller hears of it
// late (a slow reply, without a proxy's dial that a held handshake stalls).
type HoldScript struct {
	Name    string
	Ran     bool
	Release chan struct{}
	Held    chan struct{}
	armed   atomic.Bool
}

// NewHoldScript returns a HoldScript for name, armed.
func NewHoldScript(name string) *HoldScript {
	h := &HoldScript{Name: name, Release: make(chan struct{}), Held: make(chan struct{})}
	h.armed.Store(true)
	return h
}

// DialHook implements redis.Hook.
func (h *HoldScript) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessPipelineHook implements redis.Hook.
func (h *HoldScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// ProcessHook implements redis.Hook.
func (h *HoldScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "evalsha" || !strings.Contains(fmt.Sprint(cmd.Args()), h.Name) || !h.armed.CompareAndSwap(true, false) {
			return next(ctx, cmd)
		}
		var err error
		if h.Ran {
			err = next(ctx, cmd)
		}
		close(h.Held)
		<-h.Release
		if h.Ran {
			return err
		}
		return next(ctx, cmd)
	}
}
