package store_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/runtest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// startWatcher runs w until the test ends and checks that Run returns nil.
func startWatcher(t *testing.T, w *store.Watcher) {
	t.Helper()
	runtest.Run(t, testTimeout, w.Run)
}

// waitSnapshot receives snapshots until one satisfies cond.
func waitSnapshot(t *testing.T, w *store.Watcher, what string, cond func(*store.Snapshot) bool) *store.Snapshot {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case s := <-w.Snapshots():
			if cond(s) {
				if w.Latest() != s {
					t.Errorf("Latest() is not the snapshot just received")
				}
				return s
			}
		case <-timeout:
			t.Fatalf("no snapshot with %s after %s; last: %+v; status: %+v", what, testTimeout, w.Latest(), w.Status())
		}
	}
}

// waitStatus polls Status until cond holds.
func waitStatus(t *testing.T, w *store.Watcher, what string, cond func(store.WatchStatus) bool) store.WatchStatus {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		st := w.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed %s; last: %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func invalidKey(st store.WatchStatus, key string) (store.InvalidKey, bool) {
	for _, inv := range st.Invalid {
		if inv.Key == key {
			return inv, true
		}
	}
	return store.InvalidKey{}, false
}

// metricValue returns the value of a gauge or counter in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	return runtest.Metric(t, reg, name, labels)
}

func putRaw(t *testing.T, client *consulapi.Client, key string, value []byte) uint64 {
	t.Helper()
	if _, err := client.KV().Put(&consulapi.KVPair{Key: key, Value: value}, nil); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	pair, _, err := client.KV().Get(key, nil)
	if err != nil || pair == nil {
		t.Fatalf("get %s: %v, %v", key, pair, err)
	}
	return pair.ModifyIndex
}

func encode(t *testing.T, p *policyv1.ServicePolicy) []byte {
	t.Helper()
	b, err := store.Encode(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badRetries fails validation: a route retrying more than 4 times.
func badRetries(service string) *policyv1.ServicePolicy {
	p := testPolicy(service, "r")
	p.Routes[0].Settings = &policyv1.RouteSettings{Retry: &policyv1.RetryPolicy{
		RetryOn: []string{"UNAVAILABLE"}, NumRetries: 9,
	}}
	return p
}

func TestWatcher(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	w, err := store.NewWatcher(store.WatcherConfig{
		Client:     client,
		Registerer: reg,
		MinDelay:   10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.Status(); st.Synced {
		t.Fatalf("status before Run: %+v, want not synced", st)
	}
	startWatcher(t, w)
	const prefix = store.DefaultPrefix

	// The first snapshot comes after the first complete read, even when
	// there is no policy.
	first := waitSnapshot(t, w, "the first read", func(*store.Snapshot) bool { return true })
	if len(first.Policies) != 0 {
		t.Fatalf("first snapshot = %v, want no policies", first.Policies)
	}
	if st := w.Status(); !st.Synced || !st.Reachable || st.Index == 0 {
		t.Errorf("status after the first read: %+v", st)
	}

	// A key written directly in Consul is picked up, as is one written
	// through the store.
	echoV1 := testPolicy("echo", "v1")
	echoRev1 := putRaw(t, client, prefix+"echo", encode(t, echoV1))
	s := newStore(t, client, "")
	billingRev, err := s.Put(ctx, testPolicy("billing"), nil)
	if err != nil {
		t.Fatal(err)
	}
	snap := waitSnapshot(t, w, "echo and billing", func(s *store.Snapshot) bool {
		return s.Revisions["echo"] == echoRev1 && s.Revisions["billing"] == billingRev
	})
	if !proto.Equal(snap.Policies["echo"], echoV1) {
		t.Errorf("echo = %v, want %v", snap.Policies["echo"], echoV1)
	}

	// Invalid values: each is reported and ignored, and echo keeps its
	// last good policy.
	tests := []struct {
		name   string
		key    string
		value  []byte
		kind   string
		reason string
		kept   uint64
	}{
		{name: "not json", key: prefix + "echo", value: []byte(`{"service": "echo", `), kind: "decode", reason: "not a valid policy", kept: echoRev1},
		{name: "unknown field", key: prefix + "echo", value: []byte(`{"service": "echo", "retries": 3}`), kind: "decode", reason: "retries", kept: echoRev1},
		{name: "fails validation", key: prefix + "echo", value: encode(t, badRetries("echo")), kind: "validation", reason: "num_retries", kept: echoRev1},
		{name: "key names another service", key: prefix + "echo", value: encode(t, testPolicy("billing")), kind: "key", reason: `policy is for service "billing"`, kept: echoRev1},
		{name: "new service never valid", key: prefix + "auth", value: encode(t, badRetries("auth")), kind: "validation", reason: "num_retries"},
		{name: "nested key", key: prefix + "team/echo", value: encode(t, testPolicy("echo")), kind: "key", reason: "nested key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errorsBefore := metricValue(t, reg, "trellis_policy_errors_total", map[string]string{"kind": tt.kind})
			rev := putRaw(t, client, tt.key, tt.value)
			st := waitStatus(t, w, tt.key+" invalid at revision "+strconv.FormatUint(rev, 10), func(st store.WatchStatus) bool {
				inv, ok := invalidKey(st, tt.key)
				return ok && inv.Revision == rev
			})
			inv, _ := invalidKey(st, tt.key)
			if !strings.Contains(inv.Reason, tt.reason) {
				t.Errorf("reason %q does not mention %q", inv.Reason, tt.reason)
			}
			if inv.KeptRevision != tt.kept {
				t.Errorf("kept revision %d, want %d", inv.KeptRevision, tt.kept)
			}
			if got := metricValue(t, reg, "trellis_policy_errors_total", map[string]string{"kind": tt.kind}); got != errorsBefore+1 {
				t.Errorf("trellis_policy_errors_total{kind=%q} = %v, want %v", tt.kind, got, errorsBefore+1)
			}
			if got := metricValue(t, reg, "trellis_policy_invalid", nil); got != float64(len(st.Invalid)) {
				t.Errorf("trellis_policy_invalid = %v, want %d", got, len(st.Invalid))
			}
			latest := w.Latest()
			if latest.Revisions["echo"] != echoRev1 || !proto.Equal(latest.Policies["echo"], echoV1) {
				t.Errorf("echo is %v @%d, want the last good policy @%d", latest.Policies["echo"], latest.Revisions["echo"], echoRev1)
			}
			if _, ok := latest.Policies["auth"]; ok {
				t.Errorf("auth has a policy although it was never valid")
			}
			if st.Policies != len(latest.Policies) {
				t.Errorf("status counts %d policies, snapshot has %d", st.Policies, len(latest.Policies))
			}
		})
	}
	// Only two keys are invalid now: echo (its last value) and auth, plus
	// the nested key.
	if st := w.Status(); len(st.Invalid) != 3 {
		t.Errorf("invalid keys = %+v, want echo, auth and team/echo", st.Invalid)
	}

	// Fixing the value puts it in effect and clears the report.
	echoV2 := testPolicy("echo", "v2")
	echoRev2 := putRaw(t, client, prefix+"echo", encode(t, echoV2))
	snap = waitSnapshot(t, w, "echo v2", func(s *store.Snapshot) bool { return s.Revisions["echo"] == echoRev2 })
	if !proto.Equal(snap.Policies["echo"], echoV2) {
		t.Errorf("echo = %v, want %v", snap.Policies["echo"], echoV2)
	}
	if _, ok := invalidKey(w.Status(), prefix+"echo"); ok {
		t.Errorf("echo still reported invalid after it was fixed: %+v", w.Status().Invalid)
	}

	// Keys deleted directly in Consul are picked up; deleting an invalid
	// key clears its report.
	for _, key := range []string{prefix + "echo", prefix + "auth", prefix + "team/echo"} {
		if _, err := client.KV().Delete(key, nil); err != nil {
			t.Fatal(err)
		}
	}
	snap = waitSnapshot(t, w, "echo deleted", func(s *store.Snapshot) bool {
		_, ok := s.Policies["echo"]
		return !ok
	})
	if snap.Revisions["billing"] != billingRev || len(snap.Policies) != 1 {
		t.Errorf("after deleting echo: %v, want billing @%d only", snap.Revisions, billingRev)
	}
	waitStatus(t, w, "no invalid key", func(st store.WatchStatus) bool { return len(st.Invalid) == 0 })
	if got := metricValue(t, reg, "trellis_policy_invalid", nil); got != 0 {
		t.Errorf("trellis_policy_invalid = %v after the invalid keys were deleted, want 0", got)
	}
	if got := metricValue(t, reg, "trellis_policy_policies", nil); got != 1 {
		t.Errorf("trellis_policy_policies = %v, want 1", got)
	}
}

// TestWatcherInvalidAtStart checks that a replica starting while a key is
// invalid serves no policy for it, and reports it.
func TestWatcherInvalidAtStart(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	putRaw(t, client, "p/echo", encode(t, badRetries("echo")))
	goodRev := putRaw(t, client, "p/billing", encode(t, testPolicy("billing")))

	w, err := store.NewWatcher(store.WatcherConfig{Client: client, Prefix: "p", MinDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)
	snap := waitSnapshot(t, w, "the first read", func(*store.Snapshot) bool { return true })
	if len(snap.Policies) != 1 || snap.Revisions["billing"] != goodRev {
		t.Errorf("first snapshot = %v, want billing @%d only", snap.Revisions, goodRev)
	}
	st := w.Status()
	if inv, ok := invalidKey(st, "p/echo"); !ok || inv.KeptRevision != 0 {
		t.Errorf("status invalid = %+v, want p/echo with nothing kept", st.Invalid)
	}
}

// fakeConsul answers KV list requests from a script, to produce what a real
// agent does not on demand: failed queries and an index going backwards.
type fakeConsul struct {
	mu      sync.Mutex
	indexes []string // the index of every request, in order
	script  []fakeAnswer
}

type fakeAnswer struct {
	status int
	index  uint64
	pairs  []*consulapi.KVPair
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.indexes = append(f.indexes, r.URL.Query().Get("index"))
	n := len(f.indexes)
	var a *fakeAnswer
	if n <= len(f.script) {
		a = &f.script[n-1]
	}
	f.mu.Unlock()
	if a == nil {
		// Script done: block like a quiet blocking query.
		<-r.Context().Done()
		return
	}
	if a.status != 0 {
		http.Error(w, "injected failure", a.status)
		return
	}
	type kv struct {
		Key                      string
		Value                    string
		CreateIndex, ModifyIndex uint64
	}
	out := []kv{}
	for _, p := range a.pairs {
		out = append(out, kv{Key: p.Key, Value: base64.StdEncoding.EncodeToString(p.Value), CreateIndex: p.ModifyIndex, ModifyIndex: p.ModifyIndex})
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(a.index, 10))
	w.Header().Set("Content-Type", "application/json")
	if len(out) == 0 {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if err := json.NewEncoder(w).Encode(out); err != nil {
		panic(err)
	}
}

func (f *fakeConsul) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.indexes...)
}

func TestWatcherIndexHandling(t *testing.T) {
	pair := func(service string, rev uint64) *consulapi.KVPair {
		return &consulapi.KVPair{Key: "trellis/policies/" + service, Value: encode(t, testPolicy(service)), ModifyIndex: rev}
	}
	fake := &fakeConsul{script: []fakeAnswer{
		{status: http.StatusInternalServerError},
		{status: http.StatusInternalServerError},
		{index: 100, pairs: []*consulapi.KVPair{pair("a", 90)}},
		// Same index: nothing changed, whatever the body says.
		{index: 100, pairs: []*consulapi.KVPair{pair("a", 90), pair("ignored", 100)}},
		// The index went backwards: not applied; read again from 0.
		{index: 50, pairs: []*consulapi.KVPair{pair("ignored", 50)}},
		{index: 60, pairs: []*consulapi.KVPair{pair("b", 60)}},
		// A new index with the same policies: no new snapshot.
		{index: 70, pairs: []*consulapi.KVPair{pair("b", 60)}},
	}}
	srv := httptest.NewServer(fake)
	// Registered before startWatcher: cleanups run last in, first out, so
	// the watcher stops before the server closes.
	t.Cleanup(srv.Close)
	client, err := consulapi.NewClient(&consulapi.Config{Address: strings.TrimPrefix(srv.URL, "http://"), Transport: &http.Transport{DisableKeepAlives: true}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w, err := store.NewWatcher(store.WatcherConfig{Client: client, Registerer: reg, MinDelay: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)

	snap := waitSnapshot(t, w, "a", func(s *store.Snapshot) bool { return len(s.Policies) > 0 })
	if fmt.Sprint(snap.Revisions) != "map[a:90]" || snap.Index != 100 {
		t.Fatalf("first snapshot = %v at index %d, want map[a:90] at 100", snap.Revisions, snap.Index)
	}
	if got := metricValue(t, reg, "trellis_policy_errors_total", map[string]string{"kind": "consul"}); got != 2 {
		t.Errorf("trellis_policy_errors_total{kind=consul} = %v, want 2", got)
	}
	snap = waitSnapshot(t, w, "b", func(s *store.Snapshot) bool { return s.Revisions["b"] != 0 })
	if fmt.Sprint(snap.Revisions) != "map[b:60]" || snap.Index != 60 {
		t.Fatalf("second snapshot = %v at index %d, want map[b:60] at 60", snap.Revisions, snap.Index)
	}
	consultest.WaitFor(t, testTimeout, func() error {
		if n := len(fake.requests()); n < 8 {
			return fmt.Errorf("%d requests so far", n)
		}
		return nil
	})
	want := []string{"", "", "", "100", "100", "", "60", "70"}
	if got := fake.requests(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("query indexes = %q, want %q", got, want)
	}
	select {
	case s := <-w.Snapshots():
		t.Errorf("unexpected snapshot %v at index %d", s.Revisions, s.Index)
	default:
	}
	if st := w.Status(); !st.Reachable || st.LastError != "" || st.Index != 70 {
		t.Errorf("status = %+v, want reachable at index 70", st)
	}
	if got := metricValue(t, reg, "trellis_policy_snapshots_total", nil); got != 2 {
		t.Errorf("trellis_policy_snapshots_total = %v, want 2", got)
	}
}

func TestWatcherRunTwice(t *testing.T) {
	client, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := store.NewWatcher(store.WatcherConfig{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := w.Run(ctx); err == nil {
		t.Error("second Run succeeded, want an error")
	}
}

// TestWatcherConsulUnanswering checks that a Consul that stops answering
// (paused, connections open) is noticed through the query deadline, that
// the last policies stay published, and that the watcher recovers.
func TestWatcherConsulUnanswering(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	rev := putRaw(t, client, "trellis/policies/echo", encode(t, testPolicy("echo")))
	w, err := store.NewWatcher(store.WatcherConfig{
		Client:     client,
		WaitTime:   time.Second,
		MinDelay:   10 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)
	waitSnapshot(t, w, "echo", func(s *store.Snapshot) bool { return s.Revisions["echo"] == rev })

	agent.Pause(t)
	st := waitStatus(t, w, "Consul unreachable", func(st store.WatchStatus) bool { return !st.Reachable })
	if st.LastError == "" || !st.Synced {
		t.Errorf("status while Consul is paused = %+v, want synced with an error", st)
	}
	if latest := w.Latest(); latest.Revisions["echo"] != rev {
		t.Errorf("snapshot while Consul is paused = %v, want the last one (echo @%d)", latest.Revisions, rev)
	}
	agent.Resume(t)
	waitStatus(t, w, "Consul reachable", func(st store.WatchStatus) bool { return st.Reachable && st.LastError == "" })
	rev2 := putRaw(t, client, "trellis/policies/echo", encode(t, testPolicy("echo", "after")))
	waitSnapshot(t, w, "echo after the pause", func(s *store.Snapshot) bool { return s.Revisions["echo"] == rev2 })
}

// TestWatcherCrossServiceValidation checks that a policy is validated
// against the policies in effect for the services it routes to.
func TestWatcherCrossServiceValidation(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	const prefix = store.DefaultPrefix
	greeter := func(subsets ...string) *policyv1.ServicePolicy {
		p := testPolicy("greeter")
		for _, s := range subsets {
			p.Subsets = append(p.Subsets, &policyv1.Subset{Name: s, Tags: []string{s}})
		}
		return p
	}
	echo := testPolicy("echo")
	echo.Routes = []*policyv1.Route{{Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: "greeter", Subset: "blue"}}}}

	greeterRev := putRaw(t, client, prefix+"greeter", encode(t, greeter("blue")))
	echoRev := putRaw(t, client, prefix+"echo", encode(t, echo))
	w, err := store.NewWatcher(store.WatcherConfig{Client: client, MinDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)
	waitSnapshot(t, w, "echo and greeter", func(s *store.Snapshot) bool {
		return s.Revisions["echo"] == echoRev && s.Revisions["greeter"] == greeterRev
	})

	// greeter's new value is invalid and drops blue: greeter keeps its
	// last good policy, so echo's route to blue stays valid.
	bad := badRetries("greeter")
	badRev := putRaw(t, client, prefix+"greeter", encode(t, bad))
	st := waitStatus(t, w, "greeter invalid", func(st store.WatchStatus) bool {
		inv, ok := invalidKey(st, prefix+"greeter")
		return ok && inv.Revision == badRev
	})
	if len(st.Invalid) != 1 {
		t.Errorf("invalid keys = %+v, want greeter only", st.Invalid)
	}

	// A valid greeter without blue: echo's route now names an undefined
	// subset, and echo keeps its last good policy.
	noBlueRev := putRaw(t, client, prefix+"greeter", encode(t, greeter("green")))
	snap := waitSnapshot(t, w, "greeter without blue", func(s *store.Snapshot) bool { return s.Revisions["greeter"] == noBlueRev })
	if snap.Revisions["echo"] != echoRev {
		t.Errorf("echo at revision %d, want its last good %d", snap.Revisions["echo"], echoRev)
	}
	inv, ok := invalidKey(w.Status(), prefix+"echo")
	if !ok || !strings.Contains(inv.Reason, `"blue"`) || inv.KeptRevision != echoRev {
		t.Errorf("echo report = %+v (found %t), want it invalid for subset blue, revision %d kept", inv, ok, echoRev)
	}
}
