package notify

import (
	"sync"
	"time"
)

// refusal is the back-off after Redis refused a subscription: the writer
// holds its commands until it ends, waiters poll meanwhile, and the error
// is reported once.
type refusal struct {
	mu      sync.Mutex    // guards the fields below
	refused bool          // a subscription was refused and not yet retried
	retryAt time.Time     // when refused subscriptions are tried again
	backoff time.Duration // the back-off in force; 0 once subscriptions work
	told    bool          // the refusal was reported
}

// refusalMin and refusalMax bound the back-off after Redis refused a
// subscription.
const (
	refusalMin = time.Second
	refusalMax = 30 * time.Second
)

// refuse records that Redis refused a subscription: the writer holds its
// commands for a back-off, waiters poll meanwhile, and the error is counted
// and reported once.
func (h *Hub) refuse(err error) {
	h.errCount.Add(1)
	if h.isClosed() {
		return
	}
	r := &h.refusal
	r.mu.Lock()
	r.backoff = min(max(2*r.backoff, refusalMin), refusalMax)
	r.refused, r.retryAt = true, time.Now().Add(r.backoff)
	tell := !r.told
	r.told = true
	r.mu.Unlock()
	h.kickWriter()
	if tell && h.onError != nil {
		h.onError(err)
	}
}

// holding reports whether subscriptions are held back, and until when.
func (r *refusal) holding() (bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused, r.retryAt
}

// lift ends the hold: the back-off is over.
func (r *refusal) lift() {
	r.mu.Lock()
	r.refused = false
	r.mu.Unlock()
}

// working records a subscription confirmed: the next refusal is reported.
func (r *refusal) working() {
	r.mu.Lock()
	if r.told && r.backoff > 0 {
		r.told, r.backoff = false, 0
	}
	r.mu.Unlock()
}
