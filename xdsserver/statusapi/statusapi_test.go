package statusapi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver"
)

// versions is a fixed ContentVersioner: typeURL -> name -> version.
type versions map[string]map[string]string

func (v versions) ContentVersions(_, typeURL string, names []string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		if ver, ok := v[typeURL][n]; ok {
			out[n] = ver
		}
	}
	return out
}

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func stream(id int64, node string, types ...xdsserver.TypeStatus) xdsserver.StreamStatus {
	return xdsserver.StreamStatus{ID: id, NodeID: node, OpenedAt: now.Add(-time.Hour), Types: types}
}

func acked(typeURL, name, content string) xdsserver.TypeStatus {
	return xdsserver.TypeStatus{TypeURL: typeURL, ResourceNames: []string{name}, SentVersion: "v1", SentNonce: "1",
		SentAt: now.Add(-time.Minute), AckedVersion: "v1", AckedAt: now.Add(-time.Minute), ACKs: 1,
		SentContent: map[string]string{name: content}}
}

func newServer(t *testing.T, streams []xdsserver.StreamStatus, v xdsserver.ContentVersioner) *Server {
	t.Helper()
	s, err := New(Config{Streams: func() []xdsserver.StreamStatus { return streams }, Versions: v, Replica: "r1", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStates(t *testing.T) {
	current := versions{resource.EndpointType: {"echo": "c2", "web": "w1"}, resource.ListenerType: {"echo": "l1"}}
	pending := acked(resource.EndpointType, "echo", "c2")
	pending.SentVersion, pending.Pending, pending.SentAt = "v2", true, now.Add(-30*time.Second)
	nacked := acked(resource.ListenerType, "echo", "l1")
	nacked.SentVersion, nacked.NACKs, nacked.LastNACKVersion, nacked.LastNACKError = "v2", 1, "v2", "bad listener"
	nacked.NACKHistory = []xdsserver.NACK{{Version: "v2", Error: "bad listener", At: now}}
	gone := acked(resource.EndpointType, "gone", "g1")
	for _, tc := range []struct {
		name   string
		ts     xdsserver.TypeStatus
		stale  time.Duration
		want   statusv1.SyncState
		diffs  int
		reason string
	}{
		{"acked and current", acked(resource.EndpointType, "echo", "c2"), time.Minute, statusv1.SyncState_SYNC_STATE_SYNCED, 0, ""},
		{"acked but changed since", acked(resource.EndpointType, "echo", "c1"), time.Minute, statusv1.SyncState_SYNC_STATE_STALE, 1, "1 of 1 resources differ"},
		{"acked but no longer served", gone, time.Minute, statusv1.SyncState_SYNC_STATE_STALE, 1, "1 of 1 resources differ"},
		{"pending within the threshold", pending, time.Minute, statusv1.SyncState_SYNC_STATE_SYNCED, 0, ""},
		{"pending past the threshold", pending, 10 * time.Second, statusv1.SyncState_SYNC_STATE_STALE, 0, "neither ACKed nor NACKed"},
		{"nacked", nacked, time.Minute, statusv1.SyncState_SYNC_STATE_NACKED, 0, "bad listener"},
		{"nothing sent", xdsserver.TypeStatus{TypeURL: resource.ClusterType, ResourceNames: []string{"x"}}, time.Minute, statusv1.SyncState_SYNC_STATE_SYNCED, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, []xdsserver.StreamStatus{stream(1, "n1", tc.ts)}, current)
			resp, err := s.GetClient(context.Background(), &statusv1.GetClientRequest{Client: "n1", StaleAfter: durationpb.New(tc.stale)})
			if err != nil {
				t.Fatal(err)
			}
			c := resp.GetClients()[0]
			ty := c.GetTypes()[0]
			if ty.GetState() != tc.want || c.GetState() != tc.want {
				t.Fatalf("state %s, client %s, want %s (reason %q)", ty.GetState(), c.GetState(), tc.want, ty.GetReason())
			}
			if len(ty.GetOutOfDate()) != tc.diffs {
				t.Fatalf("out of date %v, want %d", ty.GetOutOfDate(), tc.diffs)
			}
			if tc.reason == "" && ty.GetReason() != "" || tc.reason != "" && !strings.Contains(ty.GetReason(), tc.reason) {
				t.Fatalf("reason %q, want %q", ty.GetReason(), tc.reason)
			}
			if c.GetReplica() != "r1" || resp.GetReplica() != "r1" {
				t.Fatalf("replica %q", c.GetReplica())
			}
		})
	}
}

func TestWorstTypeDecidesTheClient(t *testing.T) {
	current := versions{resource.EndpointType: {"echo": "c2"}, resource.ListenerType: {"echo": "l1"}}
	nacked := acked(resource.ListenerType, "echo", "l1")
	nacked.NACKs, nacked.LastNACKVersion = 1, "v1"
	nacked.AckedVersion = "v0"
	s := newServer(t, []xdsserver.StreamStatus{stream(1, "n1", acked(resource.EndpointType, "echo", "c1"), nacked)}, current)
	resp, err := s.ListClients(context.Background(), &statusv1.ListClientsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetClients()[0].GetState(); got != statusv1.SyncState_SYNC_STATE_NACKED {
		t.Fatalf("client state %s, want NACKED (one type STALE, one NACKED)", got)
	}
	if ty := resp.GetClients()[0].GetTypes()[0]; len(ty.GetResourceNames()) != 0 || len(ty.GetOutOfDate()) != 0 || ty.GetResourceCount() != 1 {
		t.Fatalf("the list carries details: %v", ty)
	}
}

func TestPagingFilteringAndSummary(t *testing.T) {
	current := versions{resource.EndpointType: {"echo": "e1", "billing/canary": "b1"}}
	var streams []xdsserver.StreamStatus
	for i := range int64(25) {
		name, content := "echo", "e1"
		if i%5 == 0 {
			name, content = "billing/canary", "old" // STALE
		}
		streams = append(streams, stream(i+1, fmt.Sprintf("n%d", i+1), acked(resource.EndpointType, name, content)))
	}
	s := newServer(t, streams, current)
	var got []int64
	req := &statusv1.ListClientsRequest{PageSize: 7}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		resp, err := s.ListClients(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if sum := resp.GetSummary(); sum.GetClients() != 25 || sum.GetStale() != 5 || sum.GetSynced() != 20 {
			t.Fatalf("summary %v", sum)
		}
		for _, c := range resp.GetClients() {
			got = append(got, c.GetStreamId())
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(got) != 25 || got[0] != 1 || got[24] != 25 {
		t.Fatalf("pages returned %v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("pages out of order: %v", got)
		}
	}
	resp, err := s.ListClients(context.Background(), &statusv1.ListClientsRequest{Service: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSummary().GetClients() != 5 || len(resp.GetClients()) != 5 {
		t.Fatalf("--service billing: %v", resp.GetSummary())
	}
	resp, err = s.ListClients(context.Background(), &statusv1.ListClientsRequest{Service: "echo", State: statusv1.SyncState_SYNC_STATE_STALE})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSummary().GetClients() != 0 {
		t.Fatalf("stale clients of echo: %v", resp.GetSummary())
	}
}

func TestInvalidRequests(t *testing.T) {
	s := newServer(t, []xdsserver.StreamStatus{stream(1, "n1")}, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"page size", func() error { _, err := s.ListClients(ctx, &statusv1.ListClientsRequest{PageSize: 5000}); return err }, codes.InvalidArgument, "page_size"},
		{"page token", func() error { _, err := s.ListClients(ctx, &statusv1.ListClientsRequest{PageToken: "x"}); return err }, codes.InvalidArgument, "page_token"},
		{"stale after", func() error {
			_, err := s.ListClients(ctx, &statusv1.ListClientsRequest{StaleAfter: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument, "stale_after"},
		{"state", func() error { _, err := s.ListClients(ctx, &statusv1.ListClientsRequest{State: 42}); return err }, codes.InvalidArgument, "state"},
		{"empty client", func() error { _, err := s.GetClient(ctx, &statusv1.GetClientRequest{}); return err }, codes.InvalidArgument, "client"},
		{"unknown client", func() error { _, err := s.GetClient(ctx, &statusv1.GetClientRequest{Client: "nope"}); return err }, codes.NotFound, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Fatalf("error %v, want %s naming %q", err, tc.code, tc.msg)
			}
		})
	}
	// A stream id finds the stream too.
	if resp, err := s.GetClient(ctx, &statusv1.GetClientRequest{Client: "1"}); err != nil || resp.GetClients()[0].GetNodeId() != "n1" {
		t.Fatalf("GetClient by stream id: %v %v", resp, err)
	}
}

// BenchmarkListClients10k is one page of the list, with the summary of
// every stream, at 10,000 streams of two types each.
func BenchmarkListClients10k(b *testing.B) {
	current := versions{resource.EndpointType: {"echo": "e1"}}
	streams := make([]xdsserver.StreamStatus, 10_000)
	for i := range streams {
		streams[i] = stream(int64(i+1), fmt.Sprintf("n%d", i+1), acked(resource.EndpointType, "echo", "e1"), acked(resource.ListenerType, "echo", "l1"))
	}
	s, err := New(Config{Streams: func() []xdsserver.StreamStatus { return streams }, Versions: current})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.ListClients(context.Background(), &statusv1.ListClientsRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
