package integration

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// edsWatch follows, over a raw ADS stream, the load assignment of one
// cluster as a node with the given zone receives it, as a layout string:
// "region/zone@priority:endpoints" per locality, in order.
type edsWatch struct {
	mu     sync.Mutex
	layout string
}

func watchEDS(t *testing.T, s *trellisServer, nodeID, zone, cluster string) *edsWatch {
	t.Helper()
	w := &edsWatch{}
	node := &corev3.Node{Id: nodeID, UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"},
		Locality: &corev3.Locality{Zone: zone}}
	startRawADS(t, s.xdsAddr, node, map[string][]string{resource.EndpointType: {cluster}}, func(resp *discoveryv3.DiscoveryResponse) (bool, string) {
		for _, r := range resp.GetResources() {
			cla := &endpointv3.ClusterLoadAssignment{}
			if err := r.UnmarshalTo(cla); err != nil {
				return true, err.Error()
			}
			if cla.GetClusterName() != cluster {
				continue
			}
			var parts []string
			for _, l := range cla.GetEndpoints() {
				parts = append(parts, fmt.Sprintf("%s/%s@%d:%d", l.GetLocality().GetRegion(), l.GetLocality().GetZone(), l.GetPriority(), len(l.GetLbEndpoints())))
			}
			w.mu.Lock()
			w.layout = strings.Join(parts, " ")
			w.mu.Unlock()
		}
		return true, ""
	})
	return w
}

func (w *edsWatch) get() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.layout
}

// waitLayout waits until the watched assignment is want.
func (w *edsWatch) waitLayout(t *testing.T, timeout time.Duration, want string) time.Time {
	t.Helper()
	waitFor(t, timeout, "load assignment "+want, func() error {
		if got := w.get(); got != want {
			return fmt.Errorf("load assignment %q", got)
		}
		return nil
	})
	return time.Now()
}

// restart serves the backend again on its address, healthy, after
// b.server.Stop().
func (b *echoBackend) restart(t *testing.T) {
	t.Helper()
	var lis net.Listener
	waitFor(t, 5*time.Second, "listening again on "+b.addr, func() error {
		var err error
		lis, err = net.Listen("tcp", b.addr)
		return err
	})
	b.server, b.health = grpc.NewServer(), health.NewServer()
	echov1.RegisterEchoServer(b.server, b)
	healthpb.RegisterHealthServer(b.server, b.health)
	go b.server.Serve(lis)
	t.Cleanup(b.server.Stop)
}

// callsBy counts the calls of r answered by instances whose ID has prefix.
func callsBy(counts map[string]int, prefix string) int {
	n := 0
	for id, c := range counts {
		if strings.HasPrefix(id, prefix) {
			n += c
		}
	}
	return n
}

// TestDatacenterFailover: two Consul datacenters on loopback, WAN-joined;
// a policy fails echo over from dc1 to dc2. dc2's instances wait at EDS
// priority 1; when every dc1 instance dies, Consul's checks turn critical
// and dc2 becomes priority 0 within the check interval + 2 s, without a
// failed call (the retry policy covers calls cut by the instances
// stopping); when dc1's instances are back, calls return to them.
func TestDatacenterFailover(t *testing.T) {
	const checkInterval = time.Second
	dc1 := consultest.Start(t, consultest.Options{})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", NodeName: "node-2", JoinWAN: dc1})
	var local []*echoBackend
	for i := 1; i <= 2; i++ {
		b, _ := startBackend(t, dc1, "echo", fmt.Sprintf("dc1-echo-%d", i), backendOptions{grpcCheck: checkInterval})
		local = append(local, b)
	}
	for i := 1; i <= 2; i++ {
		startBackend(t, dc2, "echo", fmt.Sprintf("dc2-echo-%d", i), backendOptions{})
	}
	trellis := startTrellisWithAPI(t, dc1)
	eds := watchEDS(t, trellis, "eds-watch", "", "echo")
	eds.waitLayout(t, 15*time.Second, "dc1/@0:2")
	putPolicy(t, trellis.policyClient(t), `{"service": "echo", "failover": {"datacenters": ["dc2"]},
		"defaults": {"retry": {"retry_on": ["unavailable"], "num_retries": 4}}}`)
	// The catalog reads dc2 only now that a policy asks for it.
	eds.waitLayout(t, 15*time.Second, "dc1/@0:2 dc2/@1:2")

	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "dc1-echo-1", "dc1-echo-2")
	if r := callEcho(t, conn, 200); len(r.failures) > 0 || callsBy(r.byInstance, "dc2-") > 0 {
		t.Fatalf("with dc1 healthy: %v answered, failures %v; want every call in dc1", r.byInstance, firstErr(r.failures))
	}

	// Every dc1 instance dies.
	loop := startTraffic(t, conn, 5*time.Millisecond)
	for _, b := range local {
		b.server.Stop()
	}
	down := time.Now()
	switched := eds.waitLayout(t, checkInterval+5*time.Second, "dc2/@0:2")
	if d := switched.Sub(down); d > checkInterval+2*time.Second {
		t.Errorf("dc2 became priority 0 %s after dc1 went down, want within %s", d.Round(time.Millisecond), checkInterval+2*time.Second)
	}
	waitFor(t, 5*time.Second, "calls answered in dc2", func() error {
		counts, _ := loop.snapshot()
		if callsBy(counts, "dc2-") < 50 {
			return fmt.Errorf("answered by %v", counts)
		}
		return nil
	})
	counts, failures := loop.snapshot()
	if len(failures) > 0 {
		t.Errorf("%d calls failed during the failover, want 0 with retries: %v", len(failures), failures[0])
	}
	t.Logf("failover: dc2 at priority 0 after %s; calls so far %v", switched.Sub(down).Round(time.Millisecond), counts)

	// A client that starts now knows only dc2.
	fresh := dialXDS(t, trellis.bootstrapFor(t, "client-2"), "xds:///echo")
	if r := callEcho(t, fresh, 50); len(r.failures) > 0 || callsBy(r.byInstance, "dc2-") != 50 {
		t.Errorf("new client while dc1 is down: %v, failures %v; want every call in dc2", r.byInstance, firstErr(r.failures))
	}

	// dc1 recovers.
	loop.reset()
	for _, b := range local {
		b.restart(t)
	}
	up := time.Now()
	back := eds.waitLayout(t, checkInterval+5*time.Second, "dc1/@0:2 dc2/@1:2")
	if d := back.Sub(up); d > checkInterval+2*time.Second {
		t.Errorf("dc1 back at priority 0 %s after it recovered, want within %s", d.Round(time.Millisecond), checkInterval+2*time.Second)
	}
	var settled callResult
	waitFor(t, 10*time.Second, "every call back in dc1", func() error {
		settled = callEcho(t, conn, 100)
		if n := callsBy(settled.byInstance, "dc1-"); n != 100 {
			return fmt.Errorf("answered by %v, failures %v", settled.byInstance, firstErr(settled.failures))
		}
		return nil
	})
	loop.Stop()
	counts, failures = loop.snapshot()
	if len(failures) > 0 {
		t.Errorf("%d calls failed while dc1 came back, want 0: %v", len(failures), failures[0])
	}
	t.Logf("recovery: dc1 at priority 0 after %s; calls meanwhile %v", back.Sub(up).Round(time.Millisecond), counts)
	trellis.requireAllACKed(t)
}
