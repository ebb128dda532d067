package fill

import (
	"fmt"
	"reflect"

	"github.com/locksmith-go/locksmith/internal/envelope"
)

// How stored entries become values: decoding and type tags.

// decode turns a stored entry into l's value. Foreign or corrupt bytes, or
// bytes the codec cannot read into the caller's type, give an error wrapping
// envelope.ErrCorrupt, counted; an entry of another live type gives a
// *TypeConflictError.
func (c *Cache) decode(ks keyset, s string, o ops, l *look) {
	e, err := envelope.Decode([]byte(s))
	if err != nil {
		c.stats.corrupt.Add(1)
		l.valErr = err
		return
	}
	payload := e.Payload
	e.Payload = nil
	l.entry = e
	if e.Absent {
		l.valErr = notFound(ks.name)
		return
	}
	var v any
	err = c.safely(func() error {
		var err error
		v, err = o.decode(payload)
		return err
	})
	if err == nil {
		l.val = v
		return
	}
	if mine := typeTag(o.typ); e.Type != "" && e.Type != mine {
		if e.Replaced == mine {
			c.stats.typeConflicts.Add(1)
			l.valErr = &TypeConflictError{Key: ks.name, Stored: e.Type, Read: mine}
			return
		}
		l.replaced = e.Type
	}
	c.stats.corrupt.Add(1)
	l.valErr = fmt.Errorf("%w: %w", envelope.ErrCorrupt, err)
}

// typeTag names a Go type for the entries it writes.
func typeTag(t reflect.Type) string {
	if t.Name() != "" && t.PkgPath() != "" {
		return t.PkgPath() + "." + t.Name()
	}
	return t.String()
}
