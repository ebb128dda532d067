package fill

import "testing"

// FuzzParseClaim feeds the claim script's reply parser every shape a Redis
// reply can take: it must return a reply or an error, never panic, and
// accept only the states the script returns.
func FuzzParseClaim(f *testing.F) {
	f.Add(uint8(0), int64(2), int64(1500), "v", int64(1))
	f.Add(uint8(1), int64(1), int64(1700000000000), "", int64(0))
	f.Add(uint8(8), int64(1), int64(1700000000000), "", int64(1))
	f.Add(uint8(2), int64(3), int64(10), "v", int64(1))
	f.Add(uint8(3), int64(0), int64(5), "holder", int64(0))
	f.Add(uint8(4), int64(4), int64(0), "emsg", int64(0))
	f.Fuzz(func(t *testing.T, shape uint8, a, b int64, s string, c int64) {
		var reply any
		switch shape % 9 {
		case 0:
			reply = []any{a, s, b}
		case 1:
			reply = []any{a, b}
		case 2:
			reply = []any{a, s, b, c, b}
		case 3:
			reply = []any{a, b, s}
		case 4:
			reply = []any{a, s}
		case 5:
			reply = []any{a, s, b, c}
		case 6:
			reply = []any{a, s, b, c, s}
		case 7:
			reply = s
		case 8:
			reply = []any{a, b, c}
		}
		r, err := parseClaim(reply)
		if err != nil {
			return
		}
		if r.state < held || r.state > failed {
			t.Fatalf("accepted state %d", r.state)
		}
		if r.state == stale && (r.sub < staleHeld || r.sub > staleBackoff) {
			t.Fatalf("accepted stale sub-state %d", r.sub)
		}
		if _, bare := reply.(string); r.pttl < 0 && !bare {
			t.Fatalf("negative pttl %v", r.pttl)
		}
		_, _ = parseSettled(reply)
	})
}
