// Package consultest runs a real, pinned Consul agent for tests.
//
// Start launches the Consul binary named by $TRELLIS_CONSUL_BIN (default
// ~/.cache/trellis/tools/consul-v1.16.1, built by `make tools`) on free
// loopback ports, waits until it has elected a leader and registered its own
// node, and stops it when the test ends. The agent only ever listens on
// 127.0.0.1. Its output goes to a file in the test's temporary directory, and
// the last lines of that file are logged when the test fails.
//
// An agent can be paused (SIGSTOP) and resumed (SIGCONT) to play a Consul
// that stops answering without closing connections, and stopped and
// restarted on the same ports. A Persistent agent keeps its data directory
// across restarts; what it restores is shown by TestRestartRestoresAgentState:
// the catalog (nodes, services, check status) survives in the Raft state, and
// the agent reloads its own service and check definitions and the status of
// its TTL checks from the data directory, so a TTL check that was warning
// before the restart is warning again afterwards (until its TTL expires).
// A dev-mode agent (the default) starts empty after every restart.
//
// Signals are POSIX signals: the package runs on Unix systems only.
//
// This package is imported by tests only; it imports only consul/api and the
// standard library.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// EnvBinary names the environment variable that overrides the Consul binary.
const EnvBinary = "TRELLIS_CONSUL_BIN"

// startTimeout bounds how long Start and Restart wait for the agent to be
// ready. It is generous because tests run on small, shared machines.
const startTimeout = 60 * time.Second

// stopTimeout bounds how long Stop waits for a graceful exit before it kills
// the process.
const stopTimeout = 15 * time.Second

// tailLines is how many lines of agent output are logged on failure.
const tailLines = 60

// Options configure an agent.
type Options struct {
	// Persistent runs a single server (-server -bootstrap-expect=1) with a
	// data directory under the test's temporary directory instead of a
	// -dev agent, so that Restart keeps the catalog and the agent's own
	// registrations. Default: false (a -dev agent, in memory).
	Persistent bool
	// NodeName is the agent's node name, kept across restarts.
	// Default: "node-1".
	NodeName string
	// NodeMeta is the agent's node metadata (-node-meta). Default: none.
	NodeMeta map[string]string
	// Datacenter is the agent's datacenter. Default: "dc1".
	Datacenter string
	// LogOutput, when set, also receives the agent's output (it is always
	// written to a file in the test's temporary directory). Default: nil.
	LogOutput io.Writer
	// DNS enables the agent's DNS interface on a free loopback port (UDP
	// and TCP), see DNSAddr. Default: no DNS interface.
	DNS bool
	// HTTPS enables the agent's HTTPS API on a free loopback port, see
	// HTTPSAddr; its certificates come from HCL (tls { defaults { ... } }).
	// The plain HTTP API stays enabled for the package's own readiness
	// checks and Client. Default: no HTTPS API.
	HTTPS bool
	// HCL fragments are passed to the agent as -hcl flags after the
	// package's own, e.g. TLS settings. Default: none.
	HCL []string
	// JoinWAN, when set, makes this agent a second datacenter federated
	// with JoinWAN's: once ready (after every start and restart), the
	// agent joins JoinWAN's serf WAN port (what `consul join -wan` does)
	// and Start returns only when each agent lists both datacenters, so
	// that ?dc= queries reach across. Datacenter must differ from
	// JoinWAN's. Default: nil, a datacenter of its own.
	JoinWAN *Agent
	// Token is the ACL token of the package's readiness checks and of
	// Client, for agents started with ACLs enabled through HCL, e.g.
	// acl { enabled = true, default_policy = "deny", tokens {
	// initial_management = "root" } } with Token "root". Default: none
	// (the anonymous token).
	Token string
}

// Agent is a running Consul agent owned by one test.
type Agent struct {
	bin     string
	opts    Options
	dir     string
	logPath string
	ports   ports

	mu      sync.Mutex
	shared  *api.Client // for the helpers; created on first use
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been waited for
	waitErr error         // cmd.Wait's result, set before exited is closed
	logFile *os.File
	paused  bool
}

// ports are the agent's listening ports; -1 disables a listener.
type ports struct {
	http, serfLAN, serfWAN, server int
	// dns and https are -1 unless Options.DNS or Options.HTTPS.
	dns, https int
}

// Start runs a Consul agent for the test and returns once it has a leader
// and its node is in the catalog with its metadata and a passing serfHealth
// check. It fails the test (t.Fatal) when the binary
// is missing or the agent does not become ready within 60 s. The agent is
// stopped when the test ends.
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	if opts.NodeName == "" {
		opts.NodeName = "node-1"
	}
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	// TempDir before registering the stop cleanup: cleanups run last in,
	// first out, so the agent is stopped before its directory is removed.
	dir := t.TempDir()
	a := &Agent{bin: bin, opts: opts, dir: dir, logPath: filepath.Join(dir, "consul.log")}
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Errorf("consultest: stop agent: %v", err)
		}
		if t.Failed() {
			a.logTail(t)
		}
	})

	// A free port can be taken by another process between the moment it
	// is picked and the moment Consul binds it; try again on new ports.
	const attempts = 3
	for i := 1; ; i++ {
		a.ports, err = freePorts(opts.DNS, opts.HTTPS)
		if err != nil {
			t.Fatalf("consultest: %v", err)
		}
		err = a.launchAndWait()
		if err == nil {
			return a
		}
		if i == attempts || !a.portConflict() {
			a.logTail(t)
			t.Fatalf("consultest: start agent: %v", err)
		}
		t.Logf("consultest: agent failed to bind its ports (attempt %d of %d), retrying on new ports", i, attempts)
	}
}

// binary returns the Consul binary to run.
func binary() (string, error) {
	bin := os.Getenv(EnvBinary)
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("consultest: locate the Consul binary: %w; set %s or run `make tools`", err, EnvBinary)
		}
		bin = filepath.Join(home, ".cache", "trellis", "tools", "consul-v1.16.1")
	}
	st, err := os.Stat(bin)
	if err != nil {
		return "", fmt.Errorf("consultest: Consul binary %s: %w; run `make tools` (or set %s)", bin, err, EnvBinary)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("consultest: Consul binary %s is not an executable file; run `make tools` (or set %s)", bin, EnvBinary)
	}
	return bin, nil
}

// HTTPAddr returns the agent's HTTP API address, "127.0.0.1:PORT".
func (a *Agent) HTTPAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http))
}

// DNSAddr returns the agent's DNS address, "127.0.0.1:PORT" (UDP and
// TCP), or "" without Options.DNS.
func (a *Agent) DNSAddr() string {
	if a.ports.dns < 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.dns))
}

// HTTPSAddr returns the agent's HTTPS API address, "127.0.0.1:PORT", or ""
// without Options.HTTPS.
func (a *Agent) HTTPSAddr() string {
	if a.ports.https < 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.https))
}

// NodeName returns the agent's node name.
func (a *Agent) NodeName() string { return a.opts.NodeName }

// Datacenter returns the agent's datacenter.
func (a *Agent) Datacenter() string { return a.opts.Datacenter }

// LogPath returns the file that holds the agent's output.
func (a *Agent) LogPath() string { return a.logPath }

// Client returns a new API client for the agent. It keeps working across
// Restart, since the agent keeps its ports.
func (a *Agent) Client(t testing.TB) *api.Client {
	t.Helper()
	c, err := a.newClient()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	return c
}

func (a *Agent) newClient() (*api.Client, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.HTTPAddr()
	cfg.Scheme = "http"
	cfg.Datacenter = ""
	cfg.Token = a.opts.Token
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("api client for %s: %w", cfg.Address, err)
	}
	return c, nil
}

// Pause stops the agent process (SIGSTOP). Connections stay open and new ones
// are still accepted by the kernel, but nothing is answered until Resume.
func (a *Agent) Pause(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		t.Fatal("consultest: Pause: agent is not running")
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("consultest: Pause: %v", err)
	}
	a.paused = true
	if err := waitStopped(a.cmd.Process.Pid, 5*time.Second); err != nil {
		t.Fatalf("consultest: Pause: %v", err)
	}
}

// Resume continues a paused agent (SIGCONT).
func (a *Agent) Resume(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		t.Fatal("consultest: Resume: agent is not running")
	}
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("consultest: Resume: %v", err)
	}
	a.paused = false
}

// Stop stops the agent (SIGTERM, then SIGKILL after 15 s), resuming it first
// if it is paused. Stopping a stopped agent does nothing.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	if err := a.stop(); err != nil {
		t.Fatalf("consultest: Stop: %v", err)
	}
}

// Restart stops the agent if it runs and starts it again with the same
// ports, node name and (when Persistent) data directory, then waits up to
// 60 s for the agent to be ready as in Start.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	if err := a.stop(); err != nil {
		t.Fatalf("consultest: Restart: %v", err)
	}
	if err := a.launchAndWait(); err != nil {
		a.logTail(t)
		t.Fatalf("consultest: Restart: %v", err)
	}
}

// args returns the agent's command line.
func (a *Agent) args() []string {
	args := []string{"agent"}
	if a.opts.Persistent {
		args = append(args,
			"-server", "-bootstrap-expect=1",
			"-data-dir", filepath.Join(a.dir, "data"),
			// Fast Raft timing, as in -dev, for a quick leader election.
			"-hcl", "performance { raft_multiplier = 1 }",
		)
	} else {
		args = append(args, "-dev")
	}
	args = append(args,
		"-node", a.opts.NodeName,
		"-datacenter", a.opts.Datacenter,
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-advertise", "127.0.0.1",
		"-http-port", strconv.Itoa(a.ports.http),
		"-serf-lan-port", strconv.Itoa(a.ports.serfLAN),
		"-serf-wan-port", strconv.Itoa(a.ports.serfWAN),
		"-server-port", strconv.Itoa(a.ports.server),
		"-dns-port", strconv.Itoa(a.ports.dns),
		"-grpc-port", "-1",
		"-grpc-tls-port", "-1",
		"-https-port", strconv.Itoa(a.ports.https),
		"-log-level", "debug",
		"-hcl", "disable_update_check = true",
	)
	for _, hcl := range a.opts.HCL {
		args = append(args, "-hcl", hcl)
	}
	keys := make([]string, 0, len(a.opts.NodeMeta))
	for k := range a.opts.NodeMeta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-node-meta", k+":"+a.opts.NodeMeta[k])
	}
	return args
}

// launchAndWait starts the process and waits until the agent is ready.
func (a *Agent) launchAndWait() error {
	if err := a.launch(); err != nil {
		return err
	}
	err := a.waitReady()
	if err == nil && a.opts.JoinWAN != nil {
		err = a.joinWAN(a.opts.JoinWAN)
	}
	if err != nil {
		if stopErr := a.stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
		return err
	}
	return nil
}

// SerfWANAddr returns the agent's serf WAN address, "127.0.0.1:PORT".
func (a *Agent) SerfWANAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.serfWAN))
}

// joinWAN joins other's datacenter over the WAN and waits until both
// agents list both datacenters.
func (a *Agent) joinWAN(other *Agent) error {
	if other.opts.Datacenter == a.opts.Datacenter {
		return fmt.Errorf("join WAN: both agents are in datacenter %q; give this one another Datacenter", a.opts.Datacenter)
	}
	mine, err := a.newClient()
	if err != nil {
		return err
	}
	theirs, err := other.newClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = mine.Agent().Join(other.SerfWANAddr(), true); last == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last != nil {
		return fmt.Errorf("join WAN %s: %w", other.SerfWANAddr(), last)
	}
	want := []string{a.opts.Datacenter, other.opts.Datacenter}
	sort.Strings(want)
	for time.Now().Before(deadline) {
		last = nil
		for _, c := range []*api.Client{mine, theirs} {
			dcs, err := c.Catalog().Datacenters()
			if err != nil {
				last = err
				break
			}
			sort.Strings(dcs)
			if strings.Join(dcs, ",") != strings.Join(want, ",") {
				last = fmt.Errorf("datacenters %v, want %v", dcs, want)
				break
			}
		}
		if last == nil {
			// The WAN pool knows both; a forwarded query proves the route.
			if _, _, err := mine.Catalog().Nodes(&api.QueryOptions{Datacenter: other.opts.Datacenter}); err == nil {
				return nil
			} else {
				last = err
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("join WAN %s: %w", other.SerfWANAddr(), last)
}

func (a *Agent) launch() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return errors.New("agent is already running")
	}
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("agent log: %w", err)
	}
	fmt.Fprintf(logFile, "==> consultest: %s %s\n", a.bin, strings.Join(a.args(), " "))
	var out io.Writer = logFile
	if a.opts.LogOutput != nil {
		out = io.MultiWriter(logFile, a.opts.LogOutput)
	}
	cmd := exec.Command(a.bin, a.args()...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Dir = a.dir
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("run %s: %w", a.bin, err)
	}
	exited := make(chan struct{})
	a.cmd, a.exited, a.logFile, a.paused = cmd, exited, logFile, false
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(exited)
	}()
	return nil
}

// waitReady polls the agent until ready reports no error, failing early
// when the process exits.
func (a *Agent) waitReady() error {
	client, err := a.newClient()
	if err != nil {
		return err
	}
	a.mu.Lock()
	exited := a.exited
	a.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for {
		select {
		case <-exited:
			a.mu.Lock()
			werr := a.waitErr
			a.mu.Unlock()
			return fmt.Errorf("agent exited during startup (%v); output in %s", werr, a.logPath)
		default:
		}
		lastErr = a.ready(client)
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent not ready after %s: %w; output in %s", startTimeout, lastErr, a.logPath)
		}
		select {
		case <-exited:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ready checks that the agent has a leader and that its node is in the
// catalog with its metadata and a passing serfHealth check.
func (a *Agent) ready(client *api.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	node, _, err := client.Catalog().Node(a.opts.NodeName, q)
	if err != nil {
		return fmt.Errorf("catalog node %q: %w", a.opts.NodeName, err)
	}
	if node == nil || node.Node == nil {
		return fmt.Errorf("node %q not in the catalog yet", a.opts.NodeName)
	}
	// The leader registers the node from Serf first; its metadata arrives
	// with the agent's first sync.
	for k, v := range a.opts.NodeMeta {
		if node.Node.Meta[k] != v {
			return fmt.Errorf("node %q: meta %q not synced yet", a.opts.NodeName, k)
		}
	}
	checks, _, err := client.Health().Node(a.opts.NodeName, q)
	if err != nil {
		return fmt.Errorf("checks of node %q: %w", a.opts.NodeName, err)
	}
	for _, c := range checks {
		if c.CheckID == "serfHealth" && c.Status == api.HealthPassing {
			return nil
		}
	}
	return fmt.Errorf("node %q: serfHealth not passing yet", a.opts.NodeName)
}

// stop terminates the process if it runs and waits for it.
func (a *Agent) stop() error {
	a.mu.Lock()
	cmd, exited, logFile, paused := a.cmd, a.exited, a.logFile, a.paused
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	var errs []error
	select {
	case <-exited:
	default:
		if paused {
			// A stopped process does not act on SIGTERM until continued.
			_ = cmd.Process.Signal(syscall.SIGCONT)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				errs = append(errs, fmt.Errorf("kill: %w", err))
			}
			<-exited
		}
	}
	if err := logFile.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close agent log: %w", err))
	}
	a.mu.Lock()
	a.cmd, a.exited, a.logFile, a.paused = nil, nil, nil, false
	a.mu.Unlock()
	return errors.Join(errs...)
}

// portConflict reports whether the agent's output says a port was taken.
func (a *Agent) portConflict() bool {
	b, err := os.ReadFile(a.logPath)
	return err == nil && bytes.Contains(b, []byte("address already in use"))
}

// logTail logs the last lines of the agent's output.
func (a *Agent) logTail(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(a.logPath)
	if err != nil {
		t.Logf("consultest: read agent log: %v", err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	t.Logf("consultest: last %d lines of %s:\n%s", len(lines), a.logPath, strings.Join(lines, "\n"))
}

// freePorts picks distinct free loopback ports. The serf ports must be free
// for both TCP and UDP.
func freePorts(dns, https bool) (ports, error) {
	p := ports{dns: -1, https: -1}
	seen := map[int]bool{}
	pick := func(udp bool) (int, error) {
		for range 20 {
			port, err := freePort(udp)
			if err != nil {
				return 0, err
			}
			if !seen[port] {
				seen[port] = true
				return port, nil
			}
		}
		return 0, errors.New("no distinct free port found")
	}
	var err error
	if p.http, err = pick(false); err != nil {
		return p, err
	}
	if p.serfLAN, err = pick(true); err != nil {
		return p, err
	}
	if p.serfWAN, err = pick(true); err != nil {
		return p, err
	}
	if p.server, err = pick(false); err != nil {
		return p, err
	}
	if dns {
		if p.dns, err = pick(true); err != nil {
			return p, err
		}
	}
	if https {
		if p.https, err = pick(false); err != nil {
			return p, err
		}
	}
	return p, nil
}

// freePort returns a TCP port on 127.0.0.1 that is free now; with udp, the
// same UDP port is free too.
func freePort(udp bool) (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !udp {
			return port, l.Close()
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		closeErr := l.Close()
		if err != nil {
			continue
		}
		if err := errors.Join(u.Close(), closeErr); err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		return port, nil
	}
	return 0, errors.New("free port: no port free for both TCP and UDP")
}
