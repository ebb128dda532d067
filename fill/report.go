package fill

import (
	"context"

	"github.com/locksmith-go/locksmith/observe"
)

// What a Cache tells its Observer and its Logger.

// event reports e to the Observer, if any.
func (c *Cache) event(ctx context.Context, e observe.Event) {
	if c.opt.Observer == nil {
		return
	}
	e.Source, e.Name = "fill", c.opt.Prefix
	c.opt.Observer.Observe(ctx, e)
}

// log tells the Logger, if any, something an operator must hear.
func (c *Cache) log(msg string, args ...any) {
	if c.opt.Logger != nil {
		c.opt.Logger.Warn("locksmith/fill: "+msg, append(args, "prefix", c.opt.Prefix)...)
	}
}
