package fill

import (
	"fmt"
	"reflect"

	"github.com/locksmith-go/locksmith/internal/envelope"
)

// How stored entries become values: decoding and type tags.

// decode turns a stored entry into l's value. Foreign or corrupt bytes, or
// bytes the codec cannot read into the caller's type, give an error wrapping
// envelope.ErrCorrupt, counted; so does an entry tagged with another type,
// even one the codec would decode (leniently, into a zero value, say), and
// l.replaced then names that type: the caller reloads the key once. An
// entry of another type that replaced one of the caller's type, while
// servers reading it as that other type are live, gives a
// *TypeConflictError. An entry of the caller's type written with fields
// added or missing decodes as the codec decodes it.
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
	mine := typeTag(o.typ)
	if e.Type != "" && mine != "" && e.Type != mine {
		if e.Replaced == mine {
			c.stats.typeConflicts.Add(1)
			l.valErr = &TypeConflictError{Key: ks.name, Stored: e.Type, Read: mine}
			return
		}
		l.replaced = e.Type
		c.stats.corrupt.Add(1)
		l.valErr = fmt.Errorf("%w: an entry of type %s read as %s", envelope.ErrCorrupt, e.Type, mine)
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
	c.stats.corrupt.Add(1)
	l.valErr = fmt.Errorf("%w: %w", envelope.ErrCorrupt, err)
}

// typeTag names a Go type for the entries it writes: its package path and
// name, so that a type keeps its tag when fields are added to it. An
// interface type gives "": a value read or written as an interface can be
// of any type, and is not checked against tags.
func typeTag(t reflect.Type) string {
	if t.Kind() == reflect.Interface {
		return ""
	}
	if t.Name() != "" && t.PkgPath() != "" {
		return t.PkgPath() + "." + t.Name()
	}
	return t.String()
}
