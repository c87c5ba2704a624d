// Package consulwatch runs one Consul blocking query over and over, the way
// consul-template's watch/view.go does: an unchanged index means no change,
// an index that went backwards starts over, a minimum delay with jitter
// separates queries, and failures are retried with jittered exponential
// backoff.
//
// It owns the loop only; what is queried and what a result means belong to
// the caller. It must not import other Trellis packages.
package consulwatch

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
)

// queryMargin is added to a blocking query's longest wait (WaitTime plus
// Consul's own jitter of WaitTime/16) to get its deadline, so that a Consul
// that stops answering is noticed.
const queryMargin = 5 * time.Second

// firstBackoff is the wait after the first failed query.
const firstBackoff = 250 * time.Millisecond

// Config tunes the loop. Zero durations are not accepted: callers document
// and apply their own defaults.
type Config struct {
	// WaitTime is the longest a blocking query waits for a change.
	WaitTime time.Duration
	// MinDelay, plus up to as much jitter, separates two queries.
	MinDelay time.Duration
	// MaxBackoff caps the wait between failed queries.
	MaxBackoff time.Duration
	// Logger receives a line when the index goes backwards.
	Logger *slog.Logger
}

// Handlers receive what the loop sees.
type Handlers[T any] struct {
	// Changed gets every result whose index moved forward, with that index.
	Changed func(result T, index uint64)
	// Failed gets every failed query and the wait before the next try.
	Failed func(err error, retryIn time.Duration)
	// Succeeded is called after every successful query.
	Succeeded func()
}

// Run queries until ctx is done, then returns. query performs one blocking
// query with the options it is given (their context carries the deadline).
func Run[T any](ctx context.Context, cfg Config, query func(*api.QueryOptions) (T, *api.QueryMeta, error), h Handlers[T]) {
	var (
		lastIndex uint64
		backoff   time.Duration
	)
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, cfg.WaitTime+cfg.WaitTime/16+queryMargin)
		result, meta, err := query((&api.QueryOptions{WaitIndex: lastIndex, WaitTime: cfg.WaitTime}).WithContext(qctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = nextBackoff(backoff, cfg.MaxBackoff)
			h.Failed(err, backoff)
			if !sleep(ctx, backoff) {
				return
			}
			continue
		}
		backoff = 0
		h.Succeeded()

		index := meta.LastIndex
		if index == 0 {
			// Consul should never answer 0; a 0 would make every
			// following query return at once.
			index = 1
		}
		switch {
		case index == lastIndex:
			// The wait time elapsed without a change.
		case index < lastIndex:
			// The index went backwards (e.g. a snapshot restore): start
			// over with a non-blocking read.
			cfg.Logger.Info("consul index went backwards; reading everything again", "was", lastIndex, "now", index)
			lastIndex = 0
		default:
			lastIndex = index
			h.Changed(result, index)
		}
		if !sleep(ctx, cfg.MinDelay+rand.N(cfg.MinDelay+1)) {
			return
		}
	}
}

// nextBackoff doubles prev up to max, with up to 25% jitter so that
// replicas do not retry in step.
func nextBackoff(prev, max time.Duration) time.Duration {
	next := 2 * prev
	if prev == 0 {
		next = firstBackoff
	}
	if next > max {
		next = max
	}
	return next - rand.N(next/4+1)
}

// sleep waits for d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
