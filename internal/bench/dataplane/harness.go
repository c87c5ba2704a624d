package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/pemca"
)

// Configurations, in their canonical order.
const (
	// ConfigDirect: direct gRPC to one backend, plaintext: the baseline.
	ConfigDirect = "a"
	// ConfigXDS: xds:/// through Trellis, plaintext, the same backend.
	ConfigXDS = "b"
	// ConfigTLS: direct gRPC with mutual TLS (static ECDSA P-256 certificates).
	ConfigTLS = "c"
	// ConfigXDSMTLS: xds:/// with Trellis mTLS, SVIDs from SPIRE through the
	// in-process certificate provider, on both sides.
	ConfigXDSMTLS = "d"
	// ConfigXDSMTLSPolicy: ConfigXDSMTLS plus an RBAC policy from Consul
	// intentions on the server and a retry policy on the client's route.
	ConfigXDSMTLSPolicy = "e"
)

// AllConfigs lists every configuration in order.
var AllConfigs = []string{ConfigDirect, ConfigXDS, ConfigTLS, ConfigXDSMTLS, ConfigXDSMTLSPolicy}

// Describe returns a one-line description of a configuration.
func Describe(config string) string {
	switch config {
	case ConfigDirect:
		return "direct gRPC, plaintext (baseline)"
	case ConfigXDS:
		return "xds:/// through Trellis, plaintext"
	case ConfigTLS:
		return "direct gRPC, mutual TLS"
	case ConfigXDSMTLS:
		return "xds:/// with Trellis mTLS (SPIRE SVIDs)"
	case ConfigXDSMTLSPolicy:
		return "(d) + RBAC from intentions + retry policy"
	}
	return config
}

// Services of the xDS configurations in Consul.
const (
	servicePlain  = "bench-plain"
	serviceMTLS   = "bench-mtls"
	servicePolicy = "bench-policy"
	serviceClient = "bench-client"
)

// Config configures Run.
type Config struct {
	// TrellisBin, ConsulBin, SPIREServerBin and SPIREAgentBin are the
	// binaries of the mesh. Required; the SPIRE ones only when Configs
	// include (d) or (e), the others need no SVIDs and run without SPIRE.
	TrellisBin, ConsulBin, SPIREServerBin, SPIREAgentBin string
	// Worker is the command line of a worker process, to which the harness
	// appends "server ..." or "client ..." (see WorkerMain), and WorkerEnv
	// what it adds to the worker's environment. Required.
	Worker    []string
	WorkerEnv []string
	// Configs are the configurations to measure, each round in this order
	// and the next round in reverse. Default: AllConfigs.
	Configs []string
	// Rounds is the number of rounds. Default: 3.
	Rounds int
	// Loads are the measured phases of every configuration in every round.
	// Default: DefaultLoads(3s).
	Loads []Load
	// Warmup is a closed loop of 16 calls in flight run before the loads,
	// and not measured. Default: 500ms.
	Warmup time.Duration
	// ProfileDir, when set, receives CPU profiles of the client and the
	// server of every configuration during ProfileLoad of the first round.
	// Default: none.
	ProfileDir string
	// ProfileLoad names the profiled load (Load.Name). Default: the first
	// closed loop.
	ProfileLoad string
	// ServerStreamWorkers, when set, makes every server serve its streams
	// on that many reused goroutines (grpc.NumStreamWorkers) instead of a
	// new goroutine per call. Default: 0, gRPC's default.
	ServerStreamWorkers uint
	// Dir receives the logs, bootstraps and certificates. Default: a
	// temporary directory, removed at the end.
	Dir string
	// Logger reports progress. Default: discard.
	Logger *slog.Logger
}

// DefaultLoads returns the loads of a full run, each lasting d: closed
// loops of 16 and 64 calls in flight, open loops at 1,000 and 5,000
// calls/s, and 16 streams.
func DefaultLoads(d time.Duration) []Load {
	return []Load{
		{Kind: KindClosed, Concurrency: 16, Duration: d},
		{Kind: KindClosed, Concurrency: 64, Duration: d},
		{Kind: KindOpen, Rate: 1000, Duration: d},
		{Kind: KindOpen, Rate: 5000, Duration: d},
		{Kind: KindStream, Concurrency: 16, Duration: d},
	}
}

// needsSPIRE reports whether a configuration of c uses SVIDs.
func (c *Config) needsSPIRE() bool {
	return slices.Contains(c.Configs, ConfigXDSMTLS) || slices.Contains(c.Configs, ConfigXDSMTLSPolicy)
}

func (c *Config) setDefaults() error {
	if len(c.Configs) == 0 {
		c.Configs = AllConfigs
	}
	bins := map[string]string{"TrellisBin": c.TrellisBin, "ConsulBin": c.ConsulBin}
	if c.needsSPIRE() {
		bins["SPIREServerBin"], bins["SPIREAgentBin"] = c.SPIREServerBin, c.SPIREAgentBin
	}
	for name, v := range bins {
		if v == "" {
			return fmt.Errorf("dataplane: Config.%s is required", name)
		}
		if _, err := os.Stat(v); err != nil {
			return fmt.Errorf("dataplane: Config.%s: %w", name, err)
		}
	}
	if len(c.Worker) == 0 {
		return errors.New("dataplane: Config.Worker is required")
	}
	seen := map[string]bool{}
	for _, cfg := range c.Configs {
		if Describe(cfg) == cfg {
			return fmt.Errorf("dataplane: Config.Configs: %q: want one of %s", cfg, strings.Join(AllConfigs, ", "))
		}
		if seen[cfg] {
			return fmt.Errorf("dataplane: Config.Configs: %q twice", cfg)
		}
		seen[cfg] = true
	}
	if c.Rounds == 0 {
		c.Rounds = 3
	}
	if c.Rounds < 0 {
		return fmt.Errorf("dataplane: Config.Rounds %d: want at least 1", c.Rounds)
	}
	if len(c.Loads) == 0 {
		c.Loads = DefaultLoads(3 * time.Second)
	}
	for _, l := range c.Loads {
		if err := l.validate(); err != nil {
			return fmt.Errorf("dataplane: Config.Loads: %w", err)
		}
	}
	if c.Warmup == 0 {
		c.Warmup = 500 * time.Millisecond
	}
	if c.ProfileLoad == "" {
		for _, l := range c.Loads {
			if l.Kind == KindClosed {
				c.ProfileLoad = l.Name()
				break
			}
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Report is the outcome of Run: every measurement, and their Summary.
type Report struct {
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Machine  Machine       `json:"machine"`
	Rounds   int           `json:"rounds"`
	Configs  []string      `json:"configs"`
	Loads    []Load        `json:"loads"`
	Warmup   time.Duration `json:"warmup_ns"`
	// ServerStreamWorkers is Config.ServerStreamWorkers.
	ServerStreamWorkers uint `json:"server_stream_workers,omitempty"`
	// Runs holds one entry per configuration and round, in the order run.
	Runs    []RunResult `json:"runs"`
	Summary Summary     `json:"summary"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	// LoadBefore and LoadAfter are the 1-minute load averages before the
	// mesh starts and after the last run; LoadMax is the highest of them
	// and of every run's RunResult.LoadAfter.
	LoadBefore float64 `json:"load_before"`
	LoadAfter  float64 `json:"load_after"`
	LoadMax    float64 `json:"load_max,omitempty"`
}

// RunResult is one configuration in one round, with its own client process.
type RunResult struct {
	Config string      `json:"config"`
	Round  int         `json:"round"`
	Ready  ClientReady `json:"ready"`
	// ClientPeakRSS and ServerPeakRSS are the peak resident sets of the
	// client process and of the server process during this run.
	ClientPeakRSS int64         `json:"client_peak_rss"`
	ServerPeakRSS int64         `json:"server_peak_rss"`
	Phases        []PhaseResult `json:"phases"`
	// LoadAfter is the 1-minute load average at the end of the run: what
	// else the machine was doing while it ran.
	LoadAfter float64 `json:"load_after,omitempty"`
}

// PhaseResult is one load of one run.
type PhaseResult struct {
	Load   string     `json:"load"`
	Result LoadResult `json:"result"`
	// ClientCPU and ServerCPU are the CPU time both processes used during
	// the load.
	ClientCPU time.Duration `json:"client_cpu_ns"`
	ServerCPU time.Duration `json:"server_cpu_ns"`
}

// CallsPerSecond is the rate of successful calls.
func (p PhaseResult) CallsPerSecond() float64 {
	if p.Result.Elapsed <= 0 {
		return 0
	}
	return float64(p.Result.Calls) / p.Result.Elapsed.Seconds()
}

// CPUPerCall returns the client's and the server's CPU microseconds per
// successful call.
func (p PhaseResult) CPUPerCall() (client, server float64) {
	if p.Result.Calls == 0 {
		return 0, 0
	}
	n := float64(p.Result.Calls)
	return float64(p.ClientCPU.Microseconds()) / n, float64(p.ServerCPU.Microseconds()) / n
}

// Run starts the mesh and the servers, then measures each configuration
// in each round with a new client process, and returns the report with its
// Summary. Calls that fail are counted, not fatal; a process that does not
// start or dies is.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "trellis-bench-")
		if err != nil {
			return nil, fmt.Errorf("dataplane: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("dataplane: Config.Dir: %w", err)
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("dataplane: profile directory: %w", err)
		}
	}
	rep := &Report{Started: time.Now().UTC(), Machine: machine(), Rounds: cfg.Rounds, Configs: cfg.Configs, Loads: cfg.Loads, Warmup: cfg.Warmup, ServerStreamWorkers: cfg.ServerStreamWorkers}
	h := &harness{cfg: cfg, log: cfg.Logger}
	h.log.Info("starting the mesh", "dir", cfg.Dir, "spire", cfg.needsSPIRE())
	m, err := startMesh(ctx, cfg, cfg.Dir)
	if err != nil {
		return nil, err
	}
	h.mesh = m
	defer func() {
		if cerr := h.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	for round := 1; round <= cfg.Rounds; round++ {
		order := cfg.Configs
		if round%2 == 0 {
			order = reversed(order)
		}
		for _, c := range order {
			h.log.Info("measuring", "round", round, "config", c, "description", Describe(c))
			run, err := h.measure(ctx, c, round)
			if err != nil {
				return nil, fmt.Errorf("dataplane: round %d, configuration %s: %w", round, c, err)
			}
			run.LoadAfter = loadAverage()
			rep.Machine.LoadMax = max(rep.Machine.LoadMax, run.LoadAfter)
			rep.Runs = append(rep.Runs, run)
		}
	}
	rep.Machine.LoadAfter = loadAverage()
	rep.Machine.LoadMax = max(rep.Machine.LoadMax, rep.Machine.LoadBefore, rep.Machine.LoadAfter)
	rep.Duration = time.Since(rep.Started)
	rep.Summary = Summarize(rep)
	return rep, nil
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// server is a running server worker.
type server struct {
	proc       *process
	addr       string
	profileDir string // where it writes its CPU profiles (--profile-dir)
	profiles   int    // profiles taken so far
	profileTo  string // where the profile being taken goes
}

// startProfile makes the server start a CPU profile (SIGUSR1), which
// stopProfile ends and moves to path.
func (s *server) startProfile(path string) error {
	if err := s.proc.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return fmt.Errorf("start the profile of %s: %w", s.proc.name, err)
	}
	s.profileTo = path
	return nil
}

// stopProfile ends the profile (SIGUSR2) and waits for its file.
func (s *server) stopProfile() error {
	if err := s.proc.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		return fmt.Errorf("stop the profile of %s: %w", s.proc.name, err)
	}
	s.profiles++
	written := filepath.Join(s.profileDir, fmt.Sprintf("profile-%d.pprof", s.profiles))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(written); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s wrote no profile %s within 10s", s.proc.name, written)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.Rename(written, s.profileTo); err != nil {
		return fmt.Errorf("profile of %s: %w", s.proc.name, err)
	}
	return nil
}

// client describes how a configuration's client is started.
type clientSpec struct {
	args []string
	env  []string
	srv  *server
}

type harness struct {
	cfg     Config
	log     *slog.Logger
	mesh    *mesh
	servers []*server
	clients map[string]clientSpec
}

func (h *harness) close() error {
	var errs []error
	for _, s := range h.servers {
		errs = append(errs, s.proc.stop())
	}
	errs = append(errs, h.mesh.close())
	return errors.Join(errs...)
}

// startServer starts a server worker and waits until it serves; when
// register is set, it first registers it in Consul (after it listens).
func (h *harness) startServer(ctx context.Context, name string, env []string, register func(port int) error, args ...string) (*server, error) {
	profileDir := filepath.Join(h.cfg.Dir, name+"-profiles")
	if err := os.MkdirAll(profileDir, 0o755); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	args = append([]string{"--profile-dir", profileDir, "--stream-workers", strconv.FormatUint(uint64(h.cfg.ServerStreamWorkers), 10)}, args...)
	argv := append(append(append([]string{}, h.cfg.Worker[1:]...), "server"), args...)
	p, err := startProcess(h.cfg.Dir, name, append(append([]string{}, h.cfg.WorkerEnv...), env...), true, h.cfg.Worker[0], argv...)
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, profileDir: profileDir}
	h.servers = append(h.servers, s)
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	line, err := p.readLine(ctx)
	if err != nil {
		return nil, err
	}
	addr, ok := strings.CutPrefix(line, listeningLine)
	if !ok {
		return nil, fmt.Errorf("dataplane: %s printed %q, want %q<address>", name, line, listeningLine)
	}
	s.addr = addr
	if register != nil {
		_, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dataplane: %s address %q: %w", name, addr, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("dataplane: %s address %q: %w", name, addr, err)
		}
		if err := register(port); err != nil {
			return nil, err
		}
	}
	if line, err = p.readLine(ctx); err != nil {
		return nil, err
	}
	if line != servingLine {
		return nil, fmt.Errorf("dataplane: %s printed %q, want %q", name, line, servingLine)
	}
	return s, nil
}

// setup starts the servers the configurations need and configures the
// mesh for them.
func (h *harness) setup(ctx context.Context) error {
	h.clients = map[string]clientSpec{}
	want := map[string]bool{}
	for _, c := range h.cfg.Configs {
		want[c] = true
	}
	m := h.mesh
	if want[ConfigDirect] || want[ConfigXDS] {
		// One plaintext backend, called directly (a) and through xDS (b).
		register := func(port int) error { return nil }
		if want[ConfigXDS] {
			register = func(port int) error { return m.register(ctx, servicePlain, servicePlain+"-1", port, nil) }
		}
		s, err := h.startServer(ctx, "server-plain", nil, register, "--mode", ModePlain)
		if err != nil {
			return err
		}
		h.clients[ConfigDirect] = clientSpec{args: []string{"--mode", ModePlain, "--target", s.addr}, srv: s}
		if want[ConfigXDS] {
			bs, err := m.bootstrap("bench-client-b", "")
			if err != nil {
				return err
			}
			h.clients[ConfigXDS] = clientSpec{args: []string{"--mode", ModeXDS, "--target", "xds:///" + servicePlain},
				env: []string{"GRPC_XDS_BOOTSTRAP=" + bs}, srv: s}
		}
	}
	if want[ConfigTLS] {
		// A CA and, signed by it, the server's and the client's
		// certificates: ECDSA P-256, like SPIRE's default SVIDs.
		ca, err := pemca.New(h.cfg.Dir)
		if err != nil {
			return fmt.Errorf("dataplane: TLS files: %w", err)
		}
		files := func(name string, serial int64) ([]string, error) {
			cert, key, err := ca.Issue(name, serial)
			if err != nil {
				return nil, fmt.Errorf("dataplane: TLS files: %w", err)
			}
			return []string{"--ca", ca.CertFile(), "--cert", cert, "--key", key}, nil
		}
		serverFiles, err := files(tlsServerName, 2)
		if err != nil {
			return err
		}
		clientFiles, err := files("bench-client", 3)
		if err != nil {
			return err
		}
		s, err := h.startServer(ctx, "server-tls", nil, nil, append([]string{"--mode", ModeTLS}, serverFiles...)...)
		if err != nil {
			return err
		}
		h.clients[ConfigTLS] = clientSpec{args: append([]string{"--mode", ModeTLS, "--target", s.addr, "--server-name", tlsServerName}, clientFiles...), srv: s}
	}
	if want[ConfigXDSMTLS] || want[ConfigXDSMTLSPolicy] {
		if err := m.registerSVID(ctx, serviceClient); err != nil {
			return err
		}
	}
	for _, x := range []struct {
		config, service string
	}{{ConfigXDSMTLS, serviceMTLS}, {ConfigXDSMTLSPolicy, servicePolicy}} {
		if !want[x.config] {
			continue
		}
		if err := m.registerSVID(ctx, x.service); err != nil {
			return err
		}
		if x.config == ConfigXDSMTLSPolicy {
			if err := m.allow(ctx, x.service, serviceClient); err != nil {
				return err
			}
			if err := m.setRetryPolicy(ctx, x.service); err != nil {
				return err
			}
		}
		serverBS, err := m.bootstrap(x.service+"-1", x.service)
		if err != nil {
			return err
		}
		s, err := h.startServer(ctx, "server-"+x.config, []string{"GRPC_XDS_BOOTSTRAP=" + serverBS}, func(port int) error {
			return m.register(ctx, x.service, x.service+"-1", port, map[string]string{"trellis-mtls": "true"})
		}, "--mode", ModeXDS)
		if err != nil {
			return err
		}
		clientBS, err := m.bootstrap("bench-client-"+x.config, serviceClient)
		if err != nil {
			return err
		}
		h.clients[x.config] = clientSpec{args: []string{"--mode", ModeXDS, "--target", "xds:///" + x.service},
			env: []string{"GRPC_XDS_BOOTSTRAP=" + clientBS}, srv: s}
	}
	return nil
}

// measure runs every load of one configuration with a new client process.
func (h *harness) measure(ctx context.Context, config string, round int) (RunResult, error) {
	spec := h.clients[config]
	run := RunResult{Config: config, Round: round}
	srvPID := spec.srv.proc.pid()
	if err := ResetPeakRSS(srvPID); err != nil {
		return run, err
	}
	profiling := h.cfg.ProfileDir != "" && round == 1
	args := append(append(append([]string{}, h.cfg.Worker[1:]...), "client"), spec.args...)
	env := append(append([]string{}, h.cfg.WorkerEnv...), spec.env...)
	name := fmt.Sprintf("client-%s-%d", config, round)
	p, err := startProcess(h.cfg.Dir, name, env, true, h.cfg.Worker[0], args...)
	if err != nil {
		return run, err
	}
	// On the early returns; the normal path stops it below and reports.
	defer func() { _ = p.stop() }()
	readyCtx, cancel := context.WithTimeout(ctx, startTimeout)
	line, err := p.readLine(readyCtx)
	cancel()
	if err != nil {
		return run, err
	}
	if err := json.Unmarshal([]byte(line), &run.Ready); err != nil {
		return run, fmt.Errorf("%s: ready line %q: %w", name, line, err)
	}
	if run.Ready.Error != "" {
		return run, fmt.Errorf("%s: no call succeeded: %s", name, run.Ready.Error)
	}
	warm := Load{Kind: KindClosed, Concurrency: 16, Duration: h.cfg.Warmup}
	if _, err := h.phase(ctx, p, spec.srv, warm, ""); err != nil {
		return run, fmt.Errorf("warmup: %w", err)
	}
	for _, l := range h.cfg.Loads {
		profile := ""
		if profiling && l.Name() == h.cfg.ProfileLoad {
			profile = filepath.Join(h.cfg.ProfileDir, config+"-"+l.Name())
		}
		ph, err := h.phase(ctx, p, spec.srv, l, profile)
		if err != nil {
			return run, fmt.Errorf("%s: %w", l.Name(), err)
		}
		run.Phases = append(run.Phases, ph)
		h.log.Info("phase", "round", round, "config", config, "load", l.Name(),
			"calls_per_s", int(ph.CallsPerSecond()), "errors", ph.Result.Errors, "p99", quantile(ph.Result.Latency, 0.99))
	}
	cu, err := ReadUsage(p.pid())
	if err != nil {
		return run, err
	}
	su, err := ReadUsage(srvPID)
	if err != nil {
		return run, err
	}
	run.ClientPeakRSS, run.ServerPeakRSS = cu.PeakRSS, su.PeakRSS
	if err := p.stop(); err != nil {
		return run, err
	}
	return run, nil
}

func quantile(e EncodedHistogram, q float64) time.Duration {
	h, err := e.Decode()
	if err != nil {
		return 0
	}
	return h.Quantile(q)
}

// phase runs one load on client p, measuring both processes' CPU; with
// profile set, it also takes CPU profiles of both into profile-*.pprof.
func (h *harness) phase(ctx context.Context, p *process, srv *server, l Load, profile string) (PhaseResult, error) {
	ph := PhaseResult{Load: l.Name()}
	srvPID := srv.proc.pid()
	if profile != "" {
		l.Profile = profile + "-client.pprof"
	}
	cmd, err := json.Marshal(l)
	if err != nil {
		return ph, err
	}
	cBefore, err := ReadUsage(p.pid())
	if err != nil {
		return ph, err
	}
	sBefore, err := ReadUsage(srvPID)
	if err != nil {
		return ph, err
	}
	if profile != "" {
		if err := srv.startProfile(profile + "-server.pprof"); err != nil {
			return ph, err
		}
	}
	if _, err := fmt.Fprintf(p.stdin, "%s\n", cmd); err != nil {
		return ph, fmt.Errorf("send load to %s: %w", p.name, err)
	}
	lctx, cancel := context.WithTimeout(ctx, l.Duration+callTimeout+30*time.Second)
	line, err := p.readLine(lctx)
	cancel()
	if err != nil {
		return ph, err
	}
	cAfter, err := ReadUsage(p.pid())
	if err != nil {
		return ph, err
	}
	sAfter, err := ReadUsage(srvPID)
	if err != nil {
		return ph, err
	}
	if err := json.Unmarshal([]byte(line), &ph.Result); err != nil {
		return ph, fmt.Errorf("result %q: %w", line, err)
	}
	ph.ClientCPU, ph.ServerCPU = cAfter.CPU-cBefore.CPU, sAfter.CPU-sBefore.CPU
	if profile != "" {
		if err := srv.stopProfile(); err != nil {
			return ph, err
		}
	}
	return ph, nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadAverage()}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(raw))
	}
	return m
}

func loadAverage() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(raw) + " 0")[0], 64)
	return f
}

// tlsServerName is the DNS name in the TLS server certificate of (c).
const tlsServerName = "bench-server"
