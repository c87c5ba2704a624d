package consultest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestBinaryMissing(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
	}{
		{name: "does not exist", path: filepath.Join(dir, "nope")},
		{name: "directory", path: dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvBinary, tt.path)
			_, err := binary()
			if err == nil {
				t.Fatal("binary() succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "run `make tools`") {
				t.Errorf("error %q does not say to run `make tools`", err)
			}
		})
	}
}

// serviceStatus returns the aggregated status of one instance as Consul's
// health endpoint reports it, or "" when the instance is not in the catalog.
func serviceStatus(c *api.Client, name, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	entries, _, err := c.Health().Service(name, "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.Service.ID == id {
			return e.Checks.AggregatedStatus(), nil
		}
	}
	return "", nil
}

func waitStatus(t *testing.T, c *api.Client, name, id, want string) {
	t.Helper()
	WaitFor(t, 10*time.Second, func() error {
		got, err := serviceStatus(c, name, id)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("instance %s of %s: status %q, want %q", id, name, got, want)
		}
		return nil
	})
}

func TestAgentServicesAndTTL(t *testing.T) {
	a := Start(t, Options{})
	c := a.Client(t)
	if !strings.HasPrefix(a.HTTPAddr(), "127.0.0.1:") {
		t.Fatalf("HTTPAddr() = %q, want 127.0.0.1:PORT", a.HTTPAddr())
	}

	check := a.RegisterService(t, &api.AgentServiceRegistration{Name: "echo", ID: "echo-1", Port: 9001})
	if check != TTLCheckID("echo-1") {
		t.Errorf("check ID = %q, want %q", check, TTLCheckID("echo-1"))
	}
	waitStatus(t, c, "echo", "echo-1", api.HealthPassing)

	for _, status := range []string{api.HealthWarning, api.HealthCritical, api.HealthPassing} {
		a.SetTTL(t, check, status)
		waitStatus(t, c, "echo", "echo-1", status)
		if got := a.CatalogCheckStatus(t, check); got != status {
			t.Errorf("CatalogCheckStatus(%q) = %q, want %q", check, got, status)
		}
	}

	a.DeregisterService(t, "echo-1")
	waitStatus(t, c, "echo", "echo-1", "")
}

func TestPauseResume(t *testing.T) {
	a := Start(t, Options{})
	c := a.Client(t)
	leader := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		return err
	}

	a.Pause(t)
	if err := leader(time.Second); err == nil {
		t.Fatal("a paused agent answered")
	}
	a.Resume(t)
	WaitFor(t, 10*time.Second, func() error { return leader(2 * time.Second) })
}

// TestRestartRestoresAgentState shows what an agent keeps across Restart: a
// Persistent agent restores its own service registrations and the status of
// their TTL checks; a dev agent starts empty.
func TestRestartRestoresAgentState(t *testing.T) {
	tests := []struct {
		name       string
		persistent bool
		// wantStatus is the instance's status after the restart; "" means
		// the instance is gone.
		wantStatus string
	}{
		{name: "persistent", persistent: true, wantStatus: api.HealthWarning},
		{name: "dev", persistent: false, wantStatus: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Start(t, Options{Persistent: tt.persistent, NodeName: "node-7"})
			c := a.Client(t)
			addr := a.HTTPAddr()

			check := a.RegisterService(t, &api.AgentServiceRegistration{Name: "echo", ID: "echo-1", Port: 9001})
			a.SetTTL(t, check, api.HealthWarning)
			waitStatus(t, c, "echo", "echo-1", api.HealthWarning)

			a.Restart(t)
			if a.HTTPAddr() != addr {
				t.Errorf("HTTPAddr() after Restart = %q, want %q", a.HTTPAddr(), addr)
			}
			// The agent's node keeps its name.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			node, _, err := c.Catalog().Node("node-7", (&api.QueryOptions{}).WithContext(ctx))
			if err != nil || node == nil {
				t.Fatalf("node-7 after Restart: %v, %v", node, err)
			}

			waitStatus(t, c, "echo", "echo-1", tt.wantStatus)
			agentServices, err := c.Agent().Services()
			if err != nil {
				t.Fatal(err)
			}
			_, registered := agentServices["echo-1"]
			if want := tt.wantStatus != ""; registered != want {
				t.Errorf("agent has echo-1 registered after Restart: %t, want %t", registered, want)
			}
			// The agent's own view decides what its anti-entropy sync
			// writes to the catalog from now on.
			agentChecks, err := c.Agent().Checks()
			if err != nil {
				t.Fatal(err)
			}
			var agentStatus string
			if ac, ok := agentChecks[check]; ok {
				agentStatus = ac.Status
			}
			if agentStatus != tt.wantStatus {
				t.Errorf("agent status of %s after Restart = %q, want %q", check, agentStatus, tt.wantStatus)
			}
			if got := a.CatalogCheckStatus(t, check); got != tt.wantStatus {
				t.Errorf("catalog status of %s after Restart = %q, want %q", check, got, tt.wantStatus)
			}
		})
	}
}

func TestLogOutputAndNodeMeta(t *testing.T) {
	// Read only after Stop, which waits for the agent's output to be copied.
	var out strings.Builder
	a := Start(t, Options{NodeMeta: map[string]string{"zone": "z1"}, LogOutput: &out})
	c := a.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	node, _, err := c.Catalog().Node(a.NodeName(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Node.Meta["zone"]; got != "z1" {
		t.Errorf("node meta zone = %q, want z1", got)
	}
	a.Stop(t)
	if !strings.Contains(out.String(), "Consul agent running!") {
		t.Errorf("LogOutput did not receive the agent's output")
	}
	b, err := os.ReadFile(a.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "Consul agent running!") {
		t.Errorf("agent log %s lacks the agent's startup output", a.LogPath())
	}
}

// TestDNSAndHCL: Options.DNS serves Consul's DNS interface on DNSAddr,
// Options.HCL reaches the agent, and both addresses are empty by default.
func TestDNSAndHCL(t *testing.T) {
	a := Start(t, Options{DNS: true, HCL: []string{`dns_config { service_ttl { "*" = "7s" } }`}})
	if a.HTTPSAddr() != "" {
		t.Errorf("HTTPSAddr %q without Options.HTTPS", a.HTTPSAddr())
	}
	a.RegisterService(t, &api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.9", Port: 8080})
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, a.DNSAddr())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var addrs []string
	for ctx.Err() == nil {
		var err error
		if addrs, err = resolver.LookupHost(ctx, "web.service.consul"); err == nil && len(addrs) == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(addrs) != 1 || addrs[0] != "127.0.0.9" {
		t.Fatalf("web.service.consul at %s: %v, want [127.0.0.9]", a.DNSAddr(), addrs)
	}
	self, err := a.Client(t).Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	dns, _ := self["DebugConfig"]["DNSServiceTTL"].(map[string]any)
	if fmt.Sprint(dns["*"]) != "7s" {
		t.Errorf("HCL not applied: DNSServiceTTL %v", self["DebugConfig"]["DNSServiceTTL"])
	}

	plain := Start(t, Options{NodeName: "node-2"})
	if plain.DNSAddr() != "" || plain.HTTPSAddr() != "" {
		t.Errorf("DNSAddr %q, HTTPSAddr %q by default", plain.DNSAddr(), plain.HTTPSAddr())
	}
}

// TestJoinWAN federates two datacenters: a service registered in dc2 is
// read through dc1's agent with ?dc=dc2, and not without it.
func TestJoinWAN(t *testing.T) {
	dc1 := Start(t, Options{})
	dc2 := Start(t, Options{Datacenter: "dc2", NodeName: "node-2", JoinWAN: dc1})
	if dc2.SerfWANAddr() == dc1.SerfWANAddr() {
		t.Fatalf("both agents on serf WAN %s", dc1.SerfWANAddr())
	}
	dc2.RegisterService(t, &api.AgentServiceRegistration{Name: "echo", ID: "echo-dc2", Port: 9001})
	c := dc1.Client(t)
	WaitFor(t, 30*time.Second, func() error {
		entries, _, err := c.Health().Service("echo", "", true, &api.QueryOptions{Datacenter: "dc2"})
		if err != nil {
			return err
		}
		if len(entries) != 1 || entries[0].Service.ID != "echo-dc2" || entries[0].Node.Datacenter != "dc2" {
			return fmt.Errorf("echo in dc2 through dc1: %d entries", len(entries))
		}
		return nil
	})
	local, _, err := c.Health().Service("echo", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(local) != 0 {
		t.Errorf("echo in dc1: %d entries, want none", len(local))
	}
}

func TestJoinWANSameDatacenter(t *testing.T) {
	dc1 := Start(t, Options{})
	a := &Agent{opts: Options{Datacenter: "dc1"}}
	if err := a.joinWAN(dc1); err == nil || !strings.Contains(err.Error(), "another Datacenter") {
		t.Fatalf("joinWAN within one datacenter: %v, want an error asking for another Datacenter", err)
	}
}
