package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// Binaries built once for the package: trellis and the echo example.
var trellisBin, echoServerBin, echoClientBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trellis-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	trellisBin = filepath.Join(dir, "trellis")
	echoServerBin = filepath.Join(dir, "echo-server")
	echoClientBin = filepath.Join(dir, "echo-client")
	for bin, pkg := range map[string]string{
		trellisBin:    "github.com/trellis-mesh/trellis/cmd/trellis",
		echoServerBin: "github.com/trellis-mesh/trellis/examples/echo/server",
		echoClientBin: "github.com/trellis-mesh/trellis/examples/echo/client",
	} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// trellisServer is a trellis server process run from the built binary.
type trellisServer struct {
	t         testing.TB
	xdsAddr   string
	adminAddr string
	args      []string
	env       []string
	logPath   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// started: /readyz answered once (a restart keeps the ports);
	// portRetries counts the starts moved to other ports.
	started     bool
	portRetries int
}

// startTrellis runs `trellis server` against the Consul agent at consulAddr
// and waits until it is ready. Extra flags are appended.
func startTrellis(t testing.TB, consulAddr string, extra ...string) *trellisServer {
	t.Helper()
	s := &trellisServer{
		t:         t,
		xdsAddr:   freeAddr(t),
		adminAddr: freeAddr(t),
		env:       append(os.Environ(), "CONSUL_HTTP_ADDR="+consulAddr),
		logPath:   filepath.Join(t.TempDir(), "trellis.log"),
	}
	s.args = append([]string{"server", "--xds-listen", s.xdsAddr, "--admin-listen", s.adminAddr, "--log-level", "debug"}, extra...)
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.dumpLog()
		}
	})
	return s
}

// Start launches the process (again, on the same ports) and waits for
// /readyz.
func (s *trellisServer) Start() {
	s.t.Helper()
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(trellisBin, s.args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		s.t.Fatalf("start trellis: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for {
		select {
		case <-done:
			log := s.Log()
			movable := strings.HasPrefix(s.xdsAddr, "127.0.0.1:") && strings.HasPrefix(s.adminAddr, "127.0.0.1:")
			if !s.started && movable && strings.Contains(log, "address already in use") && s.portRetries < 3 {
				// Another process took a port freeAddr found free: take
				// two others. (A restart keeps its ports, and so does a
				// server whose address a test chose.)
				s.portRetries++
				s.t.Logf("trellis could not listen (a port was taken meanwhile); retrying on other ports")
				s.movePorts()
				s.Start()
				return
			}
			s.t.Fatalf("trellis exited before /readyz answered 200; log (tail):\n%s", log[max(0, len(log)-5000):])
		default:
		}
		code, body, err := s.get("/readyz")
		if err == nil && code == http.StatusOK {
			s.started = true
			return
		}
		if err == nil {
			err = fmt.Errorf("readyz %d: %s", code, body)
		}
		last = err
		if time.Now().After(deadline) {
			log := s.Log()
			s.t.Fatalf("timed out after 1m0s waiting for trellis /readyz: %v; log (tail):\n%s", last, log[max(0, len(log)-5000):])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// movePorts picks new xDS and admin addresses, replacing them in the
// arguments.
func (s *trellisServer) movePorts() {
	xds, admin := freeAddr(s.t), freeAddr(s.t)
	for i, a := range s.args {
		switch a {
		case s.xdsAddr:
			s.args[i] = xds
		case s.adminAddr:
			s.args[i] = admin
		}
	}
	s.xdsAddr, s.adminAddr = xds, admin
}

// Stop sends SIGTERM and waits for the process to exit.
func (s *trellisServer) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
		s.t.Errorf("trellis did not stop within 15s of SIGTERM")
	}
}

func (s *trellisServer) dumpLog() {
	raw, err := os.ReadFile(s.logPath)
	if err != nil {
		return
	}
	if len(raw) > 20000 {
		raw = raw[len(raw)-20000:]
	}
	s.t.Logf("trellis log (tail):\n%s", raw)
}

// Log returns the process output so far.
func (s *trellisServer) Log() string {
	raw, _ := os.ReadFile(s.logPath)
	return string(raw)
}

func (s *trellisServer) get(path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.adminAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// bootstrapFor writes the bootstrap a workload with nodeID would use.
func (s *trellisServer) bootstrapFor(t testing.TB, nodeID string, fallbacks ...string) []byte {
	t.Helper()
	out, err := bootstrap.Generate(bootstrap.Config{
		Servers: append([]string{s.xdsAddr}, fallbacks...),
		NodeID:  nodeID,
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dialXDS opens a real grpc-go xDS client channel to target using a
// bootstrap generated for nodeID. Each call gets its own xDS client.
func dialXDS(t testing.TB, bootstrapJSON []byte, target string) *grpc.ClientConn {
	t.Helper()
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// echoBackend is a gRPC Echo server registered in Consul.
type echoBackend struct {
	echov1.UnimplementedEchoServer
	id      string
	service string
	addr    string
	server  *grpc.Server
	health  *health.Server

	mu    sync.Mutex
	calls int
	// inFlight counts calls being answered right now.
	inFlight int
	// behave, when set, decides the outcome of each call.
	behave func(ctx context.Context, method string) error
}

func (b *echoBackend) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return b.answer(ctx, "/trellis.echo.v1.Echo/Echo", req)
}

func (b *echoBackend) Reverse(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return b.answer(ctx, "/trellis.echo.v1.Echo/Reverse", req)
}

func (b *echoBackend) answer(ctx context.Context, method string, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	b.mu.Lock()
	b.calls++
	b.inFlight++
	behave := b.behave
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.inFlight--
		b.mu.Unlock()
	}()
	if behave != nil {
		if err := behave(ctx, method); err != nil {
			return nil, err
		}
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), InstanceId: b.id, Service: b.service}, nil
}

func (b *echoBackend) setBehaviour(f func(ctx context.Context, method string) error) {
	b.mu.Lock()
	b.behave = f
	b.mu.Unlock()
}

func (b *echoBackend) Calls() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls
}

type backendOptions struct {
	meta map[string]string
	tags []string
	// grpcCheck registers a Consul GRPC check with this interval instead of
	// a TTL check.
	grpcCheck time.Duration
}

// startBackend starts an Echo server on 127.0.0.1 and registers it in
// Consul as an instance of service with a passing TTL check (or a GRPC
// check). It returns the backend and its TTL check ID ("" for GRPC checks).
func startBackend(t testing.TB, consul *consultest.Agent, service, id string, opts backendOptions) (*echoBackend, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &echoBackend{id: id, service: service, addr: lis.Addr().String(), server: grpc.NewServer(), health: health.NewServer()}
	echov1.RegisterEchoServer(b.server, b)
	healthpb.RegisterHealthServer(b.server, b.health)
	go b.server.Serve(lis)
	t.Cleanup(b.server.Stop)

	port := lis.Addr().(*net.TCPAddr).Port
	reg := &api.AgentServiceRegistration{
		ID: id, Name: service, Address: "127.0.0.1", Port: port, Meta: opts.meta, Tags: opts.tags,
	}
	if opts.grpcCheck == 0 {
		return b, consul.RegisterService(t, reg)
	}
	reg.Check = &api.AgentServiceCheck{
		CheckID:  "grpc:" + id,
		Name:     "grpc health " + id,
		GRPC:     b.addr,
		Interval: opts.grpcCheck.String(),
		Status:   api.HealthPassing,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := consul.Client(t).Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return b, ""
}

// callResult is the outcome of a batch of calls.
type callResult struct {
	byInstance map[string]int
	failures   []error
}

func (r callResult) ok() int {
	n := 0
	for _, c := range r.byInstance {
		n += c
	}
	return n
}

// callEcho makes n sequential Echo calls and counts who answered.
func callEcho(t testing.TB, conn *grpc.ClientConn, n int, md ...string) callResult {
	t.Helper()
	client := echov1.NewEchoClient(conn)
	res := callResult{byInstance: map[string]int{}}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if len(md) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, md...)
		}
		resp, err := client.Echo(ctx, &echov1.EchoRequest{Message: strconv.Itoa(i)})
		cancel()
		if err != nil {
			res.failures = append(res.failures, err)
			continue
		}
		res.byInstance[resp.GetInstanceId()]++
	}
	return res
}

// waitForInstances calls until every listed instance has answered (the
// client has the configuration), failing after the timeout.
func waitForInstances(t testing.TB, conn *grpc.ClientConn, timeout time.Duration, ids ...string) {
	t.Helper()
	seen := map[string]bool{}
	waitFor(t, timeout, fmt.Sprintf("calls reaching %v", ids), func() error {
		r := callEcho(t, conn, 10)
		for id := range r.byInstance {
			seen[id] = true
		}
		for _, id := range ids {
			if !seen[id] {
				return fmt.Errorf("not yet reached %s (seen %v, failures %v)", id, seen, firstErr(r.failures))
			}
		}
		return nil
	})
}

func firstErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// trafficLoop makes calls continuously until stopped and records every
// outcome, for tests that disturb the system mid-traffic.
type trafficLoop struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	byInstance map[string]int
	failures   []error
	// since tracks, per instance, when it last answered.
	lastSeen map[string]time.Time
}

func startTraffic(t testing.TB, conn *grpc.ClientConn, interval time.Duration) *trafficLoop {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &trafficLoop{cancel: cancel, done: make(chan struct{}), byInstance: map[string]int{}, lastSeen: map[string]time.Time{}}
	client := echov1.NewEchoClient(conn)
	go func() {
		defer close(l.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := client.Echo(cctx, &echov1.EchoRequest{Message: "loop"})
			ccancel()
			if ctx.Err() != nil {
				return
			}
			l.mu.Lock()
			if err != nil {
				l.failures = append(l.failures, err)
			} else {
				l.byInstance[resp.GetInstanceId()]++
				l.lastSeen[resp.GetInstanceId()] = time.Now()
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.Stop)
	return l
}

func (l *trafficLoop) Stop() {
	l.cancel()
	<-l.done
}

// snapshot returns the counts and failures so far.
func (l *trafficLoop) snapshot() (map[string]int, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := make(map[string]int, len(l.byInstance))
	for k, v := range l.byInstance {
		counts[k] = v
	}
	return counts, append([]error(nil), l.failures...)
}

// reset clears the counts.
func (l *trafficLoop) reset() {
	l.mu.Lock()
	l.byInstance = map[string]int{}
	l.failures = nil
	l.mu.Unlock()
}

// waitFor polls check every 100ms until it returns nil, failing the test
// with the last error after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusCode extracts the gRPC code of an error.
func statusCode(err error) codes.Code { return status.Code(err) }

// jsonIndent is for readable failure messages.
func jsonIndent(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.Encode(v)
	return buf.String()
}

// portOf returns the port of a host:port address.
func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
