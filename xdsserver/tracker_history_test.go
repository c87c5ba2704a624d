package xdsserver

import (
	"context"
	"fmt"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// TestNACKHistoryBounded drives the tracker through more NACKs than it
// keeps: the newest MaxNACKHistory remain, oldest first.
func TestNACKHistoryBounded(t *testing.T) {
	tr := openTracker(t, 1)
	ctx := context.Background()
	names := []string{"svc"}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resource.ClusterType, ResourceNames: names}
	if err := tr.OnStreamRequest(1, req); err != nil {
		t.Fatal(err)
	}
	const n = MaxNACKHistory + 5
	for i := range n {
		v := fmt.Sprint(i)
		tr.OnStreamResponse(ctx, 1, req, &discoveryv3.DiscoveryResponse{TypeUrl: resource.ClusterType, VersionInfo: v, Nonce: v})
		if err := tr.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: names, ResponseNonce: v,
			ErrorDetail: &status.Status{Message: "bad " + v}}); err != nil {
			t.Fatal(err)
		}
	}
	ts := tr.snapshot()[0].Types[0]
	if ts.NACKs != n || len(ts.NACKHistory) != MaxNACKHistory {
		t.Fatalf("NACKs %d, history %d, want %d and %d", ts.NACKs, len(ts.NACKHistory), n, MaxNACKHistory)
	}
	for i, h := range ts.NACKHistory {
		if want := fmt.Sprint(n - MaxNACKHistory + i); h.Version != want || h.Error != "bad "+want {
			t.Fatalf("history[%d] = %+v, want version %s", i, h, want)
		}
	}
}

// BenchmarkSnapshot10k is the copy of the status of 10,000 streams of four
// types each that every status read starts from.
func BenchmarkSnapshot10k(b *testing.B) {
	ids := make([]int64, 10_000)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	tr := openTracker(b, ids...)
	ctx := context.Background()
	types := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}
	for _, id := range ids {
		for _, typeURL := range types {
			req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprint("n", id)}, TypeUrl: typeURL, ResourceNames: []string{"svc"}}
			if err := tr.OnStreamRequest(id, req); err != nil {
				b.Fatal(err)
			}
			tr.OnStreamResponse(ctx, id, req, &discoveryv3.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: "1", Nonce: "1"})
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if n := len(tr.snapshot()); n != 10_000 {
			b.Fatalf("%d streams", n)
		}
	}
}
