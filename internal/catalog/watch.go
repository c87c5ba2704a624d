package catalog

import (
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/model"
)

// query is one blocking-query watch producing values of type T.
type query[T any] struct {
	w *Watcher
	// what names the watch in logs and errors.
	what string
	// fetch runs one query with q's index, wait time and context.
	fetch func(q *api.QueryOptions) (T, *api.QueryMeta, error)
	// equal reports whether two results hold the same data.
	equal func(a, b T) bool
	// deliver hands a changed result on; false stops the watch.
	deliver func(T) bool
}

// run loops on the blocking query until ctx is done or deliver refuses a
// result, following consul-template's watch/view.go rules.
func (q *query[T]) run(ctx context.Context) {
	w := q.w
	key := &watchKey{what: q.what}
	defer w.forget(key)

	var (
		index    uint64
		last     T
		received bool
		// failures counts consecutive failures, for the backoff.
		failures int
		// failed is true while the last completed query failed.
		failed bool
	)
	for ctx.Err() == nil {
		wake := w.wakeContext()
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, w.queryTimeout)
		stopWake := context.AfterFunc(wake, cancel)
		wait := w.cfg.WaitTime
		if failed {
			// Return at once when Consul answers, so that the recovery is
			// known now rather than when a change or the wait time ends
			// the query.
			wait = recoveryWait
		}
		opts := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(qctx)
		data, meta, err := q.fetch(opts)
		stopWake()
		cancel()

		switch {
		case err != nil:
		case meta == nil:
			err = errors.New("no query metadata in the response")
		case index <= 1 && meta.LastIndex <= 1 && !meta.KnownLeader:
			// A server still restoring its state after a restart answers
			// from an empty store at index 1, without a leader. With a
			// higher index this is an index going backwards (below); with
			// ours at 0 or 1 it would be published: it is no catalog.
			err = errNotReady
		}
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return
			case wake.Err() != nil:
				// Consul is back after an outage: retry now.
				failures = 0
				continue
			}
			failures++
			failed = true
			w.failure(key, q.what, err)
			if !w.sleep(ctx, wake, backoff(failures, w.cfg.MaxBackoff)) {
				return
			}
			continue
		}
		failures, failed = 0, false
		w.success(key)

		newIndex := meta.LastIndex
		if newIndex == 0 {
			// Consul must never return 0; treat it as 1 so that the next
			// query still blocks.
			newIndex = 1
		}
		switch {
		case newIndex == index:
			// Wait time elapsed without a change.
		case newIndex < index:
			// The index went backwards (a Consul restart or snapshot
			// restore): start over without blocking.
			w.logger.Debug("Consul index went backwards; resetting", "watch", q.what, "from", index, "to", newIndex)
			index = 0
		default:
			index = newIndex
			if !received || !q.equal(last, data) {
				last, received = data, true
				if !q.deliver(data) {
					return
				}
			}
		}

		if wait := time.Until(start.Add(jittered(w.cfg.MinInterval))); wait > 0 {
			if !w.sleep(ctx, nil, wait) {
				return
			}
		}
	}
}

// errNotReady reports an answer from a Consul that has not restored its
// state yet.
var errNotReady = errors.New("Consul has no leader and an empty state (still starting)")

// jittered returns d plus a random jitter in [0, d).
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + rand.N(d)
}

// backoff returns the delay before retry number failures (1-based):
// baseBackoff doubled per failure, capped at maxDelay, with the upper half
// jittered.
func backoff(failures int, maxDelay time.Duration) time.Duration {
	d := min(baseBackoff, maxDelay)
	for i := 1; i < failures && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleep waits for d, returning early with true when wake is done and with
// false when ctx is done. A nil wake never fires.
func (w *Watcher) sleep(ctx context.Context, wake context.Context, d time.Duration) bool {
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

// watchServiceList watches the list of service names and sends it to the
// coordinator.
func (w *Watcher) watchServiceList(ctx context.Context, events chan<- event) {
	q := &query[[]string]{
		w:    w,
		what: "service list",
		fetch: func(opts *api.QueryOptions) ([]string, *api.QueryMeta, error) {
			services, meta, err := w.cfg.Client.Catalog().Services(opts)
			if err != nil {
				return nil, nil, err
			}
			names := make([]string, 0, len(services))
			for name := range services {
				names = append(names, name)
			}
			sort.Strings(names)
			return names, meta, nil
		},
		equal: slices.Equal[[]string],
		deliver: func(names []string) bool {
			select {
			case events <- event{list: true, names: names}:
				return true
			case <-ctx.Done():
				return false
			}
		},
	}
	q.run(ctx)
}

// watchService watches the health of every instance of one service and
// sends the resulting model.Service to the coordinator.
func (w *Watcher) watchService(ctx context.Context, sw *serviceWatch, events chan<- event) {
	q := &query[*model.Service]{
		w:    w,
		what: "service " + sw.name,
		fetch: func(opts *api.QueryOptions) (*model.Service, *api.QueryMeta, error) {
			entries, meta, err := w.cfg.Client.Health().Service(sw.name, "", false, opts)
			if err != nil {
				return nil, nil, err
			}
			return buildService(sw.name, entries, w.cfg.ZoneMetaKeys), meta, nil
		},
		equal: func(a, b *model.Service) bool { return reflect.DeepEqual(a, b) },
		deliver: func(svc *model.Service) bool {
			select {
			case events <- event{watch: sw, service: svc}:
				return true
			case <-ctx.Done():
				return false
			}
		},
	}
	q.run(ctx)
}
