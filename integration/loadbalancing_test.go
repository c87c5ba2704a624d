package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestCallsSpreadAcrossInstances: three registered instances, 300 calls,
// every instance gets at least 20% of them.
func TestCallsSpreadAcrossInstances(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	for i := 1; i <= 3; i++ {
		startBackend(t, consul, "echo", fmt.Sprintf("echo-%d", i), backendOptions{})
	}
	trellis := startTrellis(t, consul.HTTPAddr())
	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1", "echo-2", "echo-3")

	res := callEcho(t, conn, 300)
	if len(res.failures) > 0 {
		t.Fatalf("%d calls failed, first: %v", len(res.failures), res.failures[0])
	}
	for _, id := range []string{"echo-1", "echo-2", "echo-3"} {
		if got := res.byInstance[id]; got < 60 {
			t.Errorf("instance %s got %d of 300 calls, want >= 60 (20%%); all: %v", id, got, res.byInstance)
		}
	}
	trellis.requireAllACKed(t)
}

// TestTargetWithPort: xds:///name:port resolves to the same service.
func TestTargetWithPort(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	trellis := startTrellis(t, consul.HTTPAddr())
	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo:8080")
	waitForInstances(t, conn, 30*time.Second, "echo-1")
	trellis.requireAllACKed(t)
}

// TestHealthChangesReachClients: an instance whose gRPC health check goes
// critical and one that deregisters stop receiving calls within the check
// interval + 2 s; a new instance receives calls within 2 s.
func TestHealthChangesReachClients(t *testing.T) {
	const checkInterval = time.Second
	consul := consultest.Start(t, consultest.Options{})
	var sick *echoBackend
	for i := 1; i <= 3; i++ {
		b, _ := startBackend(t, consul, "echo", fmt.Sprintf("echo-%d", i), backendOptions{grpcCheck: checkInterval})
		if i == 1 {
			sick = b
		}
	}
	trellis := startTrellis(t, consul.HTTPAddr())
	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1", "echo-2", "echo-3")
	loop := startTraffic(t, conn, 10*time.Millisecond)

	// echo-1 reports NOT_SERVING: Consul's GRPC check turns critical.
	sick.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	changed := time.Now()
	expectInstanceDrained(t, loop, "echo-1", changed, checkInterval+2*time.Second)

	// echo-2 deregisters.
	consul.DeregisterService(t, "echo-2")
	changed = time.Now()
	expectInstanceDrained(t, loop, "echo-2", changed, 2*time.Second)

	// echo-4 appears.
	startBackend(t, consul, "echo", "echo-4", backendOptions{})
	added := time.Now()
	waitFor(t, 5*time.Second, "echo-4 receiving calls", func() error {
		loop.mu.Lock()
		seen, ok := loop.lastSeen["echo-4"]
		loop.mu.Unlock()
		if !ok {
			return fmt.Errorf("echo-4 not called yet")
		}
		if d := seen.Sub(added); d > 2*time.Second {
			t.Errorf("echo-4 first called %s after registration, want within 2s", d)
		}
		return nil
	})
	loop.Stop()
	trellis.requireAllACKed(t)
}

// expectInstanceDrained waits until id stops answering and checks that its
// last answer came no later than within after the change.
func expectInstanceDrained(t *testing.T, loop *trafficLoop, id string, changed time.Time, within time.Duration) {
	t.Helper()
	// Wait past the bound plus a margin, then look at the last answer.
	time.Sleep(within + 500*time.Millisecond)
	loop.mu.Lock()
	last := loop.lastSeen[id]
	others := 0
	for other, seen := range loop.lastSeen {
		if other != id && seen.After(changed.Add(within)) {
			others++
		}
	}
	loop.mu.Unlock()
	if d := last.Sub(changed); d > within {
		t.Errorf("%s still answered %s after the change, want it drained within %s", id, d.Round(time.Millisecond), within)
	}
	if others == 0 {
		t.Errorf("no other instance answered after %s drained", id)
	}
}

// TestTwoServicesOneProcess: one process (one node ID) dials two services:
// two ADS streams, both work.
func TestTwoServicesOneProcess(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "alpha", "alpha-1", backendOptions{})
	startBackend(t, consul, "beta", "beta-1", backendOptions{})
	trellis := startTrellis(t, consul.HTTPAddr())
	bs := trellis.bootstrapFor(t, "shared-node")
	alpha := dialXDS(t, bs, "xds:///alpha")
	beta := dialXDS(t, bs, "xds:///beta")
	waitForInstances(t, alpha, 30*time.Second, "alpha-1")
	waitForInstances(t, beta, 30*time.Second, "beta-1")

	streams := trellis.streams(t)
	var forNode int
	for _, s := range streams {
		if s.NodeID == "shared-node" {
			forNode++
		}
	}
	if forNode < 2 {
		t.Errorf("%d ADS streams for node shared-node, want 2 (one per target)", forNode)
	}
	trellis.requireAllACKed(t)
}

// TestOddServicesAreSkippedSafely: services with odd names, no instances,
// duplicate addresses, IPv6 and port 0 never make a client NACK; what
// cannot be served is logged with the reason; the rest works.
func TestOddServicesAreSkippedSafely(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	client := consul.Client(t)
	register := func(reg *api.AgentServiceRegistration) {
		t.Helper()
		reg.Check = &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("register %s: %v", reg.ID, err)
		}
	}
	longName := "a-service-name-" + strings.Repeat("x", 60)
	startBackend(t, consul, "My.Dotted-Service", "dotted-1", backendOptions{})
	startBackend(t, consul, longName, "long-1", backendOptions{})
	good, _ := startBackend(t, consul, "mixed", "mixed-good", backendOptions{})
	register(&api.AgentServiceRegistration{ID: "mixed-port0", Name: "mixed", Address: "127.0.0.1", Port: 0})
	register(&api.AgentServiceRegistration{ID: "mixed-dup", Name: "mixed", Address: "127.0.0.1", Port: portOf(t, good.addr)})
	register(&api.AgentServiceRegistration{ID: "mixed-v6", Name: "mixed", Address: "::1", Port: 1})
	register(&api.AgentServiceRegistration{ID: "mixed-host", Name: "mixed", Address: "db.internal", Port: 5})
	register(&api.AgentServiceRegistration{ID: "spaced", Name: "has space", Address: "127.0.0.1", Port: 7})
	register(&api.AgentServiceRegistration{ID: "empty-1", Name: "empty", Address: "127.0.0.1", Port: 9})
	if err := client.Agent().UpdateTTL("service:empty-1", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}

	trellis := startTrellis(t, consul.HTTPAddr())
	bs := trellis.bootstrapFor(t, "odd-client")
	waitForInstances(t, dialXDS(t, bs, "xds:///My.Dotted-Service"), 30*time.Second, "dotted-1")
	waitForInstances(t, dialXDS(t, bs, "xds:///"+longName), 30*time.Second, "long-1")

	// mixed: only the good instance (the duplicate address is left out;
	// whichever of the two comes first by ID is kept, both answer as
	// "mixed-good" since they share the server).
	mixed := dialXDS(t, bs, "xds:///mixed")
	waitForInstances(t, mixed, 30*time.Second, "mixed-good")
	res := callEcho(t, mixed, 40)
	if len(res.failures) > 0 {
		t.Errorf("calls to mixed failed: %v", res.failures[0])
	}

	// empty: its only instance is critical, so panic routing sends calls to
	// it; nothing listens there, so they fail with UNAVAILABLE.
	empty := dialXDS(t, bs, "xds:///empty")
	r := callEcho(t, empty, 1)
	if len(r.failures) != 1 || statusCode(r.failures[0]).String() != "Unavailable" {
		t.Errorf("call to a service without healthy instances: %v, want Unavailable", r.failures)
	}

	log := trellis.Log()
	for _, want := range []string{`has space`, `mixed-port0`, `mixed-host`, `port 0 is not dialable`, `is not an IP address`} {
		if !strings.Contains(log, want) {
			t.Errorf("server log does not mention %q", want)
		}
	}
	if !strings.Contains(log, "mixed-dup") && !strings.Contains(log, "mixed-good") {
		t.Errorf("server log does not mention the duplicate address")
	}
	trellis.requireAllACKed(t)
}
