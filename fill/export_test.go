package fill

// BatcherState returns how many keys wait in bt to be sent, and how many of
// its batches wait for their budget slot (keys arriving meanwhile join one).
func BatcherState[T any](bt *Batcher[T]) (pending, holders int) {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return len(bt.pending), bt.holders
}
