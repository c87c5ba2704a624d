package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
)

// rawADS is an ADS client written by hand, to be a client that misbehaves:
// answer decides, for each response, whether it is answered (ACKed, or
// NACKed with the returned text).
type rawADS struct {
	t      testing.TB
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	answer func(resp *discoveryv3.DiscoveryResponse) (reply bool, nack string)

	mu       sync.Mutex
	received map[string]int
	acked    map[string]string
	names    map[string][]string
}

// startRawADS opens an ADS stream to addr as nodeID and subscribes to names
// per type URL.
func startRawADS(t testing.TB, addr string, node *corev3.Node, names map[string][]string, answer func(*discoveryv3.DiscoveryResponse) (bool, string)) *rawADS {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawADS{t: t, stream: stream, node: node, answer: answer, received: map[string]int{}, acked: map[string]string{}, names: names}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
		conn.Close()
	})
	for _, typeURL := range slices.Sorted(func(yield func(string) bool) {
		for k := range names {
			if !yield(k) {
				return
			}
		}
	}) {
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names[typeURL]}); err != nil {
			t.Fatalf("send %s request: %v", typeURL, err)
		}
	}
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.received[resp.GetTypeUrl()]++
			reply, nack := c.answer(resp)
			req := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: c.names[resp.GetTypeUrl()], ResponseNonce: resp.GetNonce()}
			if nack != "" {
				req.VersionInfo = c.acked[resp.GetTypeUrl()]
				req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
			} else {
				req.VersionInfo = resp.GetVersionInfo()
				c.acked[resp.GetTypeUrl()] = resp.GetVersionInfo()
			}
			c.mu.Unlock()
			if !reply {
				continue
			}
			if err := stream.Send(req); err != nil {
				return
			}
		}
	}()
	return c
}

// responses returns how many responses of typeURL the client received.
func (c *rawADS) responses(typeURL string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received[typeURL]
}

func (s *trellisServer) statusClient(t testing.TB) statusv1.StatusServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(s.adminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return statusv1.NewStatusServiceClient(conn)
}

// clientState returns the status of the single stream of nodeID, judged
// with staleAfter.
func clientState(t testing.TB, api statusv1.StatusServiceClient, nodeID string, staleAfter time.Duration) (*statusv1.ClientStatus, error) {
	t.Helper()
	resp, err := api.GetClient(authed(t), &statusv1.GetClientRequest{Client: nodeID, StaleAfter: durationpb.New(staleAfter)})
	if err != nil {
		return nil, err
	}
	if len(resp.GetClients()) != 1 {
		return nil, fmt.Errorf("%d streams for %s", len(resp.GetClients()), nodeID)
	}
	return resp.GetClients()[0], nil
}

func typeOf(c *statusv1.ClientStatus, typeURL string) *statusv1.TypeStatus {
	for _, ty := range c.GetTypes() {
		if ty.GetTypeUrl() == typeURL {
			return ty
		}
	}
	return nil
}

// runStatus runs `trellis status` against s and returns its output.
func runStatus(t testing.TB, s *trellisServer, args ...string) string {
	t.Helper()
	cmd := exec.Command(trellisBin, append([]string{"status", "--server", s.adminAddr, "--token", apiToken, "--timeout", "10s"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("trellis status %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestStatusSyncedNackedStale follows clients through the status API and
// `trellis status`: a real grpc-go xDS client is SYNCED, a client that
// rejects its listener is NACKED with its text, and a client that stops
// answering is STALE, first by time and then because what it holds differs
// from what the server serves.
func TestStatusSyncedNackedStale(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	startBackend(t, consul, "other", "other-1", backendOptions{})
	s := startTrellisWithAPI(t, consul)
	api := s.statusClient(t)

	// The status API is authenticated like the policy API.
	if _, err := api.ListClients(context.Background(), &statusv1.ListClientsRequest{}); statusCode(err) != codes.Unauthenticated {
		t.Fatalf("ListClients without a token: %v, want Unauthenticated", err)
	}

	conn := dialXDS(t, s.bootstrapFor(t, "status-good"), "xds:///echo")
	if r := callEcho(t, conn, 5); r.ok() != 5 {
		t.Fatalf("calls through xDS: %v", r.failures)
	}
	xdsTypes := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}
	waitFor(t, 15*time.Second, "the grpc-go client to be SYNCED on every type", func() error {
		c, err := clientState(t, api, "status-good", time.Minute)
		if err != nil {
			return err
		}
		for _, typeURL := range xdsTypes {
			ty := typeOf(c, typeURL)
			if ty == nil {
				return fmt.Errorf("no %s", typeURL)
			}
			if ty.GetState() != statusv1.SyncState_SYNC_STATE_SYNCED {
				return fmt.Errorf("%s: %s (%s)", typeURL, ty.GetState(), ty.GetReason())
			}
		}
		if c.GetState() != statusv1.SyncState_SYNC_STATE_SYNCED {
			return fmt.Errorf("client state %s", c.GetState())
		}
		return nil
	})
	good, err := clientState(t, api, "status-good", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(good.GetUserAgent(), "gRPC Go ") || good.GetProfile() == "" || good.GetReplica() != s.xdsAddr || good.GetConnectedAt() == nil {
		t.Fatalf("client identity: user agent %q, profile %q, replica %q (want %s), connected %v", good.GetUserAgent(), good.GetProfile(), good.GetReplica(), s.xdsAddr, good.GetConnectedAt())
	}
	if lds := typeOf(good, resource.ListenerType); !slices.Equal(lds.GetResourceNames(), []string{"echo"}) || lds.GetAckedVersion() != lds.GetSentVersion() {
		t.Fatalf("listener status: %v", lds)
	}

	// A client that rejects every listener it is sent.
	const nackText = "listener echo: rejected by the status test"
	nacker := startRawADS(t, s.xdsAddr,
		&corev3.Node{Id: "status-nacker", UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"}},
		map[string][]string{resource.ListenerType: {"echo"}},
		func(resp *discoveryv3.DiscoveryResponse) (bool, string) {
			return true, nackText
		})
	waitFor(t, 15*time.Second, "the rejecting client to be NACKED", func() error {
		c, err := clientState(t, api, "status-nacker", time.Minute)
		if err != nil {
			return err
		}
		lds := typeOf(c, resource.ListenerType)
		if c.GetState() != statusv1.SyncState_SYNC_STATE_NACKED || lds.GetState() != statusv1.SyncState_SYNC_STATE_NACKED {
			return fmt.Errorf("state %s, listener %s", c.GetState(), lds.GetState())
		}
		if len(lds.GetNackHistory()) == 0 || lds.GetNackHistory()[0].GetError() != nackText || !strings.Contains(lds.GetReason(), nackText) {
			return fmt.Errorf("NACK history %v, reason %q", lds.GetNackHistory(), lds.GetReason())
		}
		return nil
	})
	if nacker.responses(resource.ListenerType) == 0 {
		t.Fatal("the rejecting client received no listener")
	}
	list, err := api.ListClients(authed(t), &statusv1.ListClientsRequest{StaleAfter: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if sum := list.GetSummary(); sum.GetClients() != 2 || sum.GetSynced() != 1 || sum.GetNacked() != 1 {
		t.Fatalf("summary %v, want 2 clients, 1 synced, 1 nacked:\n%v", sum, list)
	}
	nacked, err := api.ListClients(authed(t), &statusv1.ListClientsRequest{State: statusv1.SyncState_SYNC_STATE_NACKED})
	if err != nil {
		t.Fatal(err)
	}
	if len(nacked.GetClients()) != 1 || nacked.GetClients()[0].GetNodeId() != "status-nacker" {
		t.Fatalf("NACKED clients: %v", nacked.GetClients())
	}
	// One page at a time.
	page, err := api.ListClients(authed(t), &statusv1.ListClientsRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.GetClients()) != 1 || page.GetNextPageToken() == "" || page.GetSummary().GetClients() != 2 {
		t.Fatalf("first page of 1: %v", page)
	}
	next, err := api.ListClients(authed(t), &statusv1.ListClientsRequest{PageSize: 1, PageToken: page.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	if len(next.GetClients()) != 1 || next.GetNextPageToken() != "" || next.GetClients()[0].GetStreamId() == page.GetClients()[0].GetStreamId() {
		t.Fatalf("second page of 1: %v", next)
	}

	// The command: the table, the JSON, --service, and one client's detail.
	table := runStatus(t, s)
	for _, want := range []string{"status-good", "status-nacker", "NACKED", "SYNCED", "2 clients: 1 synced, 0 stale, 1 nacked"} {
		if !strings.Contains(table, want) {
			t.Fatalf("trellis status lacks %q:\n%s", want, table)
		}
	}
	var asJSON struct {
		Clients []struct {
			NodeID string `json:"nodeId"`
			State  string `json:"state"`
		} `json:"clients"`
	}
	if out := runStatus(t, s, "-o", "json"); json.Unmarshal([]byte(out), &asJSON) != nil || len(asJSON.Clients) != 2 {
		t.Fatalf("trellis status -o json:\n%s", out)
	}
	if out := runStatus(t, s, "-o", "yaml", "--service", "other"); !strings.Contains(out, "clients: 0") {
		t.Fatalf("trellis status --service other (no client subscribes to it):\n%s", out)
	}
	if out := runStatus(t, s, "--service", "echo"); !strings.Contains(out, "status-good") {
		t.Fatalf("trellis status --service echo:\n%s", out)
	}
	if out := runStatus(t, s, "status-nacker"); !strings.Contains(out, nackText) || !strings.Contains(out, "NACK of ") {
		t.Fatalf("trellis status status-nacker lacks the NACK text:\n%s", out)
	}

	// A client that ACKs its endpoints until told to stop answering.
	var stopMu sync.Mutex
	stopped := false
	staller := startRawADS(t, s.xdsAddr,
		&corev3.Node{Id: "status-staller", UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"},
			Locality: &corev3.Locality{Region: "eu-west", Zone: "eu-west-1a"}},
		map[string][]string{resource.EndpointType: {"echo"}},
		func(*discoveryv3.DiscoveryResponse) (bool, string) {
			stopMu.Lock()
			defer stopMu.Unlock()
			return !stopped, ""
		})
	waitFor(t, 15*time.Second, "the stalling client to be SYNCED before it stalls", func() error {
		c, err := clientState(t, api, "status-staller", time.Minute)
		if err != nil {
			return err
		}
		if c.GetState() != statusv1.SyncState_SYNC_STATE_SYNCED || typeOf(c, resource.EndpointType).GetAcks() == 0 {
			return fmt.Errorf("state %s: %v", c.GetState(), c)
		}
		if l := c.GetLocality(); l.GetRegion() != "eu-west" || l.GetZone() != "eu-west-1a" {
			return fmt.Errorf("locality %v", l)
		}
		return nil
	})
	stopMu.Lock()
	stopped = true
	stopMu.Unlock()
	before := staller.responses(resource.EndpointType)
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	waitFor(t, 15*time.Second, "the stalling client to receive the new endpoints", func() error {
		if n := staller.responses(resource.EndpointType); n == before {
			return fmt.Errorf("still %d responses", n)
		}
		return nil
	})
	waitFor(t, 15*time.Second, "the unanswered endpoints to make the client STALE", func() error {
		c, err := clientState(t, api, "status-staller", time.Second)
		if err != nil {
			return err
		}
		eds := typeOf(c, resource.EndpointType)
		if c.GetState() != statusv1.SyncState_SYNC_STATE_STALE || !eds.GetPending() || !strings.Contains(eds.GetReason(), "neither ACKed nor NACKed") {
			return fmt.Errorf("state %s, endpoints %v", c.GetState(), eds)
		}
		return nil
	})
	// The server sends nothing more to a client that has not answered: the
	// next change leaves it holding endpoints that are no longer served.
	if err := consul.Client(t).Agent().ServiceDeregister("echo-2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the stalled client to hold endpoints that differ from what is served", func() error {
		c, err := clientState(t, api, "status-staller", time.Hour)
		if err != nil {
			return err
		}
		eds := typeOf(c, resource.EndpointType)
		if c.GetState() != statusv1.SyncState_SYNC_STATE_STALE || len(eds.GetOutOfDate()) != 1 || eds.GetOutOfDate()[0].GetName() != "echo" {
			return fmt.Errorf("state %s, endpoints %v", c.GetState(), eds)
		}
		d := eds.GetOutOfDate()[0]
		if d.GetSentContentVersion() == "" || d.GetCurrentContentVersion() == "" || d.GetSentContentVersion() == d.GetCurrentContentVersion() {
			return fmt.Errorf("diff %v", d)
		}
		return nil
	})
	if out := runStatus(t, s, "status-staller", "--stale-after", "1h"); !strings.Contains(out, "differs:   echo: sent content ") {
		t.Fatalf("trellis status status-staller does not show what differs:\n%s", out)
	}
	// The well-behaved client followed both changes.
	waitFor(t, 15*time.Second, "the grpc-go client to be SYNCED after the changes", func() error {
		c, err := clientState(t, api, "status-good", time.Minute)
		if err != nil {
			return err
		}
		if c.GetState() != statusv1.SyncState_SYNC_STATE_SYNCED {
			return fmt.Errorf("state %s: %v", c.GetState(), c)
		}
		return nil
	})
}
