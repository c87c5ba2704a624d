package catalog

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/runtest"
)

// watchConfig is fakeConfig with per-service watches through the same fake.
func watchConfig(t *testing.T, f *fakeConsul, watches int) Config {
	cfg := fakeConfig(t, f)
	cfg.Watches = watches
	cfg.WatchClient = f.client(t)
	cfg.WatchWaitTime = time.Minute
	return cfg
}

// watchedFrom reports whether some request to service name's health path
// blocked at index: the watch started at the index it was read at.
func watchedFrom(index uint64) func([]uint64) bool {
	return func(indexes []uint64) bool { return slices.Contains(indexes, index) }
}

// TestWatchedServiceChangesNeedNoSweep: a watched service's address-only
// change (no check, no tag moves) reaches a snapshot through its watch,
// with no index probe and no other service read.
func TestWatchedServiceChangesNeedNoSweep(t *testing.T) {
	f := newFakeConsul(t)
	names := []string{"a", "b", "c"}
	f.setOnePortEach(10, names...)
	w := startWatcher(t, watchConfig(t, f, 10))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {1}, "c": {1}}))
	for _, n := range names {
		waitRequests(t, f, fakeHealthPath(n), watchedFrom(10))
	}
	waitStatus(t, w, 5*time.Second, func(st Status) error {
		if st.Watches != 3 {
			return fmt.Errorf("%d services watched, want 3", st.Watches)
		}
		return nil
	})
	if got := metricValue(t, w, "trellis_catalog_service_watches"); got != 3 {
		t.Errorf("trellis_catalog_service_watches = %v, want 3", got)
	}
	probes := metricValue(t, w, "trellis_catalog_index_probes_total")
	before := map[string]int{}
	for _, n := range names {
		before[n] = len(f.requestsTo(fakeHealthPath(n)))
	}

	for i, port := range []int{7, 8, 9} {
		index := uint64(12 + i)
		f.setInstances("b", index, port) // moves the list's index too, as Consul does
		nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {port}, "c": {1}}))
		waitRequests(t, f, fakeHealthPath("b"), watchedFrom(index))
	}
	// Longer than the sweep's grace: a sweep would have started.
	time.Sleep(300 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_index_probes_total") - probes; got != 0 {
		t.Errorf("%v index probes for changes to a watched service, want 0", got)
	}
	for _, n := range []string{"a", "c"} {
		if got := len(f.requestsTo(fakeHealthPath(n))) - before[n]; got != 0 {
			t.Errorf("%d requests for %s while only b changed, want 0 (its watch waits)", got, n)
		}
	}
	g, _ := w.cfg.Registerer.(prometheus.Gatherer)
	if got := runtest.Metric(t, g, "trellis_catalog_reads_total", map[string]string{"reason": reasonWatch}); got != 3 {
		t.Errorf("reads by watch = %v, want 3", got)
	}
}

// TestWatchesBeyondTheBoundAreSwept: with fewer watches than services,
// the unwatched ones still get their unattributed changes found by a
// sweep; a watched service that leaves hands its watch to one that had
// none.
func TestWatchesBeyondTheBoundAreSwept(t *testing.T) {
	f := newFakeConsul(t)
	names := []string{"a", "b", "c"}
	f.setOnePortEach(10, names...)
	w := startWatcher(t, watchConfig(t, f, 2))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {1}, "c": {1}}))
	waitStatus(t, w, 5*time.Second, func(st Status) error {
		if st.Watches != 2 {
			return fmt.Errorf("%d services watched, want 2", st.Watches)
		}
		return nil
	})
	// The unwatched one: no request blocked at its read's index.
	var unwatched string
	deadline := time.Now().Add(5 * time.Second)
	for unwatched == "" {
		var blocked []string
		for _, n := range names {
			if watchedFrom(10)(f.requestsTo(fakeHealthPath(n))) {
				blocked = append(blocked, n)
			}
		}
		if len(blocked) == 2 {
			for _, n := range names {
				if !slices.Contains(blocked, n) {
					unwatched = n
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("watched services: %v, want 2 of %v", blocked, names)
		}
		time.Sleep(10 * time.Millisecond)
	}

	sweeps := w.Status().Sweeps
	f.setInstances(unwatched, 12, 7)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{unwatched: {7}}))
	if got := w.Status().Sweeps - sweeps; got < 1 {
		t.Errorf("%d sweeps found a change to an unwatched service, want 1 or more", got)
	}

	// A watched service leaves: the unwatched one takes its watch.
	var leaving string
	for _, n := range names {
		if n != unwatched {
			leaving = n
			break
		}
	}
	var rest []string
	for _, n := range names {
		if n != leaving {
			rest = append(rest, n)
		}
	}
	f.setServices(13, rest...)
	nextSnapshot(t, w, 10*time.Second, func(s *model.Snapshot) error {
		if _, ok := s.Services[leaving]; ok {
			return fmt.Errorf("%s still in the snapshot", leaving)
		}
		return nil
	})
	waitRequests(t, f, fakeHealthPath(unwatched), watchedFrom(12))
	probes := metricValue(t, w, "trellis_catalog_index_probes_total")
	f.setInstances(unwatched, 14, 8)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{unwatched: {8}}))
	time.Sleep(300 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_index_probes_total") - probes; got != 0 {
		t.Errorf("%v index probes after %s got the watch %s left, want 0", got, unwatched, leaving)
	}
	if got := w.Status().Watches; got != 2 {
		t.Errorf("%d services watched, want 2", got)
	}
}

// TestWatchConfig: watches need a client to run on.
func TestWatchConfig(t *testing.T) {
	client := newTestClient(t, "127.0.0.1:1")
	if _, err := New(Config{Client: client, Watches: 5}); err == nil {
		t.Error("Watches without a WatchClient accepted")
	}
	if _, err := New(Config{Client: client, Watches: -1, WatchClient: client}); err == nil {
		t.Error("negative Watches accepted")
	}
	if _, err := New(Config{Client: client, Watches: 5, WatchClient: client}); err != nil {
		t.Errorf("Watches with a WatchClient: %v", err)
	}
}

// TestWatchBackoffBoundsRetries: failing watches together retry at most
// about 100 times a second, however many there are.
func TestWatchBackoffBoundsRetries(t *testing.T) {
	client := newTestClient(t, "127.0.0.1:1")
	for _, watches := range []int{1, 100, 1000, 10000} {
		w, err := New(Config{Client: client, Watches: watches, WatchClient: client})
		if err != nil {
			t.Fatal(err)
		}
		backoff := w.watchBackoff()
		if backoff < DefaultMaxBackoff {
			t.Errorf("%d watches: backoff %s, below Config.MaxBackoff", watches, backoff)
		}
		if perSecond := float64(watches) / backoff.Seconds(); perSecond > 100 {
			t.Errorf("%d watches retrying every %s: %.0f requests a second", watches, backoff, perSecond)
		}
	}
}
