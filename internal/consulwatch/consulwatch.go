// Package consulwatch owns Trellis's conversation with Consul's HTTP API: a
// bounded, instrumented client (NewClient), the one blocking-query loop that
// every watch runs (Run), the classification of Consul's answers into what
// they mean (Classify), a Tracker that follows Consul's reachability for one
// component's watches, probes it, and wakes every watch when it comes back,
// and Latest, the latest-value channel the watchers publish on.
//
// The loop follows consul-template's watch/view.go rules, with the catalog's
// safeguards for everyone: an unchanged index publishes nothing; an index
// that went backwards (a Consul restart or snapshot restore) restarts the
// query from 0; an index of 0 is read as 1 so that the next query still
// blocks; the transient "index 1, no leader, empty" answers of a Consul still
// restoring its state after a restart are errors, never results; equal
// content is not handed on again; queries are spaced by a minimum interval
// plus jitter; failures back off exponentially with jitter; and every query is
// bounded by a deadline and by the Tracker's wake context, so that a query
// hung on a connection to a paused Consul is abandoned as soon as the probe
// sees Consul again.
//
// Errors are reported as what they are: a 429 is "rate limited", a 403 is an
// ACL problem, a refused connection is "unreachable"; each kind is counted
// (trellis_consul_errors_total) and none is mistaken for another.
//
// It must not import other Trellis packages.
package consulwatch

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults for the Query fields.
const (
	DefaultWaitTime    = time.Minute
	DefaultMinInterval = 50 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
)

const (
	// queryMargin is added to a blocking query's longest wait (WaitTime plus
	// Consul's own jitter of WaitTime/16) to get its deadline, so that a
	// Consul that stops answering is noticed.
	queryMargin = 5 * time.Second
	// firstBackoff is the wait after the first failed query.
	firstBackoff = 250 * time.Millisecond
	// recoveryWait is the wait time of the first query after a failure, so
	// that a recovery is known at once rather than when the next change
	// arrives.
	recoveryWait = 10 * time.Millisecond
)

// Query is one blocking-query watch producing values of type T.
type Query[T any] struct {
	// Name names the watch in logs and errors ("service list").
	Name string
	// Fetch performs one query with the options it is given: their
	// context carries the deadline, WaitIndex and WaitTime are set.
	Fetch func(*api.QueryOptions) (T, *api.QueryMeta, error)
	// Equal reports whether two results hold the same data; equal results
	// are not handed on. Default: every result whose index moved is.
	Equal func(a, b T) bool
	// Index is the index the first query blocks at: a read at Index was
	// already handed on elsewhere, so the first result handed on is a
	// change after it. Default: 0, the first answer is handed on.
	Index uint64
	// Changed receives every changed result with its metadata. Returning
	// false stops the watch.
	Changed func(result T, meta *api.QueryMeta) bool
	// Failed, when set, is called after each failed query with the
	// classified error and the wait before the next try.
	Failed func(err *Error, retryIn time.Duration)
	// Succeeded, when set, is called after each successful query.
	Succeeded func(meta *api.QueryMeta)
	// WaitTime is how long one blocking query waits for a change.
	// Default: DefaultWaitTime (1m).
	WaitTime time.Duration
	// MinInterval, plus a random jitter of up to as much, separates the
	// starts of two queries. Default: DefaultMinInterval (50ms).
	MinInterval time.Duration
	// MaxBackoff caps the wait between failed queries. Default:
	// DefaultMaxBackoff (5s).
	MaxBackoff time.Duration
	// FirstBackoff is the wait after the first failed query; later ones
	// double it up to MaxBackoff. Default: 250ms (or MaxBackoff if
	// smaller).
	FirstBackoff time.Duration
	// Secondary watches are one of many alike (one per service, say)
	// beside the component's primary watches: their failures are counted
	// and reported (Failed) but leave the component's reachability to the
	// primary watches and the probe, which see the same Consul. They
	// still resume at once when the Tracker wakes every watch.
	Secondary bool
	// SkipFiltered keeps results that Consul filtered by ACLs
	// (QueryMeta.ResultsFilteredByACLs) from Changed, so that what is in
	// effect stays the last complete read; once the token sees everything
	// again, the result is handed on even if the index did not move.
	// Succeeded still sees every result. Default: false.
	SkipFiltered bool
}

// errNotReady reports an answer from a Consul that has not restored its
// state yet.
var errNotReady = errors.New("Consul has no leader and an empty state (still starting)")

// Run loops on q until ctx is done or q.Changed returns false. Failures are
// recorded in t (nil: not recorded, no wake-ups), which keeps the
// component's reachability.
func Run[T any](ctx context.Context, t *Tracker, q Query[T]) {
	if q.WaitTime <= 0 {
		q.WaitTime = DefaultWaitTime
	}
	if q.MinInterval <= 0 {
		q.MinInterval = DefaultMinInterval
	}
	if q.MaxBackoff <= 0 {
		q.MaxBackoff = DefaultMaxBackoff
	}
	key := &watchKey{name: q.Name}
	defer t.forget(key)

	var (
		index    = q.Index
		last     T
		received bool
		backoff  time.Duration
		failed   bool
		// skipped: the last result was filtered by ACLs and not handed on.
		skipped bool
	)
	timeout := q.WaitTime + q.WaitTime/16 + queryMargin
	for ctx.Err() == nil {
		wake := t.wakeContext()
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, timeout)
		stopWake := context.AfterFunc(wake, cancel)
		wait := q.WaitTime
		if failed {
			wait = recoveryWait
		}
		data, meta, err := q.Fetch((&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(qctx))
		stopWake()
		cancel()
		switch {
		case err != nil:
		case meta == nil:
			err = errors.New("no query metadata in the response")
		case index <= 1 && meta.LastIndex <= 1 && !meta.KnownLeader:
			// A server still restoring its state after a restart answers
			// from an empty store at index 1, without a leader: no catalog.
			err = errNotReady
		}
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return
			case wake.Err() != nil:
				// Consul is back after an outage: retry now.
				backoff = 0
				continue
			}
			backoff = nextBackoff(backoff, q.FirstBackoff, q.MaxBackoff)
			failed = true
			var werr *Error
			if q.Secondary {
				werr = t.Failure(q.Name, err)
			} else {
				werr = newError(q.Name, err)
				t.failure(key, werr)
			}
			if q.Failed != nil {
				q.Failed(werr, backoff)
			}
			if !sleep(ctx, wake, backoff) {
				return
			}
			continue
		}
		backoff, failed = 0, false
		t.success(key)
		if q.Succeeded != nil {
			q.Succeeded(meta)
		}

		newIndex := meta.LastIndex
		if newIndex == 0 {
			newIndex = 1
		}
		filtered := q.SkipFiltered && meta.ResultsFilteredByACLs
		switch {
		case newIndex == index && skipped && !filtered:
			// The same index, now read whole: hand it on.
			skipped = false
			last, received = data, true
			if !q.Changed(data, meta) {
				return
			}
		case newIndex == index:
			// The wait time elapsed without a change.
		case newIndex < index:
			t.log().Debug("Consul index went backwards; reading again from the start", "watch", q.Name, "from", index, "to", newIndex)
			index = 0
		case filtered:
			index, skipped = newIndex, true
		default:
			index, skipped = newIndex, false
			if !received || q.Equal == nil || !q.Equal(last, data) {
				last, received = data, true
				if !q.Changed(data, meta) {
					return
				}
			}
		}
		if d := time.Until(start.Add(jittered(q.MinInterval))); d > 0 {
			if !sleep(ctx, nil, d) {
				return
			}
		}
	}
}

// jittered returns d plus a random jitter in [0, d).
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + rand.N(d)
}

// nextBackoff doubles prev up to max, starting at first (firstBackoff
// when 0), with up to 25% jitter so that replicas do not retry in step.
func nextBackoff(prev, first, max time.Duration) time.Duration {
	if first <= 0 {
		first = firstBackoff
	}
	next := 2 * prev
	if prev == 0 {
		next = min(first, max)
	}
	if next > max {
		next = max
	}
	return next - rand.N(next/4+1)
}

// sleep waits for d, returning early with true when wake is done and with
// false when ctx is done. A nil wake never fires.
func sleep(ctx context.Context, wake context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var woken <-chan struct{}
	if wake != nil {
		woken = wake.Done()
	}
	select {
	case <-ctx.Done():
		return false
	case <-woken:
		return true
	case <-t.C:
		return true
	}
}
