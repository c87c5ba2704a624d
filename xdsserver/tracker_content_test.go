package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// countingVersions is a ContentVersioner over a map of name -> content
// version per profile, counting its lookups.
type countingVersions struct {
	mu      sync.Mutex
	content map[string]map[string]string // profile -> name -> version
	lookups int
}

func (v *countingVersions) ContentVersions(profile, _ string, names []string) map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lookups++
	out := make(map[string]string)
	for _, name := range names {
		if c, ok := v.content[profile][name]; ok {
			out[name] = c
		}
	}
	return out
}

func (v *countingVersions) set(profile, name, version string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.content[profile] == nil {
		v.content[profile] = map[string]string{}
	}
	v.content[profile][name] = version
}

func (v *countingVersions) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.lookups
}

// TestSentContentSharedBetweenStreams: every stream sent the same response
// (profile, type, names, cache version) records the content versions of
// one lookup, and a new cache version, other names or another profile get
// their own.
func TestSentContentSharedBetweenStreams(t *testing.T) {
	tr := openTracker(t)
	versions := &countingVersions{content: map[string]map[string]string{}}
	tr.versions = versions
	versions.set("grpc-go", "svc", "c1")
	ctx := context.Background()

	agents := map[int64]string{}
	for id := int64(1); id <= 100; id++ {
		agents[id] = "gRPC Go"
	}
	agents[101] = "gRPC Node Pure JS"
	for id, agent := range agents {
		if err := tr.OnStreamOpen(ctx, id, resource.AnyType); err != nil {
			t.Fatal(err)
		}
		req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprint("n", id), UserAgentName: agent}, TypeUrl: resource.EndpointType}
		if err := tr.OnStreamRequest(id, req); err != nil {
			t.Fatal(err)
		}
	}
	send := func(id int64, version string, names ...string) map[string]string {
		t.Helper()
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: names}
		tr.OnStreamResponse(ctx, id, req, &discoveryv3.DiscoveryResponse{TypeUrl: resource.EndpointType, VersionInfo: version, Nonce: version})
		for _, st := range tr.snapshot() {
			if st.ID != id {
				continue
			}
			for _, ts := range st.Types {
				if ts.TypeURL == resource.EndpointType {
					return ts.SentContent
				}
			}
		}
		t.Fatalf("stream %d: no EDS status", id)
		return nil
	}

	want := map[string]string{"svc": "c1", "gone": ""}
	for id := int64(1); id <= 100; id++ {
		if got := send(id, "v1", "gone", "svc"); !maps.Equal(got, want) {
			t.Fatalf("stream %d: SentContent = %v, want %v", id, got, want)
		}
	}
	if n := versions.count(); n != 1 {
		t.Errorf("100 streams sent one response: %d lookups, want 1", n)
	}

	versions.set("grpc-go", "svc", "c2")
	if got, want := send(1, "v2", "gone", "svc"), map[string]string{"svc": "c2", "gone": ""}; !maps.Equal(got, want) {
		t.Errorf("new cache version: SentContent = %v, want %v", got, want)
	}
	if got, want := send(2, "v2", "svc"), map[string]string{"svc": "c2"}; !maps.Equal(got, want) {
		t.Errorf("other names: SentContent = %v, want %v", got, want)
	}
	if got, want := send(101, "v2", "svc"), map[string]string{"svc": ""}; !maps.Equal(got, want) {
		t.Errorf("another profile: SentContent = %v, want %v", got, want)
	}
	if n := versions.count(); n != 4 {
		t.Errorf("%d lookups, want 4: one per distinct response", n)
	}

	for i := range maxSentContent + 10 {
		send(3, fmt.Sprint("w", i), "svc")
	}
	tr.mu.Lock()
	remembered := len(tr.sent)
	tr.mu.Unlock()
	if remembered > maxSentContent {
		t.Errorf("%d responses remembered, want at most %d", remembered, maxSentContent)
	}
}

// TestRequestKeepsSortedNames: the subscription recorded is sorted and
// free of duplicates however the client orders it, and an ACK naming the
// same keeps it.
func TestRequestKeepsSortedNames(t *testing.T) {
	tr := openTracker(t, 1)
	names := func() []string {
		for _, ts := range tr.snapshot()[0].Types {
			return ts.ResourceNames
		}
		return nil
	}
	for _, req := range []struct {
		names []string
		want  string
	}{
		{[]string{"b", "a", "b"}, "[a b]"},
		{[]string{"a", "b"}, "[a b]"},
		{[]string{"c"}, "[c]"},
		{nil, "[]"},
	} {
		if err := tr.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: req.names}); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(names()); got != req.want {
			t.Errorf("request %v: ResourceNames %s, want %s", req.names, got, req.want)
		}
	}
}

// openTracker returns a tracker without logs or exported metrics, with a
// stream open for each of ids.
func openTracker(tb testing.TB, ids ...int64) *tracker {
	tb.Helper()
	tr, err := newTracker(slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		if err := tr.OnStreamOpen(context.Background(), id, resource.AnyType); err != nil {
			tb.Fatal(err)
		}
	}
	return tr
}
