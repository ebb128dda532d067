package notify

import (
	"context"
	"time"
)

// Step is an attempt's verdict for [Hub.Await].
type Step struct {
	// Done ends the wait.
	Done bool
	// Wait, without Done, is the longest to wait before the next attempt.
	Wait time.Duration
}

// Await calls attempt until it reports done or fails, and between attempts
// waits for a message on channel, for the duration attempt returned, or for
// ctx, whichever comes first. Before its second attempt it subscribes and
// waits for the subscription to be confirmed (at most that same duration),
// so an event published after the second attempt's check is never missed.
//
// A message is passed to message, if not nil, which may end the wait (done)
// or fail it; otherwise, or when message returns neither, attempt runs again.
// A message already received goes to message before the next attempt. The
// [Wake] payload is passed on too. Await returns ctx.Err() when ctx ends,
// and [ErrClosed] when the Hub is closed.
func (h *Hub) Await(ctx context.Context, channel string,
	attempt func() (Step, error),
	message func(payload string) (done bool, err error),
) error {
	return h.AwaitSub(ctx, channel, nil, attempt, message)
}

// AwaitSub is [Hub.Await] given sub, the caller's subscription to channel,
// which was ready (see [Sub.Ready]) before attempt's first check was sent
// to Redis: nothing published after that check can be missed, so the wait
// for a message begins after the first attempt. AwaitSub closes sub when
// it returns. A nil sub makes it Await.
func (h *Hub) AwaitSub(ctx context.Context, channel string, sub *Sub,
	attempt func() (Step, error),
	message func(payload string) (done bool, err error),
) error {
	var timer *time.Timer
	defer func() {
		if sub != nil {
			sub.Close()
		}
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		step, err := attempt()
		if err != nil || step.Done {
			return err
		}
		// Since Go 1.23 Reset leaves no stale tick in timer.C, whether the
		// timer fired or not.
		wait := max(step.Wait, time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		if sub == nil {
			sub = h.Subscribe(channel)
			select {
			case <-sub.Ready():
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			case <-h.done:
				return ErrClosed
			}
		} else {
			select {
			case p := <-sub.C():
				if done, err := deliver(message, p); err != nil || done {
					return err
				}
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			case <-h.done:
				return ErrClosed
			}
		}
		// A message may have arrived with the confirmation or the timer:
		// it says more than the next attempt can (a failure leaves the
		// lock free, looking like nothing happened), so it goes first.
		select {
		case p := <-sub.C():
			if done, err := deliver(message, p); err != nil || done {
				return err
			}
		default:
		}
	}
}

func deliver(message func(string) (bool, error), p string) (bool, error) {
	if message == nil {
		return false, nil
	}
	return message(p)
}
