package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// startReplica runs `trellis server` with its xDS listener on ip:port and
// its admin listener on ip, registered in Consul as a trellis-xds replica
// (the default), and waits until it is ready.
func startReplica(t *testing.T, consul *consultest.Agent, ip string, port int) *trellisServer {
	t.Helper()
	s := &trellisServer{
		t:         t,
		xdsAddr:   net.JoinHostPort(ip, strconv.Itoa(port)),
		adminAddr: freeAddrOn(t, ip),
		env:       append(os.Environ(), "CONSUL_HTTP_ADDR="+consul.HTTPAddr()),
		logPath:   filepath.Join(t.TempDir(), "trellis-"+ip+".log"),
	}
	s.args = []string{"server", "--xds-listen", s.xdsAddr, "--admin-listen", s.adminAddr, "--log-level", "debug"}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.dumpLog()
		}
	})
	return s
}

// kill ends the process with SIGKILL: no deregistration, no goodbye to
// the clients.
func (s *trellisServer) kill(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		t.Fatal("kill: not running")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	<-done
}

// freeAddrOn returns ip:port with a port that was free a moment ago.
func freeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// freePortOn returns a port that was free a moment ago on every ip.
func freePortOn(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		free := true
		for _, ip := range ips[1:] {
			o, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			o.Close()
		}
		l.Close()
		if free {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

// TestReplicaFailoverThroughConsulDNS: two replicas register themselves in
// Consul as trellis-xds on 127.0.0.2 and 127.0.0.3 with the same port, and
// a real grpc-go xDS client reaches them through one server URI resolved
// by Consul's DNS interface. Under continuous traffic (20 calls/s) the
// replica the client uses is killed with SIGKILL: no call fails (the
// calls go to the backends, not the control plane: no retry policy is
// configured), the client opens its ADS stream on the other replica within
// 5 s, and a backend deregistered while the killed replica is down stops
// receiving calls within 5 s. The killed replica comes back and nothing
// breaks. No replica is sent a NACK.
func TestReplicaFailoverThroughConsulDNS(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{DNS: true})
	for _, id := range []string{"echo-1", "echo-2", "echo-3"} {
		startBackend(t, consul, "echo", id, backendOptions{})
	}
	const ipA, ipB = "127.0.0.2", "127.0.0.3"
	port := freePortOn(t, ipA, ipB)
	replicas := map[string]*trellisServer{ipA: startReplica(t, consul, ipA, port), ipB: startReplica(t, consul, ipB, port)}

	uri := fmt.Sprintf("dns://%s/trellis-xds.service.consul:%d", consul.DNSAddr(), port)
	waitFor(t, 20*time.Second, "both replicas in Consul's DNS answers", func() error {
		addrs, err := consulDNS(consul).LookupHost(t.Context(), "trellis-xds.service.consul")
		if err != nil {
			return err
		}
		if len(addrs) != 2 {
			return fmt.Errorf("trellis-xds.service.consul: %v", addrs)
		}
		return nil
	})
	const node = "ha-client"
	conn := dialXDS(t, bootstrapWithNode(t, uri, node), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1", "echo-2", "echo-3")

	used, other := whichReplica(t, replicas, node)
	t.Logf("server URI %s; the client's ADS stream is on %s", uri, used)
	loop := startTraffic(t, conn, 50*time.Millisecond)
	time.Sleep(time.Second)

	killed := time.Now()
	replicas[used].kill(t)
	var moved time.Duration
	waitFor(t, 5*time.Second, "the client's ADS stream on the other replica", func() error {
		if _, ok := replicas[other].hasStream(t, node); !ok {
			return fmt.Errorf("no stream of %s on %s", node, other)
		}
		moved = time.Since(killed)
		return nil
	})
	t.Logf("after SIGKILL of %s, the client's ADS stream was on %s within %s", used, other, moved.Round(time.Millisecond))

	// The killed replica's readiness check goes critical; Consul keeps
	// only the other in its answers.
	waitFor(t, 10*time.Second, "only the live replica in Consul's DNS answers", func() error {
		addrs, err := consulDNS(consul).LookupHost(t.Context(), "trellis-xds.service.consul")
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0] != other {
			return fmt.Errorf("trellis-xds.service.consul: %v", addrs)
		}
		return nil
	})

	deregistered := time.Now()
	if err := consul.Client(t).Agent().ServiceDeregister("echo-2"); err != nil {
		t.Fatal(err)
	}
	expectInstanceDrained(t, loop, "echo-2", deregistered, 5*time.Second)
	loop.mu.Lock()
	drainedIn := loop.lastSeen["echo-2"].Sub(deregistered)
	loop.mu.Unlock()
	if drainedIn > 0 {
		t.Logf("echo-2 deregistered while %s was down: its last call came %s after the deregistration", used, drainedIn.Round(time.Millisecond))
	} else {
		t.Logf("echo-2 deregistered while %s was down: no call reached it after the deregistration", used)
	}

	replicas[used].Start()
	waitFor(t, 20*time.Second, "the restarted replica back in Consul's DNS answers", func() error {
		addrs, err := consulDNS(consul).LookupHost(t.Context(), "trellis-xds.service.consul")
		if err != nil {
			return err
		}
		if len(addrs) != 2 {
			return fmt.Errorf("trellis-xds.service.consul: %v", addrs)
		}
		return nil
	})
	expectNewInstanceReached(t, consul, loop, "echo-4", 5*time.Second)
	expectHealthyTraffic(t, loop, "echo-1", "echo-3", "echo-4")
	counts, failures := loop.snapshot()
	t.Logf("calls during the test: %v, failed: %d", counts, len(failures))
	if len(failures) != 0 {
		t.Errorf("%d calls failed, want 0; first: %v", len(failures), failures[0])
	}
	// A second client started now works through whichever replica it
	// reaches, and one dialing the restarted replica directly is served
	// the current configuration by it.
	conn2 := dialXDS(t, bootstrapWithNode(t, uri, "ha-client-2"), "xds:///echo")
	waitForInstances(t, conn2, 30*time.Second, "echo-1", "echo-3", "echo-4")
	direct := dialXDS(t, bootstrapWithNode(t, replicas[used].xdsAddr, "direct-client"), "xds:///echo")
	waitForInstances(t, direct, 30*time.Second, "echo-1", "echo-3", "echo-4")
	if r := callEcho(t, direct, 20); r.byInstance["echo-2"] != 0 || len(r.failures) != 0 {
		t.Errorf("the restarted replica's client: %v, failures %v; want no call to the deregistered echo-2", r.byInstance, r.failures)
	}
	loop.Stop()
	replicas[other].requireAllACKed(t)
	replicas[used].requireAllACKed(t)
	for _, s := range replicas {
		s.requireNoNACKsInMetrics(t)
	}
}

// whichReplica returns the IP of the replica that has nodeID's ADS stream
// and the other one's.
func whichReplica(t *testing.T, replicas map[string]*trellisServer, nodeID string) (used, other string) {
	t.Helper()
	waitFor(t, 10*time.Second, "the client's ADS stream on a replica", func() error {
		var on []string
		for ip, s := range replicas {
			if _, ok := s.hasStream(t, nodeID); ok {
				on = append(on, ip)
			}
		}
		if len(on) != 1 {
			return fmt.Errorf("streams of %s on %v", nodeID, on)
		}
		used = on[0]
		return nil
	})
	for ip := range replicas {
		if ip != used {
			other = ip
		}
	}
	return used, other
}

func bootstrapWithNode(t *testing.T, uri, node string) []byte {
	t.Helper()
	boot, err := bootstrap.Generate(bootstrap.Config{Servers: []string{uri}, NodeID: node})
	if err != nil {
		t.Fatal(err)
	}
	return boot
}

// consulDNS returns a resolver that asks the agent's DNS interface.
func consulDNS(consul *consultest.Agent) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, consul.DNSAddr())
		},
	}
}
