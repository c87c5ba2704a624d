package consulwatch

import "sync/atomic"

// Latest is a latest-value channel: it holds at most one value, the newest
// not yet received; a reader that falls behind receives only the newest.
// Publish must be called from one goroutine at a time (the watcher that
// owns it); readers may be many.
type Latest[T any] struct {
	ch   chan T
	last atomic.Pointer[T]
}

// NewLatest returns an empty Latest.
func NewLatest[T any]() *Latest[T] { return &Latest[T]{ch: make(chan T, 1)} }

// Publish replaces any unreceived value with v. It never blocks.
func (l *Latest[T]) Publish(v T) {
	l.last.Store(&v)
	select {
	case <-l.ch:
	default:
	}
	l.ch <- v // never blocks: the only sender has just drained the buffer
}

// C returns the channel values are received on. It is never closed.
func (l *Latest[T]) C() <-chan T { return l.ch }

// Load returns the last published value and whether there is one.
func (l *Latest[T]) Load() (T, bool) {
	p := l.last.Load()
	if p == nil {
		var zero T
		return zero, false
	}
	return *p, true
}
