package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/pemca"
)

// process is a child process the benchmark owns: Consul or trellis.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// startProcess runs bin with args, its output going to logPath.
func startProcess(name, bin string, args, env []string, logPath string) (*process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches the
	// benchmark, which stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// pid returns the process ID.
func (p *process) pid() int { return p.cmd.Process.Pid }

// alive reports an error once the process has exited.
func (p *process) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited (%v); output in %s", p.name, p.waitErr, p.logPath)
	default:
		return nil
	}
}

// stop sends SIGTERM, waits up to 15 s, then kills.
func (p *process) stop() error {
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	<-p.exited
	return nil
}

// tail returns the last lines of the process's output.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(udp bool) (int, error) {
	if udp {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
		// The serf ports need TCP as well.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return freePort(true)
		}
		l.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int, udp []bool) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for i := range n {
		for try := 0; ; try++ {
			p, err := freePort(udp[i])
			if err != nil {
				return nil, fmt.Errorf("free port: %w", err)
			}
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
				break
			}
			if try > 20 {
				return nil, errors.New("free port: no distinct port found")
			}
		}
	}
	return out, nil
}

// consulAgent is a stock `consul agent -dev` on loopback ports, serving
// its HTTP API and its HTTPS API (where Consul serves HTTP/2). Its only
// settings beyond the command line are Prometheus retention for its
// telemetry, so that its request counters can be read, and the HTTPS API's
// certificate, from a CA of its own, without client certificates; its
// limits (among them http_max_conns_per_client = 200) are the defaults.
type consulAgent struct {
	*process
	// addr and httpsAddr are the HTTP and HTTPS API addresses, host:port.
	addr, httpsAddr string
	// caFile is the PEM file of the CA that signed the HTTPS certificate.
	caFile string
	// client is the benchmark's own client, over HTTP.
	client *consulapi.Client
}

const benchNode = "bench-agent"

// The values of -consul-scheme.
const (
	consulSchemeHTTPS = "https"
	consulSchemeHTTP  = "http"
)

// consulTLSDir is the directory, in the run's, of the agent's CA and HTTPS
// certificate.
const consulTLSDir = "consul-tls"

func startConsul(ctx context.Context, bin, dir string) (*consulAgent, error) {
	ports, err := freePorts(5, []bool{false, true, true, false, false})
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	ca, err := pemca.New(filepath.Join(dir, consulTLSDir))
	if err != nil {
		return nil, fmt.Errorf("consul HTTPS certificate: %w", err)
	}
	certFile, keyFile, err := ca.Issue("server.dc1.consul", 2)
	if err != nil {
		return nil, fmt.Errorf("consul HTTPS certificate: %w", err)
	}
	args := []string{"agent", "-dev",
		"-node", benchNode,
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-https-port", strconv.Itoa(ports[4]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn",
		"-hcl", "disable_update_check = true",
		"-hcl", `telemetry { prometheus_retention_time = "24h" disable_hostname = true }`,
		"-hcl", consulHTTPSConfig(ca.CertFile(), certFile, keyFile),
	}
	p, err := startProcess("consul", bin, args, os.Environ(), filepath.Join(dir, "consul.log"))
	if err != nil {
		return nil, err
	}
	a := &consulAgent{
		process:   p,
		addr:      net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		httpsAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[4])),
		caFile:    ca.CertFile(),
	}
	httpsProbe := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
	}}
	defer httpsProbe.CloseIdleConnections()
	cfg := consulapi.DefaultNonPooledConfig()
	cfg.Address = a.addr
	cfg.Scheme = "http"
	// A bounded pool: the benchmark's writes must not take the agent's
	// connections from Trellis.
	cfg.Transport.MaxIdleConnsPerHost = 16
	cfg.Transport.MaxConnsPerHost = 16
	a.client, err = consulapi.NewClient(cfg)
	if err != nil {
		_ = p.stop()
		return nil, fmt.Errorf("consul client: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := a.ready(ctx)
		if err == nil {
			err = a.httpsReady(ctx, httpsProbe)
		}
		if err == nil {
			return a, nil
		}
		if perr := p.alive(); perr != nil {
			return nil, perr
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = p.stop()
			return nil, fmt.Errorf("consul not ready after 60s: %v; output in %s", err, p.logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consulHTTPSConfig is the agent's tls stanza (Consul 1.16's syntax): its
// HTTPS API serves certFile and asks clients for no certificate.
func consulHTTPSConfig(caFile, certFile, keyFile string) string {
	return fmt.Sprintf(`tls { defaults { ca_file = %q cert_file = %q key_file = %q } https { verify_incoming = false } }`,
		caFile, certFile, keyFile)
}

func (a *consulAgent) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	leader, err := a.client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader")
	}
	node, _, err := a.client.Catalog().Node(benchNode, q)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return errors.New("agent node not in the catalog yet")
	}
	return nil
}

// httpsReady checks that the HTTPS API answers with the agent's
// certificate: GET /v1/status/leader through client, which trusts the
// agent's CA only.
func (a *consulAgent) httpsReady(ctx context.Context, client *http.Client) error {
	url := "https://" + a.httpsAddr + "/v1/status/leader"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("HTTPS API: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTPS API: GET %s: %s", url, resp.Status)
	}
	return nil
}

// consulEndpoint is how trellis reaches the agent: the address of
// --consul-addr and CONSUL_HTTP_ADDR (https://host:port for the HTTPS API,
// host:port for the HTTP API) and, over HTTPS, the CA file of
// CONSUL_CACERT.
type consulEndpoint struct {
	addr   string
	caFile string
}

// endpoint returns the agent's endpoint for scheme, one of
// consulSchemeHTTPS and consulSchemeHTTP.
func (a *consulAgent) endpoint(scheme string) consulEndpoint {
	if scheme == consulSchemeHTTP {
		return consulEndpoint{addr: a.addr}
	}
	return consulEndpoint{addr: "https://" + a.httpsAddr, caFile: a.caFile}
}

// env returns the variables Consul's clients read (api.DefaultConfig) for
// the endpoint.
func (e consulEndpoint) env() []string {
	env := []string{"CONSUL_HTTP_ADDR=" + e.addr}
	if e.caFile != "" {
		env = append(env, "CONSUL_CACERT="+e.caFile)
	}
	return env
}

// benchPaths are the HTTP API paths (as Consul's telemetry labels them)
// that the benchmark itself calls; they are not counted as Trellis's.
var benchPaths = map[string]bool{
	"v1_txn": true, "v1_agent_metrics": true, "v1_status_leader": true, "v1_catalog_node_": true,
}

// consulRequests returns how many HTTP API requests the agent has
// completed for others than the benchmark, from its Prometheus telemetry
// (consul_api_http_count by method and path).
func (a *consulAgent) consulRequests(ctx context.Context) (float64, error) {
	body, err := httpGet(ctx, "http://"+a.addr+"/v1/agent/metrics?format=prometheus")
	if err != nil {
		return 0, fmt.Errorf("consul metrics: %w", err)
	}
	var total float64
	for _, s := range parseMetrics(body, "consul_api_http_count") {
		if s.labels["method"] == "" || benchPaths[s.labels["path"]] {
			continue
		}
		total += s.value
	}
	return total, nil
}

// trellisServer is the real `trellis server` binary.
type trellisServer struct {
	*process
	xdsAddr, adminAddr string
}

func startTrellis(ctx context.Context, bin string, consul consulEndpoint, dir string, timeout time.Duration) (*trellisServer, time.Duration, error) {
	ports, err := freePorts(2, []bool{false, false})
	if err != nil {
		return nil, 0, fmt.Errorf("trellis: %w", err)
	}
	s := &trellisServer{
		xdsAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		adminAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
	}
	args := []string{"server", "--xds-listen", s.xdsAddr, "--admin-listen", s.adminAddr, "--consul-addr", consul.addr, "--log-level", "info"}
	env := append(os.Environ(), consul.env()...)
	start := time.Now()
	p, err := startProcess("trellis", bin, args, env, filepath.Join(dir, "trellis.log"))
	if err != nil {
		return nil, 0, err
	}
	s.process = p
	deadline := start.Add(timeout)
	for {
		body, code, err := httpGetCode(ctx, "http://"+s.adminAddr+"/readyz")
		if err == nil && code == http.StatusOK {
			return s, time.Since(start), nil
		}
		if perr := p.alive(); perr != nil {
			return nil, 0, fmt.Errorf("%w\n%s", perr, p.tail(20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = p.stop()
			return nil, 0, fmt.Errorf("trellis not ready after %s (readyz %d: %s %v); output in %s\n%s", timeout, code, strings.TrimSpace(body), err, p.logPath, p.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consulRequests returns trellis_consul_requests_total summed over its
// labels, and whether trellis exports it.
func (s *trellisServer) consulRequests(ctx context.Context) (float64, bool, error) {
	body, err := httpGet(ctx, "http://"+s.adminAddr+"/metrics")
	if err != nil {
		return 0, false, fmt.Errorf("trellis metrics: %w", err)
	}
	samples := parseMetrics(body, "trellis_consul_requests_total")
	var total float64
	for _, s := range samples {
		total += s.value
	}
	// Index sweeps are counted apart (consulProbes): their rate depends on
	// the catalog's size and on when the background sweep falls, not on
	// the streams.
	for _, smp := range parseMetrics(body, "trellis_catalog_index_probes_total") {
		total -= smp.value
	}
	return total, len(samples) > 0, nil
}

// consulProbes returns trellis_catalog_index_probes_total: the index reads of
// sweeps.
func (s *trellisServer) consulProbes(ctx context.Context) (float64, error) {
	return s.gauge(ctx, "trellis_catalog_index_probes_total")
}

// gauge returns the value of an unlabelled metric from trellis's /metrics.
func (s *trellisServer) gauge(ctx context.Context, name string) (float64, error) {
	body, err := httpGet(ctx, "http://"+s.adminAddr+"/metrics")
	if err != nil {
		return 0, fmt.Errorf("trellis metrics: %w", err)
	}
	for _, smp := range parseMetrics(body, name) {
		if len(smp.labels) == 0 {
			return smp.value, nil
		}
	}
	return 0, fmt.Errorf("trellis metrics: no %s", name)
}

// edsSentAt returns, per node ID, when trellis last sent a
// ClusterLoadAssignment response, from its /debug/xds/streams.
func (s *trellisServer) edsSentAt(ctx context.Context) (map[string]time.Time, error) {
	body, err := httpGet(ctx, "http://"+s.adminAddr+"/debug/xds/streams")
	if err != nil {
		return nil, err
	}
	var streams []struct {
		NodeID string `json:"node_id"`
		Types  []struct {
			TypeURL string    `json:"type_url"`
			SentAt  time.Time `json:"sent_at"`
		} `json:"types"`
	}
	if err := json.Unmarshal([]byte(body), &streams); err != nil {
		return nil, fmt.Errorf("/debug/xds/streams: %w", err)
	}
	out := make(map[string]time.Time, len(streams))
	for _, st := range streams {
		for _, t := range st.Types {
			if t.TypeURL == "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment" {
				out[st.NodeID] = t.SentAt
			}
		}
	}
	return out, nil
}

func httpGet(ctx context.Context, url string) (string, error) {
	body, code, err := httpGetCode(ctx, url)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d: %s", url, code, strings.TrimSpace(body))
	}
	return body, nil
}

func httpGetCode(ctx context.Context, url string) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// sample is one line of the Prometheus text format.
type sample struct {
	labels map[string]string
	value  float64
}

// parseMetrics returns the samples of the metric called name in a
// Prometheus text exposition.
func parseMetrics(body, name string) []sample {
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		s := sample{labels: map[string]string{}}
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			for _, kv := range splitLabels(rest[1:end]) {
				k, v, ok := strings.Cut(kv, "=")
				if ok {
					s.labels[k] = strings.Trim(v, `"`)
				}
			}
			rest = rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric sharing the prefix
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

// splitLabels splits `a="x",b="y,z"` at the commas outside quotes.
func splitLabels(s string) []string {
	var out []string
	var cur bytes.Buffer
	inQuote := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(c)
			i++
			cur.WriteByte(s[i])
			continue
		case c == '"':
			inQuote = !inQuote
		case c == ',' && !inQuote:
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// procCPU returns the CPU time (user + system) a process has used, from
// /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields are
	// counted after its closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / time.Duration(clockTicks), nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procRSS returns a process's resident set size, from /proc/<pid>/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status VmRSS: %w", pid, err)
				}
				return kb * 1024, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
