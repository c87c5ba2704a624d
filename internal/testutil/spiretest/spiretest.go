// Package spiretest runs a real SPIRE server and agents on loopback for
// tests: join-token node attestation, in-memory keys, a SQLite datastore in
// t.TempDir(), and the unix workload attestor.
//
// The binaries come from $TRELLIS_SPIRE_SERVER_BIN and
// $TRELLIS_SPIRE_AGENT_BIN, by default ~/.cache/trellis/tools/spire-server-v1.13.3
// and spire-agent-v1.13.3 (built by `make tools`); a test fails when they
// are missing. With -short, tests that start SPIRE are skipped.
//
// All the workloads of a test process run as one user, so an agent gives
// them all the same identities. To give a client and a server different
// SPIFFE IDs, register each under its own agent (AddAgent): every agent has
// its own Workload API socket and its own node, and an entry registered with
// Agent.Register is served by that agent only.
//
// Package spiretest is for tests only and must not be imported by
// production code.
package spiretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Version is the SPIRE release the harness expects.
const Version = "v1.13.3"

// Environment variables that override the binaries' paths.
const (
	EnvServerBin = "TRELLIS_SPIRE_SERVER_BIN"
	EnvAgentBin  = "TRELLIS_SPIRE_AGENT_BIN"
)

// DefaultTrustDomain is the trust domain of a SPIRE started without one.
const DefaultTrustDomain = "trellis.test"

// readyTimeout bounds every wait of the harness: generous, for a loaded
// 2-core machine.
const readyTimeout = 90 * time.Second

// Options configures Start.
type Options struct {
	// TrustDomain is the SPIRE trust domain. Default: "trellis.test".
	TrustDomain string
	// SVIDTTL is the default lifetime of workload X.509 SVIDs; entries may
	// set their own. SPIRE backdates certificates by 10 s, and agents rotate
	// an SVID once half its lifetime has passed. Default: 1h.
	SVIDTTL time.Duration
	// ServerBin and AgentBin are the binaries to run.
	// Default: $TRELLIS_SPIRE_SERVER_BIN / $TRELLIS_SPIRE_AGENT_BIN, else
	// ~/.cache/trellis/tools/spire-{server,agent}-v1.13.3.
	ServerBin string
	AgentBin  string
}

// SPIRE is a running SPIRE server with one or more agents.
type SPIRE struct {
	td         spiffeid.TrustDomain
	svidTTL    time.Duration
	serverBin  string
	agentBin   string
	sockDir    string // short directory for unix sockets
	dataDir    string
	serverSock string
	port       int
	server     *process

	mu     sync.Mutex
	agents []*Agent
}

// Start runs a SPIRE server and one agent (Agent()), and returns once the
// agent has attested and serves the Workload API. Everything is stopped
// when the test ends.
func Start(t testing.TB, opts Options) *SPIRE {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		t.Fatalf("spiretest: trust domain %q: %v", opts.TrustDomain, err)
	}
	if opts.SVIDTTL == 0 {
		opts.SVIDTTL = time.Hour
	}
	if opts.SVIDTTL < time.Second {
		t.Fatalf("spiretest: SVIDTTL %s: want at least 1s", opts.SVIDTTL)
	}
	s := &SPIRE{
		td:        td,
		svidTTL:   opts.SVIDTTL,
		serverBin: binary(t, opts.ServerBin, EnvServerBin, "spire-server"),
		agentBin:  binary(t, opts.AgentBin, EnvAgentBin, "spire-agent"),
		dataDir:   t.TempDir(),
	}
	s.sockDir = socketDir(t)
	s.serverSock = filepath.Join(s.sockDir, "server.sock")
	s.startServer(t)
	s.AddAgent(t)
	return s
}

// binary returns the path of a SPIRE binary, failing the test when it is
// missing.
func binary(t testing.TB, path, env, name string) string {
	t.Helper()
	if path == "" {
		path = os.Getenv(env)
	}
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("spiretest: no home directory to find %s (set %s): %v", name, env, err)
		}
		dir := os.Getenv("TRELLIS_TOOLS_DIR")
		if dir == "" {
			dir = filepath.Join(home, ".cache", "trellis", "tools")
		}
		path = filepath.Join(dir, name+"-"+Version)
	}
	info, err := os.Stat(path)
	if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		t.Fatalf("spiretest: %s %s not found at %s (set %s): run `make tools`", name, Version, path, env)
	}
	return path
}

// socketDir returns a short directory for unix sockets, whose paths must
// stay under 108 bytes; t.TempDir() paths can be longer.
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spt")
	if err != nil {
		t.Fatalf("spiretest: socket directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("spiretest: remove %s: %v", dir, err)
		}
	})
	if len(dir)+len("/agent00.sock") >= 104 {
		t.Fatalf("spiretest: socket directory %s is too long for unix sockets; set TMPDIR to a short path", dir)
	}
	return dir
}

// TrustDomain returns the SPIRE trust domain.
func (s *SPIRE) TrustDomain() spiffeid.TrustDomain { return s.td }

// ServerSocketPath returns the path of the server's admin API socket.
func (s *SPIRE) ServerSocketPath() string { return s.serverSock }

// Agent returns the agent Start started.
func (s *SPIRE) Agent() *Agent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agents[0]
}

// SocketPath returns the Workload API socket path of Agent().
func (s *SPIRE) SocketPath() string { return s.Agent().SocketPath() }

// WorkloadAPIAddr returns the Workload API address of Agent(),
// "unix:///...".
func (s *SPIRE) WorkloadAPIAddr() string { return s.Agent().WorkloadAPIAddr() }

// RegisterWorkload registers an entry served by Agent(); see Agent.Register.
func (s *SPIRE) RegisterWorkload(t testing.TB, e Entry) string {
	t.Helper()
	return s.Agent().Register(t, e)
}

// StopAgent stops Agent(); see Agent.Stop.
func (s *SPIRE) StopAgent(t testing.TB) {
	t.Helper()
	s.Agent().Stop(t)
}

// StartAgent restarts Agent(); see Agent.Start.
func (s *SPIRE) StartAgent(t testing.TB) {
	t.Helper()
	s.Agent().Start(t)
}

// Bundle returns the server's current X.509 trust bundle.
func (s *SPIRE) Bundle(t testing.TB) *x509bundle.Bundle {
	t.Helper()
	out := s.serverCmd(t, "bundle", "show", "-format", "pem")
	b, err := x509bundle.Parse(s.td, out)
	if err != nil {
		t.Fatalf("spiretest: parse bundle: %v\n%s", err, out)
	}
	return b
}

// SetFederatedBundle makes the server trust the X.509 authorities of
// another trust domain, so that entries that federate with it (see
// Entry.FederatesWith) deliver its bundle to workloads.
func (s *SPIRE) SetFederatedBundle(t testing.TB, b *x509bundle.Bundle) {
	t.Helper()
	pem, err := b.Marshal()
	if err != nil {
		t.Fatalf("spiretest: encode bundle of %s: %v", b.TrustDomain(), err)
	}
	path := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(path, pem, 0o644); err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	s.serverCmd(t, "bundle", "set", "-format", "pem", "-id", b.TrustDomain().IDString(), "-path", path)
}

// DeleteEntry deletes a registration entry.
func (s *SPIRE) DeleteEntry(t testing.TB, entryID string) {
	t.Helper()
	s.serverCmd(t, "entry", "delete", "-entryID", entryID)
}

// serverCmd runs a spire-server CLI command against the server and returns
// its standard output.
func (s *SPIRE) serverCmd(t testing.TB, args ...string) []byte {
	t.Helper()
	// The sub-command comes first, then its flags.
	n := 1
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		n = 2
	}
	full := append(append(append([]string{}, args[:n]...), "-socketPath", s.serverSock), args[n:]...)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.serverBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("spiretest: spire-server %s: %v\nstdout: %s\nstderr: %s", strings.Join(full, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

func (s *SPIRE) startServer(t testing.TB) {
	t.Helper()
	dir := filepath.Join(s.dataDir, "server")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	// A free port can be taken between picking it and the server binding
	// it: retry a few times.
	for attempt := 1; ; attempt++ {
		s.port = freePort(t)
		conf := fmt.Sprintf(serverConf, s.port, s.serverSock, s.td.Name(), dir, hclDuration(s.svidTTL), filepath.Join(dir, "datastore.sqlite3"))
		confPath := filepath.Join(dir, "server.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatalf("spiretest: %v", err)
		}
		p := startProcess(t, "spire-server", filepath.Join(dir, "server.log"), s.serverBin, "run", "-config", confPath)
		err := waitHealthy(p, "unix://"+s.serverSock)
		if err == nil {
			s.server = p
			return
		}
		p.stop(t)
		if attempt < 3 && strings.Contains(p.logTail(), "address already in use") {
			continue
		}
		t.Fatalf("spiretest: spire-server did not start: %v\n%s", err, p.logTail())
	}
}

const serverConf = `server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "DEBUG"
  default_x509_svid_ttl = %q
  agent_ttl = "1h"
  experimental {
    cache_reload_interval = "1s"
  }
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`

const agentConf = `agent {
  data_dir = %q
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  experimental {
    sync_interval = "1s"
  }
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`

// Agent is a SPIRE agent with its own node identity and Workload API socket.
type Agent struct {
	s       *SPIRE
	name    string
	nodeID  spiffeid.ID
	socket  string
	dir     string
	conf    string
	mu      sync.Mutex
	process *process // nil while stopped
}

// AddAgent starts another agent, attested as its own node, and returns once
// it serves the Workload API. Entries registered through it are served by
// it only.
func (s *SPIRE) AddAgent(t testing.TB) *Agent {
	t.Helper()
	s.mu.Lock()
	n := len(s.agents)
	a := &Agent{
		s:      s,
		name:   fmt.Sprintf("agent%d", n),
		socket: filepath.Join(s.sockDir, fmt.Sprintf("agent%d.sock", n)),
		dir:    filepath.Join(s.dataDir, fmt.Sprintf("agent%d", n)),
	}
	s.agents = append(s.agents, a)
	s.mu.Unlock()

	a.nodeID = spiffeid.RequireFromSegments(s.td, "spiretest", "node", a.name)
	if err := os.MkdirAll(a.dir, 0o755); err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	a.conf = filepath.Join(a.dir, "agent.conf")
	conf := fmt.Sprintf(agentConf, a.dir, s.port, a.socket, s.td.Name())
	if err := os.WriteFile(a.conf, []byte(conf), 0o644); err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	a.Start(t)
	return a
}

// NodeID returns the SPIFFE ID of the agent's node, the parent of the
// entries registered through it.
func (a *Agent) NodeID() spiffeid.ID { return a.nodeID }

// SocketPath returns the path of the agent's Workload API socket.
func (a *Agent) SocketPath() string { return a.socket }

// WorkloadAPIAddr returns the agent's Workload API address, "unix:///...".
func (a *Agent) WorkloadAPIAddr() string { return "unix://" + a.socket }

// Start starts the agent, attesting it with a new join token for its node,
// and waits until it serves the Workload API. It fails the test when the
// agent is running.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.process != nil {
		t.Fatalf("spiretest: %s is already running", a.name)
	}
	out := a.s.serverCmd(t, "token", "generate", "-spiffeID", a.nodeID.String(), "-ttl", "600")
	token, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Token: ")
	if !ok || token == "" {
		t.Fatalf("spiretest: unexpected token output %q", out)
	}
	p := startProcess(t, "spire-agent ("+a.name+")", filepath.Join(a.dir, "agent.log"), a.s.agentBin, "run", "-config", a.conf, "-joinToken", token)
	if err := waitHealthy(p, a.WorkloadAPIAddr()); err != nil {
		p.stop(t)
		t.Fatalf("spiretest: %s did not start: %v\n%s", a.name, err, p.logTail())
	}
	a.process = p
}

// Stop stops the agent; its Workload API socket goes away until Start.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.process == nil {
		t.Fatalf("spiretest: %s is not running", a.name)
	}
	a.process.stop(t)
	a.process = nil
	// The agent removes its socket on a clean exit; make sure of it so
	// that clients see a missing socket, not a dead one.
	if err := os.Remove(a.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spiretest: %v", err)
	}
}

// Entry is a workload registration entry.
type Entry struct {
	// SPIFFEID is the identity to issue. Required.
	SPIFFEID string
	// Selectors select the workloads that get it.
	// Default: unix:uid:<uid of the test process>.
	Selectors []string
	// X509SVIDTTL is the lifetime of its X.509 SVIDs.
	// Default: Options.SVIDTTL.
	X509SVIDTTL time.Duration
	// FederatesWith lists trust domains (names) whose bundles workloads
	// receive besides their own; see SPIRE.SetFederatedBundle.
	FederatesWith []string
	// DNSNames are added to its X.509 SVIDs as DNS SANs, for peers that
	// check a host name. Optional.
	DNSNames []string
	// NoWait returns as soon as the entry exists. By default Register waits
	// until this test process can fetch the SVID from the agent, which
	// requires the selectors to match it.
	NoWait bool
}

// Register creates an entry whose parent is the agent's node, so that only
// this agent serves it, and returns its entry ID. Unless e.NoWait, it waits
// until the agent serves the SVID to this process.
func (a *Agent) Register(t testing.TB, e Entry) string {
	t.Helper()
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		t.Fatalf("spiretest: register %q: %v", e.SPIFFEID, err)
	}
	selectors := e.Selectors
	if len(selectors) == 0 {
		selectors = []string{"unix:uid:" + strconv.Itoa(os.Getuid())}
	}
	entryID := fmt.Sprintf("spiretest-%s-%d", a.name, time.Now().UnixNano())
	args := []string{"entry", "create", "-entryID", entryID, "-parentID", a.nodeID.String(), "-spiffeID", id.String()}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	if e.X509SVIDTTL > 0 {
		secs := int(e.X509SVIDTTL / time.Second)
		if secs < 1 || e.X509SVIDTTL%time.Second != 0 {
			t.Fatalf("spiretest: register %s: X509SVIDTTL %s: want whole seconds", id, e.X509SVIDTTL)
		}
		args = append(args, "-x509SVIDTTL", strconv.Itoa(secs))
	}
	for _, td := range e.FederatesWith {
		args = append(args, "-federatesWith", "spiffe://"+td)
	}
	for _, name := range e.DNSNames {
		args = append(args, "-dns", name)
	}
	a.s.serverCmd(t, args...)
	if !e.NoWait {
		a.WaitForSVID(t, id)
	}
	return entryID
}

// WaitForSVID waits until the agent serves an X.509 SVID for id to this
// process, and returns it.
func (a *Agent) WaitForSVID(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		svids, err := a.fetch(ctx)
		if err == nil {
			for _, s := range svids {
				if s.ID == id {
					return s
				}
			}
			err = fmt.Errorf("agent serves %d other SVIDs", len(svids))
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("spiretest: %s did not serve %s within %s: %v\n%s", a.name, id, readyTimeout, last, a.logTail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// FetchX509Context fetches the SVIDs and bundles the agent serves this
// process.
func (a *Agent) FetchX509Context(t testing.TB) *workloadapi.X509Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	c, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(a.WorkloadAPIAddr()))
	if err != nil {
		t.Fatalf("spiretest: fetch X.509 context from %s: %v", a.name, err)
	}
	return c
}

func (a *Agent) fetch(ctx context.Context) ([]*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(a.WorkloadAPIAddr()))
}

func (a *Agent) logTail() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.process == nil {
		return ""
	}
	return a.process.logTail()
}

// process is a running SPIRE binary whose output goes to a log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, set before done is closed
	once    sync.Once
}

func startProcess(t testing.TB, name, logPath, bin string, args ...string) *process {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		t.Fatalf("spiretest: start %s: %v", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close() // the process has exited; nothing is lost
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("spiretest: %s log (%s):\n%s", name, logPath, p.logTail())
		}
	})
	return p
}

// stop terminates the process (SIGTERM, then SIGKILL after 10 s) and waits
// for it. It is idempotent.
func (p *process) stop(t testing.TB) {
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("spiretest: stop %s: %v", p.name, err)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("spiretest: kill %s: %v", p.name, err)
			}
			<-p.done
		}
	})
}

// logTail returns the end of the process's log.
func (p *process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 8 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// waitHealthy polls the gRPC health service at target (a unix:// address)
// until it reports SERVING, the process exits, or readyTimeout passes.
func waitHealthy(p *process, target string) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		last = checkHealth(ctx, target)
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy within %s: %v", p.name, readyTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func checkHealth(ctx context.Context, target string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }() // a health probe: nothing to report
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health status %s", resp.GetStatus())
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("spiretest: pick a port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("spiretest: pick a port: %v", err)
	}
	return port
}

// hclDuration formats d for SPIRE's config ("90s").
func hclDuration(d time.Duration) string {
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}
