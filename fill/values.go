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
		l.valErr = notFound(keyOf(c.opt.Prefix, ks))
		return
	}
	v, err := o.decode(payload)
	if err == nil {
		l.val = v
		return
	}
	if mine := typeTag(o.typ); e.Type != "" && e.Type != mine {
		if e.Replaced == mine {
			c.stats.typeConflicts.Add(1)
			l.valErr = &TypeConflictError{Key: keyOf(c.opt.Prefix, ks), Stored: e.Type, Read: mine}
			return
		}
		l.replaced = e.Type
	}
	c.stats.corrupt.Add(1)
	l.valErr = fmt.Errorf("%w: %w", envelope.ErrCorrupt, err)
}

// keyOf recovers the caller's key from its keyset, for error messages.
func keyOf(prefix string, ks keyset) string {
	k := ks.lock[len(prefix)+1 : len(ks.lock)-1]
	if len(k) > 0 && k[0] == 0xff {
		k = k[1:]
	}
	return k
}

// typeTag names a Go type for the entries it writes.
func typeTag(t reflect.Type) string {
	if t.Name() != "" && t.PkgPath() != "" {
		return t.PkgPath() + "." + t.Name()
	}
	return t.String()
}

// s2b returns the bytes of s without copying; they must not be written.
func s2b(s string) []byte { return []byte(s) }
