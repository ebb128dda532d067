package fill

import (
	"context"
	"runtime/debug"

	"github.com/locksmith-go/locksmith/observe"
)

// What a Cache tells its events handler and its Logger.

// event reports e to the events handler (Options.Events), if any. A handler that panics loses
// the event, and the panic is logged with its stack: events are reported
// on goroutines of the Cache too (flights, refreshes, the pub/sub reader),
// where a panic would end the process.
func (c *Cache) event(ctx context.Context, e observe.Event) {
	if c.opt.Events == nil {
		return
	}
	e.Source, e.Name = "fill", c.opt.Prefix
	defer func() {
		if r := recover(); r != nil {
			c.log("the events handler panicked; its event is lost", "kind", e.Kind.String(), "panic", r,
				"stack", string(debug.Stack()))
		}
	}()
	c.opt.Events.Handle(ctx, e)
}

// log tells the Logger, if any, something an operator must hear.
func (c *Cache) log(msg string, args ...any) {
	if c.opt.Logger != nil {
		c.opt.Logger.Warn("locksmith/fill: "+msg, append(args, "prefix", c.opt.Prefix)...)
	}
}
