package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// probeLoop probes Consul every ProbeInterval until ctx is done.
func (w *Watcher) probeLoop(ctx context.Context) {
	ticker := time.NewTicker(w.cfg.ProbeInterval)
	defer ticker.Stop()
	for {
		w.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probe asks Consul for its leader, a cheap request that a paused or
// leaderless Consul fails within probeTimeout.
func (w *Watcher) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	leader, err := w.cfg.Client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(pctx))
	if ctx.Err() != nil {
		return
	}
	if err == nil && leader == "" {
		err = errors.New("no cluster leader")
	}
	if err != nil {
		err = fmt.Errorf("catalog: probe: %w", err)
	}
	w.probed(err)
}

// wakeContext returns the context that is cancelled when Consul is seen
// again after an outage.
func (w *Watcher) wakeContext() context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wake
}

// probed records a probe result. When a probe succeeds after a failed one,
// every watch is woken: their queries may hang on connections to a Consul
// that was paused, or wait out a long backoff.
func (w *Watcher) probed(err error) {
	w.mu.Lock()
	if err != nil {
		w.probeOK = false
		w.status.LastError = err.Error()
		w.metrics.errors.Inc()
	} else {
		if !w.probeOK {
			w.cancelWake()
			w.wake, w.cancelWake = context.WithCancel(context.Background())
		}
		w.probeOK = true
		w.status.LastContact = time.Now()
	}
	log := w.updateReachableLocked()
	w.mu.Unlock()
	log()
}

// failure records a failed query of one watch.
func (w *Watcher) failure(key *watchKey, what string, err error) {
	err = fmt.Errorf("catalog: watch %s: %w", what, err)
	w.metrics.errors.Inc()
	w.mu.Lock()
	w.failing[key] = err
	w.status.LastError = err.Error()
	log := w.updateReachableLocked()
	w.mu.Unlock()
	w.logger.Debug("Consul query failed", "watch", what, "error", err)
	log()
}

// success records a successful query of one watch.
func (w *Watcher) success(key *watchKey) {
	w.mu.Lock()
	delete(w.failing, key)
	w.status.LastContact = time.Now()
	log := w.updateReachableLocked()
	w.mu.Unlock()
	log()
}

// forget drops a stopped watch from the failing set.
func (w *Watcher) forget(key *watchKey) {
	w.mu.Lock()
	_, ok := w.failing[key]
	delete(w.failing, key)
	log := func() {}
	if ok {
		log = w.updateReachableLocked()
	}
	w.mu.Unlock()
	log()
}

// updateReachableLocked recomputes Status.Reachable and returns the logging
// to do, once w.mu is released, for a transition.
func (w *Watcher) updateReachableLocked() (log func()) {
	reachable := w.probeOK && len(w.failing) == 0
	if w.reachKnown && reachable == w.status.Reachable {
		return func() {}
	}
	first := !w.reachKnown
	w.reachKnown = true
	w.status.Reachable = reachable
	if reachable {
		w.metrics.reachable.Set(1)
		w.status.LastError = ""
		if first {
			return func() { w.logger.Debug("Consul reachable") }
		}
		return func() { w.logger.Info("Consul reachable again; catalog watches resume") }
	}
	w.metrics.reachable.Set(0)
	lastErr, lastContact := w.status.LastError, w.status.LastContact
	return func() {
		w.logger.Warn("Consul unreachable; keeping the last catalog snapshot", "error", lastErr, "last_contact", lastContact)
	}
}
