package catalog

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/model"
)

// fakeConfig is a Watcher configuration for the fake Consul: short waits so
// that blocking queries cycle quickly.
func fakeConfig(t *testing.T, f *fakeConsul) Config {
	return Config{
		Client:        f.client(t),
		WaitTime:      300 * time.Millisecond,
		MinInterval:   10 * time.Millisecond,
		Coalesce:      50 * time.Millisecond,
		ProbeInterval: 200 * time.Millisecond,
		MaxBackoff:    400 * time.Millisecond,
	}
}

// hasPorts returns a snapshot check that wants service name to have
// exactly the given instance ports.
func hasPorts(want map[string][]int) func(*model.Snapshot) error {
	return func(snap *model.Snapshot) error {
		for name, p := range want {
			if got := ports(snap, name); !slices.Equal(got, p) {
				return fmt.Errorf("service %s ports %v, want %v", name, got, p)
			}
		}
		return nil
	}
}

// waitRequests polls until cond accepts the indexes requested on path.
func waitRequests(t *testing.T, f *fakeConsul, path string, cond func([]uint64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(f.requestsTo(path)) {
		if time.Now().After(deadline) {
			t.Fatalf("requests to %s: %v", path, f.requestsTo(path))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIndexGoingBackwardsResets(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a")
	f.setInstances("a", 10, 1)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))

	// The list's index drops from 10 to 5 and its content changes.
	f.setServices(5, "a", "b")
	f.setInstances("b", 6, 2)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {2}}))

	// After a query at index 10 answered with 5, the next one starts over
	// at 0 instead of blocking on 5.
	reqs := f.requestsTo(fakeListPath)
	i := slices.Index(reqs, 10)
	if i < 0 {
		t.Fatalf("list query indexes %v: none at index 10", reqs)
	}
	rest := reqs[i:]
	if j := slices.Index(rest, 0); j < 0 || slices.Contains(rest[:j], 5) {
		t.Errorf("list query indexes %v: want a query at index 0 right after the index went back from 10 to 5", reqs)
	}
}

// TestRestartingConsulIgnored plays what Consul's streaming backend
// answers blocking health queries right after a server restart, before the
// state is restored: index 1, no instances, no known leader. Publishing it
// would empty the service.
func TestRestartingConsulIgnored(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a")
	f.setInstances("a", 10, 1)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))
	published := metricValue(t, w, "trellis_catalog_snapshots_total")

	// The detectors' answers go back to index 1 with nothing in them:
	// they restart from 0 and get the empty state again, which is an
	// error, never an empty catalog.
	f.setNotReady("a")
	waitRequests(t, f, fakeListPath, func(r []uint64) bool {
		i := slices.Index(r, 10)
		return i >= 0 && slices.Contains(r[i:], 0)
	})
	st := waitStatus(t, w, 5*time.Second, func(s Status) error {
		if s.Reachable {
			return fmt.Errorf("a Consul that is not ready counts as reachable")
		}
		return nil
	})
	if st.LastErrorKind != "not_ready" {
		t.Errorf("LastErrorKind = %q, want not_ready", st.LastErrorKind)
	}
	time.Sleep(200 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != published {
		t.Errorf("published %v snapshots from a restarting Consul", got-published)
	}

	f.setServices(12, "a")
	f.setInstances("a", 12, 2)
	nextSnapshot(t, w, 10*time.Second, func(s *model.Snapshot) error {
		if p := ports(s, "a"); len(p) == 0 {
			t.Errorf("published service a without instances from a restarting Consul")
		}
		return hasPorts(map[string][]int{"a": {2}})(s)
	})
}

func TestIndexZeroTreatedAsOne(t *testing.T) {
	f := newFakeConsul(t)
	f.setInstances("a", 3, 1)
	f.setServices(0, "a")
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))

	waitRequests(t, f, fakeListPath, func(r []uint64) bool { return len(r) >= 3 })
	reqs := f.requestsTo(fakeListPath)
	if reqs[0] != 0 {
		t.Errorf("first list query at index %d, want 0", reqs[0])
	}
	for _, idx := range reqs[1:] {
		if idx != 1 {
			t.Fatalf("list query indexes %v: after index 0, want every query at index 1 (blocking)", reqs)
		}
	}
}

func TestUnchangedIndexOrDataPublishesNothing(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a")
	f.setInstances("a", 10, 1)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))
	published := metricValue(t, w, "trellis_catalog_snapshots_total")

	// Same index, different content: Consul would never do this; the
	// watcher must ignore it, as the index says nothing changed.
	f.setServices(10, "a", "b")
	f.setInstances("b", 10, 2)
	// Two more queries at index 10 prove the answer was read.
	waitRequests(t, f, fakeListPath, func(r []uint64) bool { return len(r) >= 3 && r[len(r)-1] == 10 && r[len(r)-2] == 10 })
	if n := len(f.requestsTo(fakeHealthPath("b"))); n != 0 {
		t.Errorf("b read %d times from a list answer whose index had not changed", n)
	}

	// New index, same content: the sweep finds no service's index moved,
	// so nothing is read and nothing published.
	sweeps := metricValue(t, w, "trellis_catalog_sweeps_total")
	f.setServices(11, "a")
	waitFor(t, 5*time.Second, func() bool { return metricValue(t, w, "trellis_catalog_sweeps_total") > sweeps })
	time.Sleep(3 * 50 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != published {
		t.Errorf("snapshots published = %v, want %v (nothing changed)", got, published)
	}
	if n := len(f.requestsTo(fakeHealthPath("a"))); n != 2 {
		t.Errorf("requests for a: %v, want the initial read and one index probe", f.requestsTo(fakeHealthPath("a")))
	}

	// A real change is published.
	f.setInstances("a", 12, 3)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {3}}))
}

func TestErrorsBackOffAndKeepLastSnapshot(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a", "b")
	f.setInstances("a", 10, 1)
	f.setInstances("b", 10, 2)
	reg := prometheus.NewRegistry()
	cfg := fakeConfig(t, f)
	cfg.Registerer = reg
	w := startWatcher(t, cfg)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {2}}))
	waitStatus(t, w, 5*time.Second, func(s Status) error {
		if !s.Synced || !s.Reachable || s.Services != 2 {
			return fmt.Errorf("want synced, reachable, 2 services")
		}
		return nil
	})
	published := metricValue(t, w, "trellis_catalog_snapshots_total")

	f.fail("", http.StatusInternalServerError)
	before := len(f.requestsTo(fakeListPath)) + len(f.requestsTo(fakeStatePath))
	// Blocked queries run out their 300ms wait, then fail.
	st := waitStatus(t, w, 5*time.Second, func(s Status) error {
		if s.Reachable {
			return fmt.Errorf("still reachable")
		}
		return nil
	})
	if !strings.Contains(st.LastError, "500") {
		t.Errorf("LastError = %q, want the 500 error", st.LastError)
	}
	if got := metricValue(t, w, "trellis_catalog_consul_reachable"); got != 0 {
		t.Errorf("trellis_catalog_consul_reachable = %v, want 0", got)
	}
	time.Sleep(2 * time.Second)
	after := len(f.requestsTo(fakeListPath)) + len(f.requestsTo(fakeStatePath))
	// Two detectors, each retrying after 190ms..400ms: at most about 12
	// requests each in 2.3s; without backoff they would be thousands.
	if n := after - before; n > 50 || n < 3 {
		t.Errorf("%d requests during 2s of errors, want a few per watch (backoff)", n)
	}
	if got := metricValue(t, w, "trellis_catalog_errors_total"); got < 3 {
		t.Errorf("trellis_catalog_errors_total = %v, want at least 3", got)
	}
	select {
	case snap := <-w.Snapshots():
		t.Errorf("published a snapshot while Consul failed: %v", snap.ServiceNames())
	default:
	}
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != published {
		t.Errorf("snapshots published during errors: %v, want %v", got-published, 0)
	}
	if st := w.Status(); !st.Synced || st.Services != 2 {
		t.Errorf("status during errors = %+v, want synced with 2 services", st)
	}

	// Consul recovers with a change.
	f.setInstances("b", 20, 3)
	f.fail("", 0)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {3}}))
	waitStatus(t, w, 5*time.Second, func(s Status) error {
		if !s.Reachable || s.LastError != "" {
			return fmt.Errorf("want reachable with no error")
		}
		return nil
	})
	if got := metricValue(t, w, "trellis_catalog_consul_reachable"); got != 1 {
		t.Errorf("trellis_catalog_consul_reachable = %v, want 1", got)
	}
	if got := metricValue(t, w, "trellis_catalog_services"); got != 2 {
		t.Errorf("trellis_catalog_services = %v, want 2", got)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range families {
		names = append(names, mf.GetName())
	}
	want := []string{"trellis_catalog_consul_reachable", "trellis_catalog_errors_total", "trellis_catalog_index_probes_total",
		"trellis_catalog_reads_total", "trellis_catalog_service_watches", "trellis_catalog_services", "trellis_catalog_snapshots_total", "trellis_catalog_sweeps_total"}
	if !slices.Equal(names, want) {
		t.Errorf("registered metrics %v, want %v", names, want)
	}
}

// TestRecoveryWakesWatches checks that a change made once Consul is back is
// published within about a probe interval, even when the queries in flight
// died with their connections or the retries backed off for long.
func TestRecoveryWakesWatches(t *testing.T) {
	tests := []struct {
		name     string
		outage   func(t *testing.T, f *fakeConsul)
		recovery func(f *fakeConsul)
	}{
		{
			// Queries in flight would only end at their 15s deadline.
			name:     "hung connections",
			outage:   func(_ *testing.T, f *fakeConsul) { f.hang() },
			recovery: func(f *fakeConsul) { f.unhang() },
		},
		{
			// After its 6th failure in a row, the service list watch
			// waits 4s to 8s before it retries. The query blocked when
			// the outage starts fails first, then come 5 retries.
			name: "long backoff",
			outage: func(t *testing.T, f *fakeConsul) {
				n := len(f.requestsTo(fakeListPath))
				f.setDown(http.StatusServiceUnavailable)
				waitRequests(t, f, fakeListPath, func(r []uint64) bool { return len(r) >= n+5 })
			},
			recovery: func(f *fakeConsul) { f.setDown(0) },
		},
	}
	for _, tt := range tests {
		for _, watched := range []bool{false, true} {
			name := tt.name
			if watched {
				// a's own watch, waiting out its long backoff unless woken.
				name += ", service watched"
			}
			t.Run(name, func(t *testing.T) {
				f := newFakeConsul(t)
				f.setServices(10, "a")
				f.setInstances("a", 10, 1)
				cfg := fakeConfig(t, f)
				if watched {
					cfg = watchConfig(t, f, 10)
				}
				cfg.WaitTime = 10 * time.Second
				cfg.MaxBackoff = 10 * time.Second
				w := startWatcher(t, cfg)
				nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))
				// Let the watches block on their next queries.
				waitRequests(t, f, fakeListPath, func(r []uint64) bool { return slices.Contains(r, 10) })
				if watched {
					waitRequests(t, f, fakeHealthPath("a"), watchedFrom(10))
				}

				tt.outage(t, f)
				waitStatus(t, w, 5*time.Second, func(s Status) error {
					if s.Reachable {
						return fmt.Errorf("still reachable")
					}
					return nil
				})
				tt.recovery(f)
				recovered := time.Now()
				f.setInstances("b", 11, 2)
				f.setServices(11, "a", "b")
				want := map[string][]int{"a": {1}, "b": {2}}
				if watched {
					f.setInstances("a", 12, 3)
					want["a"] = []int{3}
				}
				nextSnapshot(t, w, 20*time.Second, hasPorts(want))
				// Probe interval 200ms, probe timeout 1s, plus slack.
				if d := time.Since(recovered); d > 2500*time.Millisecond {
					t.Errorf("change published %s after Consul recovered, want about a probe interval", d)
				}
			})
		}
	}
}

func TestBurstIsCoalesced(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a", "b", "c")
	for _, s := range []string{"a", "b", "c"} {
		f.setInstances(s, 10, 1)
	}
	cfg := fakeConfig(t, f)
	cfg.Coalesce = 300 * time.Millisecond
	w := startWatcher(t, cfg)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {1}, "c": {1}}))
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != 1 {
		t.Fatalf("snapshots after the first sync = %v, want 1", got)
	}

	for _, s := range []string{"a", "b", "c"} {
		f.setInstances(s, 11, 2)
	}
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {2}, "b": {2}, "c": {2}}))
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != 2 {
		t.Errorf("snapshots after a burst of 3 changes = %v, want 2 (one for the burst)", got)
	}
}

func TestSteadyChangesStillPublish(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a")
	f.setInstances("a", 10, 1)
	cfg := fakeConfig(t, f)
	cfg.Coalesce = 200 * time.Millisecond // publish at the latest 2s after the first change
	w := startWatcher(t, cfg)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))

	// A change every 50ms never leaves a 200ms quiet period; a snapshot
	// must still come within the 2s bound.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint64(11); ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				f.setInstances("a", i, int(i))
			}
		}
	}()
	defer func() { close(stop); <-done }()
	nextSnapshot(t, w, 4*time.Second, func(s *model.Snapshot) error {
		if p := ports(s, "a"); len(p) != 1 || p[0] < 11 {
			return fmt.Errorf("ports %v: no change published yet", p)
		}
		return nil
	})
}

func TestFirstSnapshotWaitsForCompleteSync(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a", "b")
	f.setInstances("a", 10, 1)
	f.setInstances("b", 10, 2)
	f.fail(fakeHealthPath("b"), http.StatusInternalServerError)
	w := startWatcher(t, fakeConfig(t, f))

	// a answered, b failed and was retried.
	waitRequests(t, f, fakeHealthPath("a"), func(r []uint64) bool { return len(r) >= 1 })
	waitRequests(t, f, fakeHealthPath("b"), func(r []uint64) bool { return len(r) >= 2 })
	time.Sleep(3 * 50 * time.Millisecond) // a coalescing period
	select {
	case snap := <-w.Snapshots():
		t.Fatalf("published %v before the health of every service was known", snap.ServiceNames())
	default:
	}
	if st := w.Status(); st.Synced {
		t.Errorf("Status().Synced = true before the first complete sync")
	}

	f.fail(fakeHealthPath("b"), 0)
	snap := nextSnapshot(t, w, 10*time.Second, func(*model.Snapshot) error { return nil })
	if err := hasPorts(map[string][]int{"a": {1}, "b": {2}})(snap); err != nil {
		t.Errorf("first snapshot: %v", err)
	}
}

func TestRemovedServiceStopsItsWatch(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(10, "a", "b")
	f.setInstances("a", 10, 1)
	f.setInstances("b", 10, 2)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {2}}))

	f.setServices(11, "a")
	nextSnapshot(t, w, 10*time.Second, func(s *model.Snapshot) error {
		if _, ok := s.Services["b"]; ok {
			return fmt.Errorf("b still in the snapshot")
		}
		return nil
	})
	n := len(f.requestsTo(fakeHealthPath("b")))

	// A change to b would wake a watch still running; a change to a then
	// proves time passed through the whole pipeline.
	f.setInstances("b", 12, 3)
	f.setInstances("a", 12, 4)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {4}}))
	time.Sleep(200 * time.Millisecond)
	if got := len(f.requestsTo(fakeHealthPath("b"))); got != n {
		t.Errorf("%d health queries for b after it left the service list, want 0", got-n)
	}
}

func TestRunTwice(t *testing.T) {
	f := newFakeConsul(t)
	f.setServices(1)
	w := startWatcher(t, fakeConfig(t, f))
	// Reachable proves the first Run is under way.
	waitStatus(t, w, 10*time.Second, func(s Status) error {
		if !s.Reachable {
			return fmt.Errorf("not reachable yet")
		}
		return nil
	})
	if err := w.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Errorf("second Run() = %v, want an error", err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setNonPassing sets the answer of the non-passing checks detector.
func (f *fakeConsul) setNonPassing(index uint64, checks ...*api.HealthCheck) {
	if checks == nil {
		checks = []*api.HealthCheck{}
	}
	f.set(fakeStatePath, index, checks)
}

// TestHealthChangeReadsOnlyItsService: a check leaving or joining the
// non-passing set re-reads that service alone, with no sweep.
func TestHealthChangeReadsOnlyItsService(t *testing.T) {
	f := newFakeConsul(t)
	names := []string{"a", "b", "c", "d"}
	for _, n := range names {
		f.setInstances(n, 10, 1)
	}
	f.setServices(10, names...)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "d": {1}}))
	before := map[string]int{}
	for _, n := range names {
		before[n] = len(f.requestsTo(fakeHealthPath(n)))
	}
	sweeps := metricValue(t, w, "trellis_catalog_sweeps_total")

	// c's check fails: the health detector sees it; no registration
	// changed, so the list's index stays.
	f.mu.Lock()
	entries := f.resources[fakeHealthPath("c")].body.([]*api.ServiceEntry)
	f.mu.Unlock()
	failed := *entries[0]
	failed.Checks = api.HealthChecks{{Node: "n1", CheckID: "service:c-1", ServiceID: "c-1", ServiceName: "c", Status: api.HealthCritical}}
	f.set(fakeHealthPath("c"), 11, []*api.ServiceEntry{&failed})
	f.setNonPassing(11, failed.Checks[0])
	nextSnapshot(t, w, 10*time.Second, instanceIs("c", "c-1", healthIs(model.HealthCritical)))
	for _, n := range names {
		got := len(f.requestsTo(fakeHealthPath(n))) - before[n]
		if want := map[bool]int{true: 1, false: 0}[n == "c"]; got != want {
			t.Errorf("service %s read %d times after c's check changed, want %d", n, got, want)
		}
	}
	if got := metricValue(t, w, "trellis_catalog_sweeps_total"); got != sweeps {
		t.Errorf("%v sweeps for a health change, want none", got-sweeps)
	}
}

// TestUnattributedRegistrationChangeFoundBySweep: the list's index moves
// with its content unchanged and no check changing (an instance moved to
// another port): the sweep probes every service's index and reads the one
// that moved, and only that one.
func TestUnattributedRegistrationChangeFoundBySweep(t *testing.T) {
	f := newFakeConsul(t)
	names := []string{"a", "b", "c"}
	f.setOnePortEach(10, names...)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {1}, "c": {1}}))
	reads := metricValue(t, w, "trellis_catalog_index_probes_total")

	f.setInstances("b", 12, 7) // moves the list's index too, as Consul does
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}, "b": {7}, "c": {1}}))
	if got := metricValue(t, w, "trellis_catalog_index_probes_total") - reads; got < 1 || got > 3 {
		t.Errorf("%v index probes, want one per service at most (3)", got)
	}
	// a and c were read once at the start and probed once: two requests.
	for _, n := range []string{"a", "c"} {
		if got := len(f.requestsTo(fakeHealthPath(n))); got != 2 {
			t.Errorf("%d requests for %s, want its initial read and one index probe", got, n)
		}
	}
}

// TestRateLimitIsReportedAsSuch: a 429 is rate limiting, not an outage
// nor an unknown error, and the last snapshot is kept.
func TestRateLimitIsReportedAsSuch(t *testing.T) {
	f := newFakeConsul(t)
	f.setInstances("a", 10, 1)
	f.setServices(10, "a")
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"a": {1}}))
	f.fail(fakeListPath, http.StatusTooManyRequests)
	st := waitStatus(t, w, 5*time.Second, func(s Status) error {
		if s.LastErrorKind == "" {
			return fmt.Errorf("no error yet")
		}
		return nil
	})
	if st.LastErrorKind != "rate_limited" || !strings.Contains(st.LastError, "429") || strings.Contains(st.LastError, "%!") {
		t.Errorf("status %+v: want a rate_limited error naming the 429", st)
	}
	if st.Services != 1 || !st.Synced {
		t.Errorf("status %+v: want the last snapshot kept", st)
	}
	f.fail(fakeListPath, 0)
	waitStatus(t, w, 5*time.Second, func(s Status) error {
		if !s.Reachable {
			return fmt.Errorf("not reachable again")
		}
		return nil
	})
}

// TestRegistrationChangesInARowAccountedForByReads: list indexes that
// reads already found services written at cost no sweep; two
// registration changes in a row that no read saw, the second seen while
// the first is still unaccounted for, are looked for together: the
// probes of the two services that changed last (a sweep goes most
// recently changed first) account for both and the sweep stops, where
// one unaccounted index at a time meant probing every service.
func TestRegistrationChangesInARowAccountedForByReads(t *testing.T) {
	f := newFakeConsul(t)
	var names []string
	for i := range 400 {
		n := fmt.Sprintf("s%03d", i)
		names = append(names, n)
		f.setInstances(n, 10, 1)
	}
	f.setServices(10, names...)
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"s000": {1}, "s399": {1}}))

	check := func(name string) *api.HealthCheck {
		return &api.HealthCheck{Node: "n1", CheckID: "service:" + name + "-1", ServiceID: name + "-1", ServiceName: name, Status: api.HealthCritical}
	}
	critical := func(name string, index uint64) {
		f.mu.Lock()
		entries := f.resources[fakeHealthPath(name)].body.([]*api.ServiceEntry)
		f.mu.Unlock()
		e := *entries[0]
		e.Checks = api.HealthChecks{check(name)}
		f.set(fakeHealthPath(name), index, []*api.ServiceEntry{&e})
	}
	// s003 and s310 are written at 11 and 12, and read (the health detector
	// names them) before the list's index moves.
	critical("s003", 11)
	critical("s310", 12)
	f.setNonPassing(12, check("s003"), check("s310"))
	nextSnapshot(t, w, 10*time.Second, func(s *model.Snapshot) error {
		if err := instanceIs("s003", "s003-1", healthIs(model.HealthCritical))(s); err != nil {
			return err
		}
		return instanceIs("s310", "s310-1", healthIs(model.HealthCritical))(s)
	})
	probes := metricValue(t, w, "trellis_catalog_index_probes_total")
	// The list moves to 11, then to 12 while 11 is unaccounted for.
	seen := func(index uint64) {
		waitFor(t, 5*time.Second, func() bool { return slices.Contains(f.requestsTo(fakeListPath), index) })
	}
	f.setServices(11, names...)
	seen(11)
	f.setServices(12, names...)
	seen(12)
	// The reads found s003 at 11 and s310 at 12: both list indexes are
	// accounted for when they arrive, and no sweep probes anything (the
	// list's answers take longer than the sweep's grace to be seen here).
	time.Sleep(300 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_index_probes_total") - probes; got != 0 {
		t.Errorf("%v of %d services probed for two changes reads accounted for, want 0", got, len(names))
	}

	// Address-only changes to the same two (no check moves): only a sweep
	// can find them, and it starts with them.
	f.setInstances("s003", 13, 5)
	seen(13)
	f.setInstances("s310", 14, 6)
	seen(14)
	nextSnapshot(t, w, 10*time.Second, hasPorts(map[string][]int{"s003": {5}, "s310": {6}}))
	time.Sleep(300 * time.Millisecond)
	if got := metricValue(t, w, "trellis_catalog_index_probes_total") - probes; got < 1 || got > float64(len(names)*3/4) {
		t.Errorf("%v of %d services probed for two changes the first probes account for, want 1 to %d", got, len(names), len(names)*3/4)
	}
}

// TestSweepDeadlineWaitsForBoth: a requested sweep waits for its grace and
// for the gap after the last sweep, and the coordinator's timer is set to
// the later of the two, not woken at once over and over meanwhile.
func TestSweepDeadlineWaitsForBoth(t *testing.T) {
	w, err := New(Config{Client: newTestClient(t, "127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name                 string
		lastSweep, notBefore time.Time
		want                 time.Time
	}{
		{"never swept, grace ahead", time.Time{}, now.Add(time.Second), now.Add(time.Second)},
		{"swept just now, grace passed", now, now.Add(-time.Second), now.Add(minSweepGap)},
		{"both passed", now.Add(-time.Hour), now.Add(-time.Second), now.Add(-time.Second)},
	} {
		c := newCoordinator(w, context.Background(), &sync.WaitGroup{})
		c.nextSweep = now.Add(time.Hour)
		c.sweepAgain = true
		c.lastSweep, c.sweepNotBefore = tc.lastSweep, tc.notBefore
		if got := c.nextDeadline(); !got.Equal(tc.want) {
			t.Errorf("%s: next deadline %s, want %s", tc.name, got.Sub(now), tc.want.Sub(now))
		}
	}
}

// setCheck sets the answer for service name: one instance on port 1 whose
// service check has status, and the checks that are not passing.
func (f *fakeConsul) setCheck(name string, index uint64, status string) {
	check := &api.HealthCheck{Node: "n1", CheckID: "service:" + name + "-1", ServiceID: name + "-1", ServiceName: name, Status: status}
	f.set(fakeHealthPath(name), index, []*api.ServiceEntry{{
		Node:    &api.Node{Node: "n1", Address: "10.0.0.1", Datacenter: "dc1"},
		Service: &api.AgentService{ID: name + "-1", Service: name, Port: 1},
		Checks:  api.HealthChecks{{Node: "n1", CheckID: "serfHealth", Status: api.HealthPassing}, check},
	}})
	if status == api.HealthPassing {
		f.setNonPassing(index)
	} else {
		f.setNonPassing(index, check)
	}
}

// TestCheckThroughAStateItsDetectorMissed: a check goes warning, then
// critical, then passing while the critical checks' detector is not
// looking: the warning detector's read saw it critical, so the critical
// detector's next answer, without it, still reads the service again, and
// the instance is passing again.
func TestCheckThroughAStateItsDetectorMissed(t *testing.T) {
	f := newFakeConsul(t)
	f.setCheck("a", 10, api.HealthPassing)
	f.setServices(10, "a")
	w := startWatcher(t, fakeConfig(t, f))
	nextSnapshot(t, w, 10*time.Second, instanceIs("a", "a-1", healthIs(model.HealthPassing)))

	const critical = "/v1/health/state/critical"
	f.hold(critical)
	f.setCheck("a", 11, api.HealthWarning)
	nextSnapshot(t, w, 10*time.Second, instanceIs("a", "a-1", healthIs(model.HealthWarning)))
	f.setCheck("a", 12, api.HealthCritical)
	nextSnapshot(t, w, 10*time.Second, instanceIs("a", "a-1", healthIs(model.HealthCritical)))
	f.setCheck("a", 13, api.HealthPassing)
	// Only the held detector can tell.
	time.Sleep(300 * time.Millisecond)
	f.release(critical)
	nextSnapshot(t, w, 10*time.Second, instanceIs("a", "a-1", healthIs(model.HealthPassing)))
}

// TestBackgroundSweepSpacedForLargeCatalogs: the background sweep runs
// every SweepInterval, and less often when that would average more than
// about 1,000 index reads a minute.
func TestBackgroundSweepSpacedForLargeCatalogs(t *testing.T) {
	w, err := New(Config{Client: newTestClient(t, "127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		services int
		want     time.Duration
	}{{0, DefaultSweepInterval}, {2000, DefaultSweepInterval}, {10000, 10 * time.Minute}} {
		c := newCoordinator(w, context.Background(), &sync.WaitGroup{})
		for i := range tc.services {
			c.services[fmt.Sprintf("s%d", i)] = &entry{}
		}
		got := c.backgroundSweepEvery()
		if got != tc.want {
			t.Errorf("%d services: background sweep every %s, want %s", tc.services, got, tc.want)
		}
		if perMin := float64(tc.services) / got.Minutes(); perMin > 1000 {
			t.Errorf("%d services: %.0f index reads a minute", tc.services, perMin)
		}
	}
}
