package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// outage is how long Consul or the xDS server stays away mid-traffic.
const outage = 10 * time.Second

// meshWithTraffic starts three instances, a trellis server and a client
// calling continuously, and waits until all instances answer.
func meshWithTraffic(t *testing.T, opts consultest.Options) (*consultest.Agent, *trellisServer, *trafficLoop) {
	t.Helper()
	consul := consultest.Start(t, opts)
	for i := 1; i <= 3; i++ {
		startBackend(t, consul, "echo", fmt.Sprintf("echo-%d", i), backendOptions{})
	}
	trellis := startTrellis(t, consul.HTTPAddr())
	conn := dialXDS(t, trellis.bootstrapFor(t, "client-1"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1", "echo-2", "echo-3")
	return consul, trellis, startTraffic(t, conn, 20*time.Millisecond)
}

// expectHealthyTraffic checks that no call failed and every listed instance
// answered since the last reset.
func expectHealthyTraffic(t *testing.T, loop *trafficLoop, ids ...string) {
	t.Helper()
	counts, failures := loop.snapshot()
	if len(failures) > 0 {
		t.Errorf("%d calls failed, first: %v", len(failures), failures[0])
	}
	for _, id := range ids {
		if counts[id] == 0 {
			t.Errorf("instance %s received no calls; counts %v", id, counts)
		}
	}
}

// expectNewInstanceReached registers another instance and waits until the
// running traffic reaches it: changes flow again.
func expectNewInstanceReached(t *testing.T, consul *consultest.Agent, loop *trafficLoop, id string, within time.Duration) {
	t.Helper()
	startBackend(t, consul, "echo", id, backendOptions{})
	waitFor(t, within, id+" receiving calls", func() error {
		counts, _ := loop.snapshot()
		if counts[id] == 0 {
			return fmt.Errorf("no calls yet; counts %v", counts)
		}
		return nil
	})
}

// TestConsulPaused: Consul frozen (SIGSTOP) for 10 s mid-traffic: no call
// fails, every instance keeps receiving calls, the server reports Consul
// unreachable, and changes flow again once Consul is back.
func TestConsulPaused(t *testing.T) {
	consul, trellis, loop := meshWithTraffic(t, consultest.Options{})
	loop.reset()

	consul.Pause(t)
	waitFor(t, 8*time.Second, "readyz to report Consul unreachable", func() error {
		code, body, err := trellis.get("/readyz")
		if err != nil {
			return err
		}
		if code != 200 || !strings.Contains(body, "consul reachable: false") {
			return fmt.Errorf("readyz %d: %s", code, body)
		}
		return nil
	})
	_, body, err := trellis.get("/metrics")
	if err != nil || !strings.Contains(body, "trellis_catalog_consul_reachable 0") {
		t.Errorf("metrics do not show Consul unreachable (err %v)", err)
	}
	time.Sleep(outage - 4*time.Second)
	consul.Resume(t)
	time.Sleep(2 * time.Second)
	expectHealthyTraffic(t, loop, "echo-1", "echo-2", "echo-3")

	expectNewInstanceReached(t, consul, loop, "echo-4", 15*time.Second)
	waitFor(t, 10*time.Second, "readyz to report Consul reachable", func() error {
		_, body, err := trellis.get("/readyz")
		if err != nil || !strings.Contains(body, "consul reachable: true") {
			return fmt.Errorf("readyz: %s %v", body, err)
		}
		return nil
	})
	loop.Stop()
	if _, failures := loop.snapshot(); len(failures) > 0 {
		t.Errorf("%d calls failed, first: %v", len(failures), failures[0])
	}
	if !strings.Contains(trellis.Log(), "unreachable") {
		t.Error("server log has no line about Consul being unreachable")
	}
	trellis.requireAllACKed(t)
}

// TestConsulRestarted: a persistent single-server Consul stopped for 10 s
// and started again: no call fails, all instances keep receiving calls,
// changes flow after it returns.
func TestConsulRestarted(t *testing.T) {
	consul, trellis, loop := meshWithTraffic(t, consultest.Options{Persistent: true})
	loop.reset()

	consul.Stop(t)
	time.Sleep(outage)
	consul.Restart(t)
	time.Sleep(3 * time.Second)
	expectHealthyTraffic(t, loop, "echo-1", "echo-2", "echo-3")

	expectNewInstanceReached(t, consul, loop, "echo-4", 20*time.Second)
	loop.Stop()
	if _, failures := loop.snapshot(); len(failures) > 0 {
		t.Errorf("%d calls failed, first: %v", len(failures), failures[0])
	}
	trellis.requireAllACKed(t)
}

// TestXDSServerRestarted: the trellis server stopped and started again
// mid-traffic: no call fails, and a change made after the restart reaches
// the running client.
func TestXDSServerRestarted(t *testing.T) {
	consul, trellis, loop := meshWithTraffic(t, consultest.Options{})
	loop.reset()

	trellis.Stop()
	time.Sleep(3 * time.Second)
	trellis.Start()
	expectNewInstanceReached(t, consul, loop, "echo-4", 30*time.Second)
	expectHealthyTraffic(t, loop, "echo-1", "echo-2", "echo-3", "echo-4")
	loop.Stop()
	trellis.requireAllACKed(t)
}
