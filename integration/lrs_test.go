package integration

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// bootstrapForService is the bootstrap of a workload of service (the
// node's cluster, as `trellis bootstrap --cluster` writes it).
func (s *trellisServer) bootstrapForService(t testing.TB, nodeID, service string) []byte {
	t.Helper()
	out, err := bootstrap.Generate(bootstrap.Config{Servers: []string{s.xdsAddr}, NodeID: nodeID, Cluster: service})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// lrsRequests sums trellis_lrs_requests_total by source, destination and
// result over localities and endpoints.
func (s *trellisServer) lrsRequests(t testing.TB) map[string]float64 {
	t.Helper()
	code, body, err := s.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for _, m := range families["trellis_lrs_requests_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		out[labels["source"]+"->"+labels["destination"]+" "+labels["result"]] += m.GetCounter().GetValue()
	}
	return out
}

// failEvery makes a backend fail every n-th call with INTERNAL.
func failEvery(b *echoBackend, n int) {
	var mu sync.Mutex
	calls := 0
	b.setBehaviour(func(context.Context, string) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls%n == 0 {
			return status.Error(codes.Internal, "failing on purpose")
		}
		return nil
	})
}

// TestLoadReportCounts: real grpc-go xDS clients of two services make a
// known mix of calls (to a service, to a subset of it through a policy
// route, and to a service whose backend fails one call in four); the calls
// they report over LRS, as the server's metrics count them per source,
// destination and result, match what they made within 5 % (in practice,
// exactly).
func TestLoadReportCounts(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{tags: []string{"blue"}})
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	billing, _ := startBackend(t, consul, "billing", "billing-1", backendOptions{})
	s := startTrellisWithAPI(t, consul, "--load-reporting-interval", "1s")
	putPolicy(t, s.policyClient(t), `{"service": "echo", "subsets": [{"name": "blue", "tags": ["blue"]}], "routes": [
		{"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "destination": {"subset": "blue"}}]}`)

	webEcho := dialXDS(t, s.bootstrapForService(t, "web-1", "web"), "xds:///echo")
	webBilling := dialXDS(t, s.bootstrapForService(t, "web-2", "web"), "xds:///billing")
	apiEcho := dialXDS(t, s.bootstrapForService(t, "api-1", "api"), "xds:///echo")
	waitForInstances(t, webEcho, 30*time.Second, "echo-1", "echo-2")
	waitFor(t, 30*time.Second, "the canary route", func() error {
		if r := callEcho(t, webEcho, 5, "x-canary", "true"); r.byInstance["echo-1"] != 5 {
			return fmt.Errorf("canary calls answered by %v, want echo-1 only", r.byInstance)
		}
		return nil
	})
	waitForInstances(t, webBilling, 30*time.Second, "billing-1")
	waitForInstances(t, apiEcho, 30*time.Second, "echo-1", "echo-2")
	s.requireAllACKed(t)

	// What the clients have sent so far, and the mix.
	type sent struct{ ok, failed int }
	mix := map[string]*sent{}
	add := func(edge string, r callResult) {
		if mix[edge] == nil {
			mix[edge] = &sent{}
		}
		mix[edge].ok += r.ok()
		mix[edge].failed += len(r.failures)
	}
	settled := s.settledLoadReports(t)
	failEvery(billing, 4)
	add("web->echo", callEcho(t, webEcho, 300))
	add("web->echo", callEcho(t, webEcho, 100, "x-canary", "true"))
	add("web->billing", callEcho(t, webBilling, 200))
	add("api->echo", callEcho(t, apiEcho, 150))
	if got := mix["web->billing"]; got.failed != 50 || got.ok != 150 {
		t.Fatalf("billing calls: %d ok, %d failed, want 150 and 50", got.ok, got.failed)
	}
	if got := mix["web->echo"]; got.failed != 0 || got.ok != 400 {
		t.Fatalf("echo calls from web: %d ok, %d failed, want 400 and 0", got.ok, got.failed)
	}

	want := map[string]float64{}
	for edge, c := range mix {
		want[edge+" success"] = float64(c.ok)
		want[edge+" error"] = float64(c.failed)
	}
	last := s.requireReported(t, settled, want)
	t.Logf("calls made %v, reported %v", want, last)
	code, body, err := s.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	for _, want := range []string{`trellis_lrs_streams 3`, `trellis_lrs_series `} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	s.requireAllACKed(t)
	s.requireNoNACKsInMetrics(t)

	// LRS streams never end by themselves; stopping the server ends them
	// rather than waiting out the shutdown grace period.
	s.Stop()
	if log := s.Log(); strings.Contains(log, "RPCs still running after the shutdown grace period") || !strings.Contains(log, "stopped serving ADS") {
		t.Errorf("the server did not stop cleanly with LRS streams open:\n%s", log[max(0, len(log)-3000):])
	}
}

// TestLoadReportingOff: with --load-reporting=false the Clusters carry no
// lrs_server, and with the default they name the server itself.
func TestLoadReportingOff(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	for _, c := range []struct {
		flag string
		want bool
	}{{"--load-reporting=true", true}, {"--load-reporting=false", false}} {
		t.Run(c.flag, func(t *testing.T) {
			s := startTrellis(t, consul.HTTPAddr(), c.flag, "--load-reporting-interval", "1s")
			got := make(chan *clusterv3.Cluster, 1)
			startRawADS(t, s.xdsAddr, &corev3.Node{Id: "raw", UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"}},
				map[string][]string{resource.ClusterType: {"echo"}},
				func(resp *discoveryv3.DiscoveryResponse) (bool, string) {
					for _, r := range resp.GetResources() {
						cl := &clusterv3.Cluster{}
						if err := r.UnmarshalTo(cl); err == nil && cl.GetName() == "echo" {
							select {
							case got <- cl:
							default:
							}
						}
					}
					return true, ""
				})
			select {
			case cl := <-got:
				if has := cl.GetLrsServer().GetSelf() != nil; has != c.want {
					t.Errorf("cluster echo lrs_server %v, want self: %t", cl.GetLrsServer(), c.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("no Cluster echo within 30s")
			}
			// A real client calls the service either way.
			conn := dialXDS(t, s.bootstrapForService(t, "web-1", "web"), "xds:///echo")
			waitForInstances(t, conn, 30*time.Second, "echo-1")
			s.requireAllACKed(t)
			if c.want {
				waitFor(t, 20*time.Second, "the calls reported", func() error {
					if n := s.lrsRequests(t)["web->echo success"]; n == 0 {
						return fmt.Errorf("no call reported")
					}
					return nil
				})
				return
			}
			if _, body, _ := s.get("/metrics"); strings.Contains(body, "trellis_lrs_") {
				t.Errorf("/metrics has trellis_lrs_* metrics with load reporting off")
			}
		})
	}
}

// settledLoadReports waits until no more calls are reported (every call
// made so far is) and returns the totals. Reports carry only what happened
// since the previous one, so a test counts the calls of its mix as what
// the totals grew by after this.
func (s *trellisServer) settledLoadReports(t testing.TB) map[string]float64 {
	t.Helper()
	var settled map[string]float64
	waitFor(t, 20*time.Second, "the calls made so far reported", func() error {
		a := s.lrsRequests(t)
		time.Sleep(2500 * time.Millisecond)
		b := s.lrsRequests(t)
		if len(b) == 0 || fmt.Sprint(a) != fmt.Sprint(b) {
			return fmt.Errorf("reports still arriving: %v then %v", a, b)
		}
		settled = b
		return nil
	})
	return settled
}

// requireReported waits until the calls reported since settled match want
// ("source->destination result" -> calls) within 5 %, with nothing else
// reported, and returns what was reported.
func (s *trellisServer) requireReported(t testing.TB, settled, want map[string]float64) map[string]float64 {
	t.Helper()
	var last map[string]float64
	waitFor(t, 20*time.Second, "reported calls within 5 % of the calls made", func() error {
		now := s.lrsRequests(t)
		last = map[string]float64{}
		for k, v := range now {
			if d := v - settled[k]; d != 0 {
				last[k] = d
			}
		}
		for k, w := range want {
			if got := last[k]; math.Abs(got-w) > 0.05*w {
				return fmt.Errorf("%s: reported %v, made %v (all reported: %v)", k, got, w, last)
			}
		}
		for k, v := range last {
			if _, ok := want[k]; !ok {
				return fmt.Errorf("%s: %v reported, none made", k, v)
			}
		}
		return nil
	})
	return last
}

// TestLoadReportPeers: grpc-js-xds (Node) and C-core (Python) clients
// accept Clusters with lrs_server (every response ACKed) and report their
// calls, counted per source (`trellis bootstrap --cluster`) and
// destination within 5 % of what they made, a fraction of them failing.
func TestLoadReportPeers(t *testing.T) {
	for _, impl := range []peerImpl{nodePeer, pythonPeer} {
		t.Run(impl.name, func(t *testing.T) {
			consul := consultest.Start(t, consultest.Options{})
			trellis := startTrellisWithAPI(t, consul, "--load-reporting-interval", "1s")
			e := &peerEnv{impl: impl, consul: consul, trellis: trellis, nodeID: "peer-" + impl.name + "-client", api: policyPutter{trellis}}
			e.client = startPeer(t, impl, "client", writePeerBootstrap(t, trellis, impl, e.nodeID, "--cluster", "peer-web"))
			svc := e.service("reported")
			backends := e.backends(t, svc, 2)
			e.reachAll(t, svc, ids(svc, 2)...)
			settled := trellis.settledLoadReports(t)

			failEvery(backends[0], 5)
			r, err := e.client.call(peerCall{Target: "xds:///" + svc, Calls: 200})
			if err != nil {
				t.Fatal(err)
			}
			if r.ok() == 0 || r.failed() == 0 {
				t.Fatalf("calls %v: want some to succeed and some to fail", r)
			}
			edge := "peer-web->" + svc
			last := trellis.requireReported(t, settled, map[string]float64{edge + " success": float64(r.ok()), edge + " error": float64(r.failed())})
			t.Logf("%s: %d ok and %d failed made, reported %v", impl.name, r.ok(), r.failed(), last)
			trellis.requirePeerStreams(t, impl, e.nodeID)
		})
	}
}
