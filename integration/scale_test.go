package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// registerMany registers services first..first+n-1 named prefix-NNNNN in
// the catalog with the txn API, one instance each (on node "scale-node",
// address 127.0.0.1, a distinct port) with a passing check: what a large
// estate's agents would have registered, written quickly.
func registerMany(t testing.TB, client *api.Client, prefix string, first, n int) {
	t.Helper()
	node := &api.Node{Node: "scale-node", Address: "127.0.0.1"}
	nodeOp := &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: *node}}
	var ops api.TxnOps
	flush := func() {
		if len(ops) == 0 {
			return
		}
		ok, resp, _, err := client.Txn().Txn(append(api.TxnOps{nodeOp}, ops...), nil)
		if err != nil || !ok {
			t.Fatalf("register services: %v %+v", err, resp)
		}
		ops = nil
	}
	for i := first; i < first+n; i++ {
		name := fmt.Sprintf("%s-%05d", prefix, i)
		ops = append(ops,
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node.Node,
				Service: api.AgentService{ID: name, Service: name, Address: "127.0.0.1", Port: 20000 + i}}},
			&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: node.Node, CheckID: "check-" + name, Name: "check " + name, Status: api.HealthPassing,
				ServiceID: name, ServiceName: name}}})
		if len(ops) >= 62 { // 64 operations per transaction, with the node's
			flush()
		}
	}
	flush()
}

// deregisterMany removes what registerMany registered.
func deregisterMany(t testing.TB, client *api.Client, prefix string, first, n int) {
	t.Helper()
	for i := first; i < first+n; i++ {
		name := fmt.Sprintf("%s-%05d", prefix, i)
		if _, err := client.Catalog().Deregister(&api.CatalogDeregistration{Node: "scale-node", ServiceID: name}, nil); err != nil {
			t.Fatalf("deregister %s: %v", name, err)
		}
	}
}

// neighbour is another Consul client of the host, as a node's other tools
// are: it keeps registering, querying and deregistering a service of its
// own while Trellis runs, and counts every refusal.
type neighbour struct {
	stop     chan struct{}
	done     chan struct{}
	requests atomic.Int64
	mu       sync.Mutex
	errs     []error
}

func startNeighbour(t testing.TB, agent *consultest.Agent) *neighbour {
	t.Helper()
	client := agent.Client(t)
	n := &neighbour{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(n.done)
		for i := 0; ; i++ {
			select {
			case <-n.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			id := fmt.Sprintf("neighbour-%d", (i/3)%5)
			var err error
			switch i % 3 {
			case 0:
				err = client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "neighbour", Port: 9000 + (i/3)%5, Address: "127.0.0.1"})
			case 1:
				_, _, err = client.Health().Service("neighbour", "", false, nil)
			case 2:
				err = client.Agent().ServiceDeregister(id)
			}
			n.requests.Add(1)
			if err != nil {
				n.mu.Lock()
				n.errs = append(n.errs, err)
				n.mu.Unlock()
			}
		}
	}()
	t.Cleanup(n.Stop)
	return n
}

// Stop ends the loop; it may be called more than once.
func (n *neighbour) Stop() {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	<-n.done
}

func (n *neighbour) requireNoErrors(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.errs) > 0 {
		t.Fatalf("another Consul client of the host had %d of %d requests refused while Trellis ran, first: %v", len(n.errs), n.requests.Load(), n.errs[0])
	}
	if n.requests.Load() < 10 {
		t.Fatalf("the other Consul client made only %d requests", n.requests.Load())
	}
	t.Logf("another Consul client of the host: %d requests, none refused", n.requests.Load())
}

// consulConns counts the established TCP connections of process pid to
// the address consul (host:port), from /proc.
func consulConns(t testing.TB, pid int, consul string) int {
	t.Helper()
	_, portStr, err := net.SplitHostPort(consul)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" { // 01: ESTABLISHED
			continue
		}
		remote := f[2]
		i := strings.LastIndexByte(remote, ':')
		p, err := strconv.ParseUint(remote[i+1:], 16, 32)
		if err == nil && int(p) == port && inodes[f[9]] {
			n++
		}
	}
	return n
}

func (s *trellisServer) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// metricValue reads one unlabelled sample from /metrics.
func (s *trellisServer) metricValue(t testing.TB, name string) float64 {
	t.Helper()
	_, body, err := s.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not in /metrics", name)
	return 0
}

// servedClusters returns the Cluster names the widest profile serves.
func (s *trellisServer) servedClusters(t testing.TB) map[string]string {
	t.Helper()
	_, body, err := s.get("/debug/xds/resources")
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]map[string]map[string]string
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatalf("decode /debug/xds/resources: %v", err)
	}
	return res["widest"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
}

// servesScale reports whether the server serves a Cluster for each of the
// services scale-00000 .. scale-(n-1) that registerMany writes.
func (s *trellisServer) servesScale(t testing.TB, n int) error {
	clusters := s.servedClusters(t)
	for i := range n {
		if _, ok := clusters[fmt.Sprintf("scale-%05d", i)]; !ok {
			return fmt.Errorf("scale-%05d not served (%d clusters)", i, len(clusters))
		}
	}
	return nil
}

// TestStockConsulAtScale: against a Consul agent with its default limits
// (http_max_conns_per_client = 200), 2,000 services become ready and are
// served over a bounded number of connections, while another client of
// the host keeps registering and querying without a single refusal.
func TestStockConsulAtScale(t *testing.T) {
	const services = 2000
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	registerMany(t, client, "scale", 0, services)
	nb := startNeighbour(t, agent)

	start := time.Now()
	s := startTrellis(t, agent.HTTPAddr(), "--consul-max-conns", "16")
	t.Logf("ready with %d services after %s", services, time.Since(start).Round(time.Millisecond))

	// A real client calls one of them.
	startBackend(t, agent, "echo", "echo-1", backendOptions{})
	conn := dialXDS(t, s.bootstrapFor(t, "scale-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")

	waitFor(t, 30*time.Second, "every service served", func() error { return s.servesScale(t, services) })
	peak := 0
	for range 10 {
		peak = max(peak, consulConns(t, s.pid(), agent.HTTPAddr()))
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("connections to Consul: %d (bound 16)", peak)
	if peak > 16 || peak == 0 {
		t.Errorf("trellis holds %d connections to Consul, want 1..16", peak)
	}
	time.Sleep(time.Second) // the neighbour keeps going while Trellis idles
	nb.Stop()
	nb.requireNoErrors(t)
	if strings.Contains(s.Log(), "Unsolicited response") || strings.Contains(s.Log(), "%!") {
		t.Errorf("unstructured or garbled lines in the log")
	}
	s.requireAllACKed(t)
}

// TestStockConsulAtScaleOverHTTPS: the same over Consul's HTTPS API,
// where every service is also watched on its own over HTTP/2: 2,000
// services are ready and served, watched whole, over at most
// --consul-max-conns connections plus one per 200 watched services, the
// neighbour is never refused, and an address-only change reaches a
// client with no index probe.
func TestStockConsulAtScaleOverHTTPS(t *testing.T) {
	const services, maxConns = 2000, 16
	certs := newConsulTLS(t)
	agent := consultest.Start(t, consultest.Options{HTTPS: true, HCL: []string{certs.agentTLSHCL(false)}})
	client := agent.Client(t)
	registerMany(t, client, "scale", 0, services)
	nb := startNeighbour(t, agent)

	certs.setClientEnv(t)
	start := time.Now()
	s := startTrellis(t, agent.HTTPSAddr(), "--consul-max-conns", strconv.Itoa(maxConns))
	t.Logf("ready with %d services after %s", services, time.Since(start).Round(time.Millisecond))
	startBackend(t, agent, "echo", "echo-1", backendOptions{})
	moved, _ := startBackend(t, agent, "other", "moved", backendOptions{})
	conn := dialXDS(t, s.bootstrapFor(t, "scale-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")

	waitFor(t, 30*time.Second, "every service served and watched", func() error {
		if err := s.servesScale(t, services); err != nil {
			return err
		}
		if w := s.metricValue(t, "trellis_catalog_service_watches"); w < services {
			return fmt.Errorf("%v services watched, want at least %d", w, services)
		}
		return nil
	})
	bound := maxConns + (services+10+199)/200 // the catalog's, and the watches'
	peak := 0
	for range 10 {
		peak = max(peak, consulConns(t, s.pid(), agent.HTTPSAddr()))
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("connections to Consul: %d (bound %d)", peak, bound)
	if peak > bound || peak == 0 {
		t.Errorf("trellis holds %d connections to Consul, want 1..%d", peak, bound)
	}

	probes := s.metricValue(t, "trellis_catalog_index_probes_total")
	changed := time.Now()
	reregisterOnly(t, agent, "echo", "echo-1", moved.addr, nil)
	waitForShare(t, conn, 30*time.Second, 50, 1, 1, func(id string) bool { return id == "moved" })
	t.Logf("address-only change reached the client after %s", time.Since(changed).Round(time.Millisecond))
	if got := s.metricValue(t, "trellis_catalog_index_probes_total") - probes; got != 0 {
		t.Errorf("%v index probes for an address change to a watched service, want 0", got)
	}

	nb.Stop()
	nb.requireNoErrors(t)
	if strings.Contains(s.Log(), "Unsolicited response") || strings.Contains(s.Log(), "%!") {
		t.Errorf("unstructured or garbled lines in the log")
	}
	s.requireAllACKed(t)
}

// TestCatalogGrowsPastAndShrinksBelow200 follows a catalog across the
// default per-address connection limit and back: the services metric
// equals Consul's count throughout, and Consul stays reachable.
func TestCatalogGrowsPastAndShrinksBelow200(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	registerMany(t, client, "grow", 0, 150)
	nb := startNeighbour(t, agent)
	s := startTrellis(t, agent.HTTPAddr())

	matches := func(what string) {
		t.Helper()
		waitFor(t, 30*time.Second, what, func() error {
			want, n := countPrefix(t, client, "grow-"), 0
			for name := range s.servedClusters(t) {
				if strings.HasPrefix(name, "grow-") {
					n++
				}
			}
			if n != want {
				return fmt.Errorf("serving %d grow- services, Consul has %d", n, want)
			}
			if s.metricValue(t, "trellis_catalog_consul_reachable") != 1 {
				return errors.New("Consul not reachable")
			}
			// The neighbour's own service comes and goes: the two counts
			// may differ by it alone.
			if got, all := s.metricValue(t, "trellis_catalog_services"), float64(countAll(t, client)); got < all-1 || got > all+1 {
				return fmt.Errorf("trellis_catalog_services = %v, Consul holds %v", got, all)
			}
			return nil
		})
	}
	matches("150 services")
	registerMany(t, client, "grow", 150, 100)
	matches("250 services")
	deregisterMany(t, client, "grow", 151, 99)
	matches("151 services")
	if n := consulConns(t, s.pid(), agent.HTTPAddr()); n > 16 {
		t.Errorf("%d connections to Consul, want at most 16", n)
	}
	nb.Stop()
	nb.requireNoErrors(t)
}

func countPrefix(t testing.TB, client *api.Client, prefix string) int {
	t.Helper()
	services, _, err := client.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for name := range services {
		if strings.HasPrefix(name, prefix) {
			n++
		}
	}
	return n
}

func countAll(t testing.TB, client *api.Client) int {
	t.Helper()
	services, _, err := client.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	return len(services)
}

// reregisterOnly registers instance id of service again at addr with
// meta, its TTL check kept passing: a registration-only change, no check
// moves (checked).
func reregisterOnly(t *testing.T, agent *consultest.Agent, service, id, addr string, meta map[string]string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	checkBefore := agent.CatalogCheckStatus(t, consultest.TTLCheckID(id))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := &api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: p, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: consultest.TTLCheckID(id), Name: "ttl " + id, TTL: consultest.ServiceTTL.String(), Status: api.HealthPassing}}
	if err := agent.Client(t).Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	if after := agent.CatalogCheckStatus(t, consultest.TTLCheckID(id)); after != checkBefore {
		t.Fatalf("the check of %s went %s -> %s: not a registration-only change", id, checkBefore, after)
	}
}

// TestRegistrationOnlyChangesReachClients: an instance moved to another
// port, and instances whose meta (which a policy's subsets select on)
// changed, with no check changing at all, reach a running client.
func TestRegistrationOnlyChangesReachClients(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	s := startTrellisWithAPI(t, agent)
	a, _ := startBackend(t, agent, "echo", "echo-1", backendOptions{meta: map[string]string{"version": "v1"}})
	b, _ := startBackend(t, agent, "echo", "echo-2", backendOptions{meta: map[string]string{"version": "v2"}})
	conn := dialXDS(t, s.bootstrapFor(t, "reg-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1", "echo-2")

	// Meta only: route every call to subset v2, then swap the versions.
	putPolicy(t, s.policyClient(t), `{"service":"echo","subsets":[{"name":"v2","meta":{"version":"v2"}}],"routes":[{"destination":{"subset":"v2"}}]}`)
	waitForShare(t, conn, 30*time.Second, 50, 1, 1, func(id string) bool { return id == "echo-2" })
	reregister := func(id, addr string, meta map[string]string) {
		t.Helper()
		reregisterOnly(t, agent, "echo", id, addr, meta)
	}
	changed := time.Now()
	reregister("echo-1", a.addr, map[string]string{"version": "v2"})
	reregister("echo-2", b.addr, map[string]string{"version": "v1"})
	waitForShare(t, conn, 30*time.Second, 50, 1, 1, func(id string) bool { return id == "echo-1" })
	t.Logf("meta-only change reached the client after %s", time.Since(changed).Round(time.Millisecond))

	// Address only: echo-1 moves to the port of a third server.
	c, _ := startBackend(t, agent, "other", "moved", backendOptions{})
	changed = time.Now()
	reregister("echo-1", c.addr, map[string]string{"version": "v2"})
	waitForShare(t, conn, 30*time.Second, 50, 1, 1, func(id string) bool { return id == "moved" })
	t.Logf("address-only change reached the client after %s", time.Since(changed).Round(time.Millisecond))
	s.requireAllACKed(t)
}
