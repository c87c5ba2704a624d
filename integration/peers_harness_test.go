package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/xdsserver"
)

// peerImpl is a gRPC implementation other than grpc-go whose peer program
// (integration/peers) the tests drive.
type peerImpl struct {
	// name labels subtests: "node" or "python".
	name string
	// bootstrapFor is the trellis bootstrap --for value.
	bootstrapFor string
	// profile is the client profile its streams must be classified as.
	profile string
	// userAgentPrefix is how its user agent name starts.
	userAgentPrefix string
	// command returns the program and arguments for a mode.
	command func(t testing.TB, mode string) (string, []string)
}

var (
	nodePeer = peerImpl{
		name: "node", bootstrapFor: "node", profile: "grpc-node", userAgentPrefix: "gRPC Node Pure JS",
		command: func(t testing.TB, mode string) (string, []string) {
			dir := peerDir(t, "node")
			if _, err := os.Stat(filepath.Join(dir, "node_modules", "@grpc", "grpc-js-xds")); err != nil {
				t.Fatalf("grpc-js-xds is not installed in %s: run `make test-deps` (npm ci there): %v", dir, err)
			}
			return "node", []string{filepath.Join(dir, "peer.js"), mode}
		},
	}
	pythonPeer = peerImpl{
		name: "python", bootstrapFor: "cpp", profile: "grpc-core", userAgentPrefix: "gRPC C-core",
		command: func(t testing.TB, mode string) (string, []string) {
			if out, err := exec.Command("/usr/bin/python3", "-c", "import grpc").CombinedOutput(); err != nil {
				t.Fatalf("Debian's python3-grpcio is not installed: run `make test-deps` (apt-get install python3-grpcio python3-protobuf): %v\n%s", err, out)
			}
			return "/usr/bin/python3", []string{filepath.Join(peerDir(t, "python"), "peer.py"), mode}
		},
	}
)

func peerDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("peers", name))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// writePeerBootstrap writes the bootstrap `trellis bootstrap --for` writes
// for impl and returns its path.
func writePeerBootstrap(t testing.TB, s *trellisServer, impl peerImpl, nodeID string, extra ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), nodeID+".bootstrap.json")
	args := append([]string{"--xds-server", s.xdsAddr, "--node-id", nodeID, "--for", impl.bootstrapFor, "-o", path}, extra...)
	bootstrapCLI(t, args...)
	return path
}

// peerProcess is a running peer program.
type peerProcess struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *syncLog
	done   chan struct{}
}

type syncLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startPeer runs impl's peer program in mode with the bootstrap and extra
// environment; it is stopped when the test ends.
func startPeer(t testing.TB, impl peerImpl, mode, bootstrapPath string, env ...string) *peerProcess {
	t.Helper()
	bin, args := impl.command(t, mode)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrapPath), env...)
	p := &peerProcess{t: t, name: impl.name + " " + mode, cmd: cmd, lines: make(chan string, 16), stderr: &syncLog{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s peer: %v", impl.name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s peer stderr (tail):\n%s", p.name, tail(p.stderr.String(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// readLine returns the peer's next output line.
func (p *peerProcess) readLine(timeout time.Duration) (string, error) {
	select {
	case line, ok := <-p.lines:
		if !ok {
			<-p.done
			return "", fmt.Errorf("%s peer exited (%s): %s", p.name, p.cmd.ProcessState, tail(p.stderr.String(), 2000))
		}
		return line, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("%s peer: no answer within %s", p.name, timeout)
	}
}

// peerCall is one command to a peer client.
type peerCall struct {
	Target    string            `json:"target"`
	Calls     int               `json:"calls"`
	Method    string            `json:"method,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	TimeoutMS int               `json:"timeout_ms,omitempty"`
	Creds     string            `json:"creds,omitempty"`
}

// peerResult is a peer client's answer to a peerCall.
type peerResult struct {
	ByInstance     map[string]int  `json:"by_instance"`
	Codes          map[string]int  `json:"codes"`
	Errors         []string        `json:"errors"`
	PeerIdentities map[string]bool `json:"peer_identities"`
	Fatal          string          `json:"fatal"`
}

func (r peerResult) ok() int { return r.Codes["OK"] }
func (r peerResult) failed() int {
	n := 0
	for c, k := range r.Codes {
		if c != "OK" {
			n += k
		}
	}
	return n
}
func (r peerResult) String() string { b, _ := json.Marshal(r); return string(b) }

// call runs one batch of calls in the peer client.
func (p *peerProcess) call(c peerCall) (peerResult, error) {
	raw, err := json.Marshal(c)
	if err != nil {
		return peerResult{}, err
	}
	if _, err := p.stdin.Write(append(raw, '\n')); err != nil {
		return peerResult{}, fmt.Errorf("%s peer: %w", p.name, err)
	}
	timeout := time.Duration(max(c.TimeoutMS, 10000)*max(c.Calls, 1))*time.Millisecond + 10*time.Second
	line, err := p.readLine(timeout)
	if err != nil {
		return peerResult{}, err
	}
	var r peerResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return peerResult{}, fmt.Errorf("%s peer: bad answer %q: %w", p.name, line, err)
	}
	if r.Fatal != "" {
		return r, fmt.Errorf("%s peer: %s", p.name, r.Fatal)
	}
	return r, nil
}

// waitPeer repeats c until check accepts the result.
func (p *peerProcess) waitPeer(t testing.TB, timeout time.Duration, what string, c peerCall, check func(peerResult) error) peerResult {
	t.Helper()
	var last peerResult
	waitFor(t, timeout, what, func() error {
		r, err := p.call(c)
		if err != nil {
			t.Fatal(err)
		}
		last = r
		if err := check(r); err != nil {
			return fmt.Errorf("%w; last: %s", err, r)
		}
		return nil
	})
	return last
}

// requirePeerStreams asserts that the server tracks nodeID's stream as the
// peer's implementation and profile, and that it ACKed everything.
func (s *trellisServer) requirePeerStreams(t testing.TB, impl peerImpl, nodeID string) {
	t.Helper()
	s.requireAllACKed(t)
	var seen []xdsserver.StreamStatus
	for _, st := range s.streams(t) {
		if st.NodeID != nodeID {
			continue
		}
		seen = append(seen, st)
		if !strings.HasPrefix(st.UserAgent, impl.userAgentPrefix) || st.Profile != impl.profile {
			t.Errorf("stream of %s: user agent %q profile %q, want %q... and %q", nodeID, st.UserAgent, st.Profile, impl.userAgentPrefix, impl.profile)
		}
	}
	if len(seen) == 0 {
		t.Errorf("no ADS stream of node %s", nodeID)
	}
}
