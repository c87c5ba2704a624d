package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestResolverFailover: a Consul user's service-resolver Failover by
// datacenter takes effect with no Trellis policy. Two WAN-joined
// datacenters; the resolver in dc1 fails echo over to dc2, which the
// catalog then reads: dc2's instance waits at EDS priority 1, and when
// every dc1 instance is critical it becomes priority 0 and real grpc-go
// xDS clients' calls reach it. Nothing about the failover is reported
// as unsupported, and every version is ACKed.
func TestResolverFailover(t *testing.T) {
	const checkInterval = time.Second
	dc1 := consultest.Start(t, consultest.Options{})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", NodeName: "node-2", JoinWAN: dc1})
	var local []*echoBackend
	for i := 1; i <= 2; i++ {
		b, _ := startBackend(t, dc1, "echo", fmt.Sprintf("dc1-echo-%d", i), backendOptions{grpcCheck: checkInterval})
		local = append(local, b)
	}
	startBackend(t, dc2, "echo", "dc2-echo-1", backendOptions{})
	client := dc1.Client(t)
	writeEntry(t, client, `{"Kind": "service-defaults", "Name": "echo", "Protocol": "grpc"}`)
	writeEntry(t, client, `{"Kind": "service-resolver", "Name": "echo", "Failover": {"*": {"Datacenters": ["dc2"]}}}`)

	trellis := startTrellisWithAPI(t, dc1)
	eds := watchEDS(t, trellis, "eds-watch", "", "echo")
	eds.waitLayout(t, 20*time.Second, "dc1/@0:2 dc2/@1:1")
	if body := trellis.readyz(t); strings.Contains(body, "Failover") {
		t.Errorf("/readyz reports the resolver's failover as unsupported:\n%s", body)
	}

	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo")
	waitForInstances(t, conn, 20*time.Second, "dc1-echo-1", "dc1-echo-2")
	if r := callEcho(t, conn, 100); len(r.failures) > 0 || callsBy(r.byInstance, "dc2-") > 0 {
		t.Fatalf("with dc1 healthy: %v answered, failures %v; want every call in dc1", r.byInstance, firstErr(r.failures))
	}

	for _, b := range local {
		b.server.Stop()
	}
	down := time.Now()
	switched := eds.waitLayout(t, checkInterval+5*time.Second, "dc2/@0:1")
	var r callResult
	waitFor(t, 5*time.Second, "every call answered in dc2", func() error {
		r = callEcho(t, conn, 50)
		if n := callsBy(r.byInstance, "dc2-"); n != 50 {
			return fmt.Errorf("answered by %v, failures %v", r.byInstance, firstErr(r.failures))
		}
		return nil
	})
	t.Logf("dc2 at priority 0 %s after dc1 went down; calls then: %v", switched.Sub(down).Round(time.Millisecond), r.byInstance)
	trellis.requireAllACKed(t)
}
