package pipeline

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeCache follows the changes it is given, as the xDS caches do, and
// records the whole state of every profile after every apply.
type fakeCache struct {
	mu      sync.Mutex
	state   map[string]xdscache.Resources
	applies []map[string]xdscache.Resources
	changes []map[string]xdscache.Change
	err     error
	notify  chan struct{}
}

func newFakeCache() *fakeCache {
	return &fakeCache{notify: make(chan struct{}, 100), state: map[string]xdscache.Resources{}}
}

func (c *fakeCache) Apply(next map[string]xdscache.Change) map[string]xdscache.ApplyResult {
	c.mu.Lock()
	for profile, ch := range next {
		if ch.Full != nil {
			c.state[profile] = copyResources(ch.Full)
			continue
		}
		st := c.state[profile]
		if st == nil {
			panic("a change for a profile without a whole state first: " + profile)
		}
		for typeURL, names := range ch.Deleted {
			for _, name := range names {
				delete(st[typeURL], name)
			}
		}
		for typeURL, m := range ch.Updated {
			if st[typeURL] == nil {
				st[typeURL] = map[string]types.Resource{}
			}
			maps.Copy(st[typeURL], m)
		}
	}
	snapshot := make(map[string]xdscache.Resources, len(c.state))
	for profile, st := range c.state {
		snapshot[profile] = copyResources(st)
	}
	c.applies = append(c.applies, snapshot)
	c.changes = append(c.changes, next)
	err := c.err
	c.mu.Unlock()
	c.notify <- struct{}{}
	out := map[string]xdscache.ApplyResult{}
	for name, ch := range next {
		// What a cache would report, roughly: how much the change holds.
		n := 0
		for _, m := range ch.Full {
			n += len(m)
		}
		for _, m := range ch.Updated {
			n += len(m)
		}
		out[name] = xdscache.ApplyResult{Err: err, Types: map[string]xdscache.TypeChange{"all": {Updated: n}}}
	}
	return out
}

func copyResources(r xdscache.Resources) xdscache.Resources {
	out := make(xdscache.Resources, len(r))
	for typeURL, m := range r {
		out[typeURL] = maps.Clone(m)
	}
	return out
}

func (c *fakeCache) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.applies)
}

func (c *fakeCache) last() map[string]xdscache.Resources {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applies[len(c.applies)-1]
}

// inputs are the channels a test feeds.
type inputs struct {
	catalogs chan *model.Snapshot
	policies chan *store.Snapshot
	security chan *translate.Security
}

func start(t *testing.T, cfg Config) (*Pipeline, *fakeCache, inputs, *syncWriter) {
	t.Helper()
	in := inputs{make(chan *model.Snapshot), make(chan *store.Snapshot), make(chan *translate.Security)}
	cache := newFakeCache()
	logs := &syncWriter{w: &bytes.Buffer{}}
	cfg.Catalogs, cfg.Policies, cfg.Security, cfg.Cache = in.catalogs, in.policies, in.security, cache
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return p, cache, in, logs
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func catalog(ports ...int) *model.Snapshot {
	svc := &model.Service{Name: "echo"}
	for _, p := range ports {
		svc.Instances = append(svc.Instances, model.Instance{ID: "echo-" + string(rune('a'+p%26)), Node: "n1", Address: "10.0.0.1", Port: p,
			Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1"})
	}
	return model.NewSnapshot([]*model.Service{svc})
}

func waitApplies(t *testing.T, c *fakeCache, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for c.count() < n {
		select {
		case <-c.notify:
		case <-deadline:
			t.Fatalf("%d applies, want %d", c.count(), n)
		}
	}
}

func noApply(t *testing.T, c *fakeCache, n int) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	if got := c.count(); got != n {
		t.Fatalf("%d applies, want %d", got, n)
	}
}

func TestWaitsForCatalogAndPolicies(t *testing.T) {
	p, cache, in, _ := start(t, Config{})
	in.catalogs <- catalog(8080)
	noApply(t, cache, 0)
	if p.Ready() {
		t.Fatal("ready before the first policy snapshot")
	}
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	select {
	case <-p.Synced():
	case <-time.After(time.Second):
		t.Fatal("Synced not closed after the first apply")
	}
	if got := len(cache.last()["widest"][resource.ClusterType]); got != 1 {
		t.Errorf("clusters applied: %d, want 1", got)
	}
}

// TestNoTrustDomainDoesNotWaitForIntentions: without a trust domain the
// intentions change nothing that needs waiting for, so a token that cannot
// read them must not keep xDS unserved.
func TestNoTrustDomainDoesNotWaitForIntentions(t *testing.T) {
	_, cache, in, _ := start(t, Config{BaseSecurity: &translate.Security{}})
	in.catalogs <- catalog(8080)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
}

func TestTrustDomainWaitsForIntentions(t *testing.T) {
	base := &translate.Security{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), MTLS: true}
	_, cache, in, _ := start(t, Config{BaseSecurity: base})
	in.catalogs <- catalog(8080)
	in.policies <- &store.Snapshot{}
	noApply(t, cache, 0)
	sec := *base
	sec.Intentions = model.NewIntentions(nil)
	in.security <- &sec
	waitApplies(t, cache, 1)
}

// TestLatestInputsAndLastGood: every new snapshot is translated with the
// latest of the others, and an input that stops (its source unreachable)
// keeps its last value.
func TestLatestInputsAndLastGood(t *testing.T) {
	_, cache, in, _ := start(t, Config{})
	in.catalogs <- catalog(8080)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	in.catalogs <- catalog(8080, 8081)
	waitApplies(t, cache, 2)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 3)
	endpoints := cache.last()["widest"][resource.EndpointType]
	if len(endpoints) != 1 {
		t.Fatalf("endpoint resources %d, want 1", len(endpoints))
	}
	for _, cla := range endpoints {
		if s := cla.(interface{ String() string }).String(); !strings.Contains(s, "8081") {
			t.Errorf("the policy apply did not use the latest catalog: %s", s)
		}
	}
}

// TestUnchangedServiceKeepsItsResources: the memoising translation hands
// the cache the very same resource values for an unchanged service.
func TestUnchangedServiceKeepsItsResources(t *testing.T) {
	_, cache, in, _ := start(t, Config{})
	snap := catalog(8080)
	in.catalogs <- snap
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	first := cache.last()["widest"][resource.ClusterType]["echo"]
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 2)
	if cache.last()["widest"][resource.ClusterType]["echo"] != first {
		t.Error("an unchanged service's Cluster was rebuilt")
	}
}

// TestChangesFollowTheCatalog: after the first whole state, each apply
// hands over only what changed, and nothing for a profile without change.
func TestChangesFollowTheCatalog(t *testing.T) {
	_, cache, in, _ := start(t, Config{})
	other := &model.Service{Name: "other", Instances: []model.Instance{{ID: "o", Node: "n1", Address: "10.0.0.2", Port: 9090,
		Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1"}}}
	with := func(snap *model.Snapshot) *model.Snapshot {
		return model.NewSnapshot([]*model.Service{snap.Services["echo"], other})
	}
	in.catalogs <- with(catalog(8080))
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	if cache.changes[0]["widest"].Full == nil {
		t.Fatal("the first apply is not a whole state")
	}
	in.catalogs <- with(catalog(8080, 8081))
	waitApplies(t, cache, 2)
	ch := cache.changes[1]["widest"]
	if ch.Full != nil {
		t.Fatal("a one-instance change applied as a whole state")
	}
	if len(ch.Updated[resource.EndpointType]) != 1 {
		t.Errorf("change holds %d endpoint resources, want 1", len(ch.Updated[resource.EndpointType]))
	}
	for typeURL, m := range ch.Updated {
		if _, ok := m["other"]; ok {
			t.Errorf("change holds the %s of a service that did not change", typeURL)
		}
	}
	if got := len(cache.last()["widest"][resource.ClusterType]); got != 2 {
		t.Errorf("%d clusters after the change, want 2", got)
	}
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 3)
	if _, ok := cache.changes[2]["widest"]; ok {
		t.Error("a change handed over for an input that changed nothing")
	}
}

// TestChangeToPushObserved: a catalog change is timed from when it was
// observed to its apply; the first sync and an apply that changes nothing
// are not.
func TestChangeToPushObserved(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, cache, in, _ := start(t, Config{Registerer: reg})
	first := catalog(8080)
	first.ObservedAt = time.Now().Add(-time.Hour)
	in.catalogs <- first
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	count := func() uint64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "trellis_pipeline_change_to_push_seconds" {
				h := mf.GetMetric()[0].GetHistogram()
				if h.GetSampleCount() > 0 && h.GetSampleSum() < 0.2 {
					t.Errorf("change to push: %v s over %d, want at least 0.2 s each", h.GetSampleSum(), h.GetSampleCount())
				}
				return h.GetSampleCount()
			}
		}
		t.Fatal("trellis_pipeline_change_to_push_seconds not registered")
		return 0
	}
	if n := count(); n != 0 {
		t.Fatalf("first sync observed: %d", n)
	}
	// Observed after the apply returns: wait for it.
	next := catalog(8080, 8081)
	next.ObservedAt = time.Now().Add(-200 * time.Millisecond)
	in.catalogs <- next
	waitApplies(t, cache, 2)
	waitFor(t, func() bool { return count() == 1 })
	// An apply that changes nothing, then one that does: one more
	// observation, not two.
	same := catalog(8080, 8081)
	same.ObservedAt = time.Now().Add(-200 * time.Millisecond)
	in.catalogs <- same
	waitApplies(t, cache, 3)
	last := catalog(8080, 8081, 8082)
	last.ObservedAt = time.Now().Add(-200 * time.Millisecond)
	in.catalogs <- last
	waitApplies(t, cache, 4)
	waitFor(t, func() bool { return count() >= 2 })
	if n := count(); n != 2 {
		t.Fatalf("after an apply that changed nothing and one that did: %d observations, want 2", n)
	}
}

// TestInactiveProfilesNotTranslated: a profile other than the first is
// translated only once active, and then from a whole state.
func TestInactiveProfilesNotTranslated(t *testing.T) {
	var mu sync.Mutex
	active := map[string]bool{}
	activated := make(chan struct{}, 1)
	_, cache, in, _ := start(t, Config{
		Profiles:  []clients.Profile{clients.Widest, clients.Go},
		Active:    func(name string) bool { mu.Lock(); defer mu.Unlock(); return active[name] },
		Activated: activated,
	})
	in.catalogs <- catalog(8080)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	if _, ok := cache.changes[0][clients.GoName]; ok {
		t.Fatal("an inactive profile was translated")
	}
	mu.Lock()
	active[clients.GoName] = true
	mu.Unlock()
	activated <- struct{}{}
	waitApplies(t, cache, 2)
	ch, ok := cache.changes[1][clients.GoName]
	if !ok || ch.Full == nil {
		t.Fatalf("activated profile: change %+v, want a whole state", ch)
	}
	if got := len(ch.Full[resource.ClusterType]); got != 1 {
		t.Errorf("activated profile: %d clusters, want 1", got)
	}
}

func TestSkipsLoggedOnceAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	p, cache, in, logs := start(t, Config{Registerer: reg})
	bad := model.NewSnapshot([]*model.Service{{Name: "bad name!"}, {Name: "echo"}})
	in.catalogs <- bad
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 2)
	if n := strings.Count(logs.String(), `service="bad name!"`); n != 1 {
		t.Errorf("the skip was logged %d times, want once:\n%s", n, logs)
	}
	waitFor(t, func() bool { st := p.Status(); return st.LeftOut == 1 && st.Services == 2 })
	if v := testutil.ToFloat64(p.metrics.skipped.WithLabelValues("left_out")); v != 1 {
		t.Errorf("trellis_translate_skipped{kind=left_out} = %v, want 1", v)
	}
	in.catalogs <- catalog(8080)
	waitApplies(t, cache, 3)
	if !strings.Contains(logs.String(), "resolved") {
		t.Errorf("the skip clearing was not logged:\n%s", logs)
	}
}

func TestApplyErrorsLoggedAndCounted(t *testing.T) {
	p, cache, in, logs := start(t, Config{})
	cache.err = errTest
	in.catalogs <- catalog(8080)
	in.policies <- &store.Snapshot{}
	waitApplies(t, cache, 1)
	waitFor(t, func() bool { return len(p.Status().ApplyErrors) == 1 })
	waitFor(t, func() bool { return testutil.ToFloat64(p.metrics.applyErrors) == 1 })
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("apply error not logged at error level:\n%s", logs)
	}
	if v := testutil.ToFloat64(p.metrics.applyErrors); v != 1 {
		t.Errorf("trellis_pipeline_apply_errors_total = %v, want 1", v)
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("refused")

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without inputs accepted")
	}
}
