package main

// The controlplane subcommand: real ADS streams (internal/loadgen) against
// the real `trellis server` binary and a stock Consul agent holding a
// generated catalog. See controlplaneUsage for what it measures and how.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/loadgen"
)

const controlplaneUsage = `Usage: trellis-bench controlplane [flags]

For each catalog size, starts a stock consul agent -dev on loopback ports,
its HTTPS API enabled beside its HTTP API (with a certificate from a CA made
for the run), registers the catalog (services svc-00000... with -instances
instances each, one check per instance) through /v1/txn over HTTP, starts
the real trellis server, pointed at Consul's HTTPS address (or with
-consul-scheme http its HTTP address), and waits for /readyz. It then opens
ADS streams (LDS -> RDS -> CDS -> EDS, every response ACKed), stream k
watching service k mod services, in steps of -streams, and at each step
measures:

  - trellis RSS (/proc/<pid>/status VmRSS), and its slope between steps;
  - idle trellis CPU (/proc/<pid>/stat) and Consul requests per minute
    (trellis_consul_requests_total from trellis /metrics without the index
    reads of sweeps, trellis_catalog_index_probes_total, which are reported
    apart; else the agent's consul_api_http_count without the benchmark's
    own requests), and over -consul-window at the first and last step of
    the largest catalog;
  - -changes single changes, one at a time, alternating a new instance and a
    check going critical: push latency from just before the Consul write to
    the EDS response at the last stream watching the service, bytes and
    responses per change per watching stream, responses received by streams
    not watching it (must be 0), trellis CPU per change (minus idle CPU);

then, at the largest step, churn at -churn-rate changes/s to distinct
services for -churn-duration (CPU, Consul requests/min, push latency), and
a fan-out: the streams replaced by as many streams all watching one
service, and -fanout-changes changes to it (latency to the last of all streams).

Bytes are the encoded sizes of the DiscoveryResponse messages (gRPC and
HTTP/2 framing add 14 bytes per message). Each stream has its own gRPC
connection unless -streams-per-conn says otherwise, as each grpc-go client
has. The load generator runs on the same machine as trellis and Consul: its
own CPU per change is reported next to trellis's.

Results go to stdout as a table and, with -o, to a JSON file.

Flags:
`

// cpSettings are the parameters of a run.
type cpSettings struct {
	Services          []int   `json:"services"`
	Streams           []int   `json:"streams"`
	Instances         int     `json:"instances_per_service"`
	Changes           int     `json:"changes"`
	FanoutChanges     int     `json:"fanout_changes"`
	ChurnRate         float64 `json:"churn_rate_per_s"`
	ChurnDurationS    float64 `json:"churn_duration_s"`
	IdleS             float64 `json:"idle_s"`
	ConsulWindowS     float64 `json:"consul_window_s,omitempty"`
	StreamsPerConn    int     `json:"streams_per_conn"`
	Fanout            bool    `json:"fanout"`
	Quick             bool    `json:"quick"`
	PushTimeoutS      float64 `json:"push_timeout_s"`
	ConsulBinary      string  `json:"consul_binary"`
	TrellisBinary     string  `json:"trellis_binary"`
	ConsulStockLimits bool    `json:"consul_stock_limits"`
	// ConsulScheme is how trellis reaches Consul: "https" (its HTTPS API,
	// where Consul serves HTTP/2) or "http".
	ConsulScheme string `json:"consul_scheme"`
}

type cpResult struct {
	Benchmark string       `json:"benchmark"`
	Started   time.Time    `json:"started"`
	DurationS float64      `json:"duration_s"`
	Machine   machineInfo  `json:"machine"`
	Settings  cpSettings   `json:"settings"`
	Runs      []catalogRun `json:"runs"`
	Targets   []target     `json:"targets"`
	// Problems lists what went wrong: failed streams, NACKs, pushes that
	// never arrived, pushes to streams that do not watch the change.
	Problems []string `json:"problems"`
}

type machineInfo struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Kernel    string `json:"kernel,omitempty"`
	CPUModel  string `json:"cpu_model,omitempty"`
}

type catalogRun struct {
	Services            int     `json:"services"`
	InstancesPerService int     `json:"instances_per_service"`
	CatalogWriteS       float64 `json:"catalog_write_s"`
	TrellisReadyS       float64 `json:"trellis_ready_s"`
	// TrellisReadyCPUS is the CPU trellis used from its start to /readyz:
	// reading and translating the whole catalog once.
	TrellisReadyCPUS float64 `json:"trellis_ready_cpu_s"`
	// ConsulRequestsSource names the counter Consul requests come from.
	ConsulRequestsSource string        `json:"consul_requests_source"`
	Phases               []streamPhase `json:"phases"`
	RSSPerStream         []rssSlope    `json:"rss_per_stream"`
	Churn                *churnResult  `json:"churn,omitempty"`
	Fanout               *fanoutResult `json:"fanout,omitempty"`
	Error                string        `json:"error,omitempty"`
}

type streamPhase struct {
	Streams            int     `json:"streams"`
	Conns              int     `json:"conns"`
	WatchersPerService int     `json:"watchers_per_service"`
	ReadyS             float64 `json:"ready_s"`
	TrellisRSSBytes    int64   `json:"trellis_rss_bytes"`
	// TrellisRSSBeforeBytes is trellis's RSS just before this step's
	// streams were added, after the previous step's changes.
	TrellisRSSBeforeBytes int64 `json:"trellis_rss_before_bytes"`
	// TrellisHeapGoalBytes is go_memstats_next_gc_bytes from trellis's
	// /metrics: twice the heap live at the last GC, with GOGC=100.
	TrellisHeapGoalBytes int64   `json:"trellis_heap_goal_bytes"`
	GeneratorRSSBytes    int64   `json:"generator_rss_bytes"`
	IdleCPUCores         float64 `json:"idle_cpu_cores"`
	ConsulReqPerMin      float64 `json:"consul_requests_per_min_idle"`
	// ConsulReqPerMinLong is the same over -consul-window, measured at the
	// first and the last step of the largest catalog: long enough for the
	// once-a-minute requests (blocking queries timing out, the ACL
	// check) to be counted once each, whatever the phase.
	ConsulReqPerMinLong float64     `json:"consul_requests_per_min_long,omitempty"`
	Single              changeStats `json:"single"`
	// Generator is the load generator's totals at the end of the step.
	Generator loadgen.Stats `json:"generator"`
}

// rssSlope is trellis's memory per stream between two steps: the RSS
// growth while the streams were added (RSS just before adding them to RSS
// once they are ready), and the growth of the GC's heap goal between the
// steps (stale when no GC ran since the streams opened).
type rssSlope struct {
	FromStreams       int     `json:"from_streams"`
	ToStreams         int     `json:"to_streams"`
	BytesPerStream    float64 `json:"bytes_per_stream"`
	HeapGoalPerStream float64 `json:"heap_goal_bytes_per_stream"`
}

// dist summarises latencies in milliseconds.
type dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

type changeStats struct {
	Changes int            `json:"changes"`
	Kinds   map[string]int `json:"kinds"`
	// Latency is, per change, the time from just before the Consul write
	// to the EDS response at the last stream watching the service.
	Latency dist `json:"latency_last_watcher"`
	// Write is how long Consul took to answer each write (part of
	// Latency).
	Write dist `json:"consul_write"`
	// AllReceipts is the same over every watching stream's receipt.
	AllReceipts                 dist    `json:"latency_all_receipts"`
	BytesPerChangePerClient     float64 `json:"bytes_per_change_per_client"`
	ResponsesPerChangePerClient float64 `json:"responses_per_change_per_client"`
	ResponsesToNonWatchers      int64   `json:"responses_to_non_watchers"`
	Missed                      int     `json:"missed"`
	CPUMsPerChange              float64 `json:"cpu_ms_per_change"`
	CPUMsPerChangeRaw           float64 `json:"cpu_ms_per_change_raw"`
	// GeneratorCPUMsPerChange is the load generator's own CPU per change
	// (it shares the machine with trellis and Consul).
	GeneratorCPUMsPerChange float64 `json:"generator_cpu_ms_per_change"`
	// ByKind splits Latency and trellis CPU by kind of change: a check
	// changing status reaches Trellis through the health detector, a new
	// passing instance through an index sweep.
	ByKind map[string]kindStats `json:"by_kind,omitempty"`
}

// kindStats is the part of changeStats of one kind of change.
type kindStats struct {
	Changes int  `json:"changes"`
	Latency dist `json:"latency_last_watcher"`
	// CPUMsPerChange is trellis's CPU from the write to the last push
	// (and 50 ms more), minus its idle CPU over that time.
	CPUMsPerChange float64 `json:"cpu_ms_per_change"`
}

type churnResult struct {
	Streams         int     `json:"streams"`
	RatePerS        float64 `json:"rate_per_s"`
	DurationS       float64 `json:"duration_s"`
	Changes         int     `json:"changes"`
	AchievedPerS    float64 `json:"achieved_rate_per_s"`
	DistinctSvcs    int     `json:"distinct_services"`
	CPUCores        float64 `json:"cpu_cores"`
	GeneratorCores  float64 `json:"generator_cpu_cores"`
	ConsulReqPerMin float64 `json:"consul_requests_per_min"`
	Latency         dist    `json:"latency_last_watcher"`
	Write           dist    `json:"consul_write"`
	Missed          int     `json:"missed"`
}

type fanoutResult struct {
	Streams int         `json:"streams"`
	Service string      `json:"service"`
	ReadyS  float64     `json:"ready_s"`
	Changes changeStats `json:"changes"`
	// ServerSent is, per change, the time from the Consul write to the
	// moment trellis handed the last stream its response (from
	// /debug/xds/streams, read after each change and left out of the CPU
	// figures, as is the garbage collection it causes, which ends before
	// the next change): the difference to Changes.Latency is the time
	// the responses spent in transit and in the load generator, which
	// shares the machine.
	ServerSent dist `json:"server_sent_last_stream"`
	// ServerSentError says why ServerSent is missing, if it is.
	ServerSentError string `json:"server_sent_error,omitempty"`
}

type target struct {
	Name     string  `json:"name"`
	Goal     string  `json:"goal"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Met      bool    `json:"met"`
}

// intList is a comma-separated list of positive integers.
type intList []int

func (l *intList) String() string {
	var s []string
	for _, v := range *l {
		s = append(s, strconv.Itoa(v))
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("%q: accepted: comma-separated positive integers, e.g. 100,1000", v)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	*l = slices.Compact(out)
	return nil
}

func runControlplane(ctx context.Context, args []string) error {
	return controlplaneMain(ctx, args, os.Stdout)
}

func controlplaneMain(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), controlplaneUsage)
		fs.PrintDefaults()
	}
	set := cpSettings{}
	services := intList{100, 1000, 10000}
	streams := intList{100, 1000, 10000}
	fs.Var(&services, "services", "catalog sizes, in services (default 100,1000,10000; -quick: 100,1000)")
	fs.Var(&streams, "streams", "stream counts, opened in steps (default 100,1000,10000; -quick: 100,1000)")
	fs.IntVar(&set.Instances, "instances", 10, "instances per service")
	fs.IntVar(&set.Changes, "changes", 20, "single changes measured per step, and in the fan-out (-quick: 10)")
	fs.IntVar(&set.FanoutChanges, "fanout-changes", 10, "changes measured in the fan-out (-quick: 6)")
	fs.Float64Var(&set.ChurnRate, "churn-rate", 50, "changes per second to distinct services during churn; 0 skips churn")
	churnDur := fs.Duration("churn-duration", 15*time.Second, "how long churn lasts (-quick: 5s)")
	idle := fs.Duration("idle", 10*time.Second, "idle window per step for idle CPU and Consul requests (-quick: 5s)")
	consulWindow := fs.Duration("consul-window", time.Minute, "window of the Consul requests compared between the first and the last step of the largest catalog (0: the idle window; -quick: 0)")
	fs.IntVar(&set.StreamsPerConn, "streams-per-conn", 1, "ADS streams per gRPC connection (1: one connection per client, as grpc-go)")
	fs.BoolVar(&set.Fanout, "fanout", true, "measure the fan-out of one service's changes to every stream at the largest step")
	fs.BoolVar(&set.Quick, "quick", false, "a short run: 100 and 1,000 services and streams, fewer changes, shorter windows")
	pushTimeout := fs.Duration("push-timeout", 10*time.Second, "how long to wait for a push before counting it missed")
	fs.StringVar(&set.ConsulBinary, "consul", "", "Consul binary (default: $TRELLIS_CONSUL_BIN, else ~/.cache/trellis/tools/consul-v1.16.1)")
	fs.StringVar(&set.ConsulScheme, "consul-scheme", consulSchemeHTTPS, "the Consul API trellis uses: https (Consul's HTTPS API, the only one where Consul serves HTTP/2) or http; the agent serves both either way")
	fs.StringVar(&set.TrellisBinary, "trellis", "", "trellis binary (default: built from ./cmd/trellis with go build)")
	out := fs.String("o", "", "write the results as JSON to this file")
	evaluate := fs.String("evaluate", "", "measure nothing: read the results in this JSON file, evaluate the targets again, print them and write the file back")
	workDir := fs.String("workdir", "", "directory for the processes' logs (default: a new temporary directory, removed when the run succeeds)")
	verbose := fs.Bool("v", true, "log progress to stderr (-v=false: only warnings)")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *evaluate != "" {
		return reevaluate(*evaluate, stdout)
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if set.Quick {
		if !explicit["services"] {
			services = intList{100, 1000}
		}
		if !explicit["streams"] {
			streams = intList{100, 1000}
		}
		if !explicit["changes"] {
			set.Changes = 10
		}
		if !explicit["fanout-changes"] {
			set.FanoutChanges = 6
		}
		if !explicit["churn-duration"] {
			*churnDur = 5 * time.Second
		}
		if !explicit["idle"] {
			*idle = 5 * time.Second
		}
		if !explicit["consul-window"] {
			*consulWindow = 0
		}
	}
	switch {
	case set.Instances < 1:
		return fmt.Errorf("-instances %d: accepted: 1 or more", set.Instances)
	case set.Changes < 1:
		return fmt.Errorf("-changes %d: accepted: 1 or more", set.Changes)
	case set.FanoutChanges < 1:
		return fmt.Errorf("-fanout-changes %d: accepted: 1 or more", set.FanoutChanges)
	case set.ChurnRate < 0:
		return fmt.Errorf("-churn-rate %g: accepted: 0 (no churn) or more", set.ChurnRate)
	case set.StreamsPerConn < 1:
		return fmt.Errorf("-streams-per-conn %d: accepted: 1 or more", set.StreamsPerConn)
	case *idle <= 0:
		return fmt.Errorf("-idle %s: accepted: a positive duration", *idle)
	case set.ConsulScheme != consulSchemeHTTPS && set.ConsulScheme != consulSchemeHTTP:
		return fmt.Errorf("-consul-scheme %q: accepted: %s, %s", set.ConsulScheme, consulSchemeHTTPS, consulSchemeHTTP)
	}
	set.Services, set.Streams = services, streams
	set.ChurnDurationS, set.IdleS, set.PushTimeoutS = churnDur.Seconds(), idle.Seconds(), pushTimeout.Seconds()
	set.ConsulWindowS = consulWindow.Seconds()
	set.ConsulStockLimits = true

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir := *workDir
	removeDir := false
	if dir == "" {
		d, err := os.MkdirTemp("", "trellis-bench-controlplane-")
		if err != nil {
			return err
		}
		dir, removeDir = d, true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	var err error
	if set.ConsulBinary, err = consulBinary(set.ConsulBinary); err != nil {
		return err
	}
	if set.TrellisBinary == "" {
		bin := filepath.Join(dir, "trellis")
		logger.Info("building trellis", "out", bin)
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/trellis-mesh/trellis/cmd/trellis")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build trellis (or pass -trellis): %w", err)
		}
		set.TrellisBinary = bin
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	// The generator shares the machine with trellis and Consul: it spends
	// less of it on its own garbage collection with a larger heap.
	defer debug.SetGCPercent(debug.SetGCPercent(400))

	b := &cpBench{set: set, idle: *idle, consulWindow: *consulWindow, churnDur: *churnDur, pushTimeout: *pushTimeout, dir: dir, logger: logger}
	res := &cpResult{Benchmark: "controlplane", Started: time.Now().UTC(), Machine: machine(), Settings: set}
	for _, s := range set.Services {
		if err := ctx.Err(); err != nil {
			return err
		}
		run := b.catalogRun(ctx, s)
		res.Runs = append(res.Runs, run)
		if run.Error != "" {
			res.Problems = append(res.Problems, fmt.Sprintf("%d services: %s", s, run.Error))
		}
	}
	res.DurationS = time.Since(res.Started).Seconds()
	res.Problems = append(res.Problems, problems(res)...)
	res.Targets = evaluateTargets(res)
	printTable(stdout, res)
	if *out != "" {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
	}
	if len(res.Problems) > 0 {
		return fmt.Errorf("%d problems (logs kept in %s):\n  %s", len(res.Problems), dir, strings.Join(res.Problems, "\n  "))
	}
	if removeDir {
		_ = os.RemoveAll(dir)
	}
	return nil
}

func consulBinary(flagValue string) (string, error) {
	bin := flagValue
	if bin == "" {
		bin = os.Getenv("TRELLIS_CONSUL_BIN")
	}
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locate the Consul binary: %w; pass -consul or set TRELLIS_CONSUL_BIN", err)
		}
		bin = filepath.Join(home, ".cache", "trellis", "tools", "consul-v1.16.1")
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("Consul binary %s is not an executable file: run `make tools`, pass -consul or set TRELLIS_CONSUL_BIN", bin)
	}
	return bin, nil
}

// cpBench holds what every catalog run shares.
type cpBench struct {
	set  cpSettings
	idle time.Duration
	// consulWindow: see phase.ConsulReqPerMinLong.
	consulWindow time.Duration
	churnDur     time.Duration
	pushTimeout  time.Duration
	dir          string
	logger       *slog.Logger
}

// catalogRun measures one catalog size; a failure is recorded in the
// result rather than ending the whole benchmark.
func (b *cpBench) catalogRun(ctx context.Context, services int) catalogRun {
	run := catalogRun{Services: services, InstancesPerService: b.set.Instances}
	if err := b.measureCatalog(ctx, &run); err != nil {
		run.Error = err.Error()
	}
	return run
}

func (b *cpBench) measureCatalog(ctx context.Context, run *catalogRun) error {
	dir := filepath.Join(b.dir, fmt.Sprintf("services-%d", run.Services))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log := b.logger.With("services", run.Services)
	consul, err := startConsul(ctx, b.set.ConsulBinary, dir)
	if err != nil {
		return err
	}
	defer func() {
		if err := consul.stop(); err != nil {
			log.Warn("stop consul", "error", err)
		}
	}()
	start := time.Now()
	cat, err := generateCatalog(ctx, consul.client, run.Services, b.set.Instances)
	if err != nil {
		return err
	}
	run.CatalogWriteS = time.Since(start).Seconds()
	log.Info("catalog written", "seconds", run.CatalogWriteS)

	trellis, readyIn, err := startTrellis(ctx, b.set.TrellisBinary, consul.endpoint(b.set.ConsulScheme), dir, 5*time.Minute)
	if err != nil {
		return err
	}
	defer func() {
		if err := trellis.stop(); err != nil {
			log.Warn("stop trellis", "error", err)
		}
	}()
	run.TrellisReadyS = readyIn.Seconds()
	if cpu, err := procCPU(trellis.pid()); err == nil {
		run.TrellisReadyCPUS = cpu.Seconds()
	}
	log.Info("trellis ready", "seconds", run.TrellisReadyS)

	m := &meter{consul: consul, trellis: trellis}
	if run.ConsulRequestsSource, err = m.source(ctx); err != nil {
		return err
	}

	gen, err := loadgen.New(loadgen.Config{
		Target: trellis.xdsAddr, StreamsPerConn: b.set.StreamsPerConn, NodeIDPrefix: "bench",
		// Enough for every push of a run to one stream, with margin.
		MaxEventsPerStream: 4096,
		Logger:             log.With("component", "loadgen"),
	})
	if err != nil {
		return err
	}
	defer func() {
		if gen != nil {
			_ = gen.Close()
		}
	}()

	offset := 0 // services changed so far, so each step changes others
	largest := run.Services == slices.Max(b.set.Services)
	for step, n := range b.set.Streams {
		added := n - gen.Len()
		ph := streamPhase{Streams: n}
		svcs := make([]string, added)
		for k := range added {
			svcs[k] = serviceName((gen.Len() + k) % run.Services)
		}
		if gen.Len() > 0 {
			// The previous step's changes leave garbage: measure from
			// here, not from the previous step's reading.
			sleep(ctx, time.Second)
			if ph.TrellisRSSBeforeBytes, err = medianRSS(ctx, trellis.pid()); err != nil {
				return err
			}
		}
		readyIn, err := openStreams(ctx, gen, svcs)
		if err != nil {
			return fmt.Errorf("%d streams: %w", n, err)
		}
		ph.ReadyS = readyIn.Seconds()
		ph.Conns = gen.Stats().Conns
		ph.WatchersPerService = (n + run.Services - 1) / run.Services
		log.Info("streams ready", "streams", n, "seconds", ph.ReadyS)

		// Let the server settle (GC, stream bookkeeping) before reading
		// its memory and idle costs.
		sleep(ctx, 2*time.Second)
		if ph.TrellisRSSBytes, err = medianRSS(ctx, trellis.pid()); err != nil {
			return err
		}
		if ph.GeneratorRSSBytes, err = procRSS(os.Getpid()); err != nil {
			return err
		}
		if goal, err := trellis.gauge(ctx, "go_memstats_next_gc_bytes"); err == nil {
			ph.TrellisHeapGoalBytes = int64(goal)
		}
		idleCPU, idleReq, err := m.window(ctx, b.idle)
		if err != nil {
			return err
		}
		ph.IdleCPUCores = idleCPU
		ph.ConsulReqPerMin = idleReq
		if b.consulWindow > 0 && largest && (step == 0 || step == len(b.set.Streams)-1) {
			if _, ph.ConsulReqPerMinLong, err = m.window(ctx, b.consulWindow); err != nil {
				return err
			}
		}

		watched := min(n, run.Services)
		byService := watchersByService(gen)
		var changes []func() (change, error)
		for c := range b.set.Changes {
			svc := (offset + c) % watched
			if c%2 == 0 {
				changes = append(changes, func() (change, error) { return cat.registerInstance(ctx, svc) })
			} else {
				changes = append(changes, func() (change, error) { return cat.failCheck(ctx, svc) })
			}
		}
		offset += b.set.Changes
		ph.Single, err = b.measureChanges(ctx, gen, m, byService, changes, idleCPU)
		if err != nil {
			return fmt.Errorf("%d streams: %w", n, err)
		}
		ph.Generator = gen.Stats()
		log.Info("single changes measured", "streams", n, "p99_ms", ph.Single.Latency.P99)
		run.Phases = append(run.Phases, ph)
		if err := gen.Err(); err != nil {
			return err
		}
		if err := trellis.alive(); err != nil {
			return err
		}
	}
	for i := 1; i < len(run.Phases); i++ {
		a, z := run.Phases[i-1], run.Phases[i]
		run.RSSPerStream = append(run.RSSPerStream, rssSlope{
			FromStreams: a.Streams, ToStreams: z.Streams,
			BytesPerStream:    float64(z.TrellisRSSBytes-z.TrellisRSSBeforeBytes) / float64(z.Streams-a.Streams),
			HeapGoalPerStream: float64(z.TrellisHeapGoalBytes-a.TrellisHeapGoalBytes) / float64(z.Streams-a.Streams),
		})
	}

	if b.set.ChurnRate > 0 && len(run.Phases) > 0 {
		last := run.Phases[len(run.Phases)-1]
		churn, err := b.churn(ctx, gen, m, cat, min(last.Streams, run.Services), offset)
		if err != nil {
			return fmt.Errorf("churn: %w", err)
		}
		run.Churn = churn
		log.Info("churn measured", "cpu_cores", churn.CPUCores, "p99_ms", churn.Latency.P99)
	}

	if b.set.Fanout && len(run.Phases) > 0 {
		last := run.Phases[len(run.Phases)-1]
		n := last.Streams
		if err := gen.Close(); err != nil {
			return err
		}
		gen = nil
		fan, err := b.fanout(ctx, trellis, m, cat, n, last.IdleCPUCores, log)
		if err != nil {
			return fmt.Errorf("fan-out: %w", err)
		}
		run.Fanout = fan
		log.Info("fan-out measured", "streams", n, "p99_ms", fan.Changes.Latency.P99)
	}
	return trellis.alive()
}

// openStreams adds one stream per service name, a few dialers at once,
// and waits until every stream of gen is ready.
func openStreams(ctx context.Context, gen *loadgen.Generator, svcs []string) (time.Duration, error) {
	start := time.Now()
	const dialers = 8
	g, gctx := errgroup.WithContext(ctx)
	chunk := (len(svcs) + dialers - 1) / dialers
	for i := 0; i < len(svcs); i += chunk {
		part := svcs[i:min(i+chunk, len(svcs))]
		g.Go(func() error { return gen.Add(gctx, part) })
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute+time.Duration(gen.Len())*10*time.Millisecond)
	defer cancel()
	if err := gen.WaitReady(wctx); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// watchersByService maps each service to the streams watching it.
func watchersByService(gen *loadgen.Generator) map[string][]int {
	out := map[string][]int{}
	for k := range gen.Len() {
		svc := gen.Service(k)
		out[svc] = append(out[svc], k)
	}
	return out
}

// fanout opens n streams all watching one service and measures changes to
// it reaching every one.
func (b *cpBench) fanout(ctx context.Context, trellis *trellisServer, m *meter, cat *catalogState, n int, idleCPU float64, log *slog.Logger) (*fanoutResult, error) {
	gen, err := loadgen.New(loadgen.Config{
		Target: trellis.xdsAddr, StreamsPerConn: b.set.StreamsPerConn, NodeIDPrefix: "bench-fanout",
		MaxEventsPerStream: 4096, Logger: log.With("component", "loadgen"),
	})
	if err != nil {
		return nil, err
	}
	defer gen.Close()
	const hot = 0
	svcs := make([]string, n)
	for k := range svcs {
		svcs[k] = serviceName(hot)
	}
	readyIn, err := openStreams(ctx, gen, svcs)
	if err != nil {
		return nil, err
	}
	sleep(ctx, 2*time.Second)
	settle(ctx, trellis.pid(), idleCPU)
	var changes []func() (change, error)
	for c := range b.set.FanoutChanges {
		if c%2 == 0 {
			changes = append(changes, func() (change, error) { return cat.registerInstance(ctx, hot) })
		} else {
			changes = append(changes, func() (change, error) { return cat.failCheck(ctx, hot) })
		}
	}
	var sent []float64
	var sentErr error
	after := func(written time.Time) {
		if sentErr != nil {
			return
		}
		at, err := trellis.edsSentAt(ctx)
		if err != nil {
			sentErr = err
			return
		}
		var last time.Time
		for k := range gen.Len() {
			t, ok := at[gen.NodeID(k)]
			if !ok || t.Before(written) {
				sentErr = fmt.Errorf("stream %s: no EDS response sent after the write", gen.NodeID(k))
				return
			}
			if t.After(last) {
				last = t
			}
		}
		sent = append(sent, msOf(last.Sub(written)))
	}
	stats, err := b.measureChangesThen(ctx, gen, m, watchersByService(gen), changes, idleCPU, after)
	if err != nil {
		return nil, err
	}
	if err := gen.Err(); err != nil {
		return nil, err
	}
	res := &fanoutResult{Streams: n, Service: serviceName(hot), ReadyS: readyIn.Seconds(), Changes: stats}
	if sentErr != nil {
		res.ServerSentError = sentErr.Error()
	} else {
		res.ServerSent = summarize(sent)
	}
	return res, nil
}

// measureChanges makes the changes one at a time; after each it waits for
// an EDS response at every stream watching the changed service (or
// pushTimeout), then counts what every stream received since the write.
func (b *cpBench) measureChanges(ctx context.Context, gen *loadgen.Generator, m *meter, byService map[string][]int, changes []func() (change, error), idleCPU float64) (changeStats, error) {
	return b.measureChangesThen(ctx, gen, m, byService, changes, idleCPU, nil)
}

// measureChangesThen is measureChanges with after called once each
// change has reached its streams, with the wall-clock time of the write;
// the CPU trellis spends while after runs is left out of the CPU figures.
func (b *cpBench) measureChangesThen(ctx context.Context, gen *loadgen.Generator, m *meter, byService map[string][]int, changes []func() (change, error), idleCPU float64, after func(written time.Time)) (changeStats, error) {
	st := changeStats{Changes: len(changes), Kinds: map[string]int{}}
	var last, all, writes []float64
	var bytes, responses, clients float64
	cpu0, err := procCPU(m.trellis.pid())
	if err != nil {
		return st, err
	}
	gcpu0, err := procCPU(os.Getpid())
	if err != nil {
		return st, err
	}
	start := time.Now()
	total := gen.Len()
	var excluded, genExcluded, excludedWall time.Duration
	late := map[int]bool{} // services whose push missed the timeout
	kindLatency := map[string][]float64{}
	kindCPU := map[string]float64{}
	for _, do := range changes {
		gen.ResetEvents()
		cpuBefore, err := procCPU(m.trellis.pid())
		if err != nil {
			return st, err
		}
		t0 := time.Now()
		at := gen.Since(t0)
		ch, err := do()
		if err != nil {
			return st, err
		}
		writes = append(writes, msSince(t0))
		st.Kinds[ch.kind]++
		watchers := byService[serviceName(ch.service)]
		lat, missed := waitPushes(ctx, gen, watchers, at, b.pushTimeout)
		st.Missed += missed
		all = append(all, lat...)
		switch {
		case missed > 0:
			// The last stream's latency is at least the timeout.
			last = append(last, msOf(b.pushTimeout))
		case len(lat) > 0:
			last = append(last, slices.Max(lat))
		}
		// Anything still on its way to a stream that does not watch the
		// service shows within a few milliseconds of the watchers' pushes.
		sleep(ctx, 50*time.Millisecond)
		isWatcher := make(map[int]bool, len(watchers))
		for _, k := range watchers {
			isWatcher[k] = true
			n, b := gen.CountAfter(k, at)
			responses += float64(n)
			bytes += float64(b)
			clients++
		}
		if missed > 0 {
			late[ch.service] = true
		}
		if cpuAfter, err := procCPU(m.trellis.pid()); err == nil {
			kindCPU[ch.kind] += max(0, (cpuAfter-cpuBefore).Seconds()-idleCPU*time.Since(t0).Seconds()) * 1000
		}
		kindLatency[ch.kind] = append(kindLatency[ch.kind], last[len(last)-1])
		for k := range total {
			// A push that missed its timeout may still arrive during a
			// later change: the streams it was for are not counted.
			if !isWatcher[k] && (len(late) == 0 || !late[serviceIndex(gen.Service(k))]) {
				n, _ := gen.CountAfter(k, at)
				st.ResponsesToNonWatchers += int64(n)
			}
		}
		if after != nil {
			c0, err := procCPU(m.trellis.pid())
			if err != nil {
				return st, err
			}
			g0, err := procCPU(os.Getpid())
			if err != nil {
				return st, err
			}
			a0 := time.Now()
			after(t0)
			// What after made trellis do (reading the status of every
			// stream) leaves garbage whose collection would otherwise
			// run during the next change: the next change starts from
			// a quiet trellis, as the first one does.
			settle(ctx, m.trellis.pid(), idleCPU)
			c1, err := procCPU(m.trellis.pid())
			if err != nil {
				return st, err
			}
			g1, err := procCPU(os.Getpid())
			if err != nil {
				return st, err
			}
			excluded += c1 - c0
			genExcluded += g1 - g0
			excludedWall += time.Since(a0)
		}
	}
	elapsed := time.Since(start) - excludedWall
	cpu1, err := procCPU(m.trellis.pid())
	if err != nil {
		return st, err
	}
	cpu1 -= excluded
	gcpu1, err := procCPU(os.Getpid())
	if err != nil {
		return st, err
	}
	st.GeneratorCPUMsPerChange = (gcpu1 - gcpu0 - genExcluded).Seconds() * 1000 / float64(len(changes))
	raw := (cpu1 - cpu0).Seconds() * 1000 / float64(len(changes))
	st.CPUMsPerChangeRaw = raw
	st.CPUMsPerChange = max(0, ((cpu1-cpu0).Seconds()-idleCPU*elapsed.Seconds())*1000/float64(len(changes)))
	st.Latency = summarize(last)
	st.ByKind = map[string]kindStats{}
	for kind, lat := range kindLatency {
		st.ByKind[kind] = kindStats{Changes: len(lat), Latency: summarize(lat), CPUMsPerChange: kindCPU[kind] / float64(len(lat))}
	}
	st.Write = summarize(writes)
	st.AllReceipts = summarize(all)
	if clients > 0 {
		st.BytesPerChangePerClient = bytes / clients
		st.ResponsesPerChangePerClient = responses / clients
	}
	return st, nil
}

// waitPushes waits until every watcher has an EDS response at or after at,
// and returns the latencies (ms) and how many never came within timeout.
func waitPushes(ctx context.Context, gen *loadgen.Generator, watchers []int, at, timeout time.Duration) ([]float64, int) {
	pending := slices.Clone(watchers)
	lat := make([]float64, 0, len(watchers))
	deadline := time.Now().Add(timeout)
	for {
		rest := pending[:0]
		for _, k := range pending {
			if ev, ok := gen.FirstAfter(k, loadgen.ClusterLoadAssignment, at); ok {
				lat = append(lat, msOf(ev.At-at))
			} else {
				rest = append(rest, k)
			}
		}
		pending = rest
		if len(pending) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return lat, len(pending)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// churn changes distinct services at the configured rate and measures CPU,
// Consul requests and push latency while it lasts.
func (b *cpBench) churn(ctx context.Context, gen *loadgen.Generator, m *meter, cat *catalogState, watched, offset int) (*churnResult, error) {
	res := &churnResult{Streams: gen.Len(), RatePerS: b.set.ChurnRate, DurationS: b.churnDur.Seconds()}
	byService := watchersByService(gen)
	gen.ResetEvents()
	type write struct {
		at   time.Duration
		took float64 // ms
		svc  int
	}
	var (
		mu     sync.Mutex
		writes []write
		visits = map[int]int{}
	)
	cpu0, req0, err := m.read(ctx)
	if err != nil {
		return nil, err
	}
	gcpu0, err := procCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / b.set.ChurnRate)
	g, gctx := errgroup.WithContext(ctx)
	// Writes in flight: enough that a slow Consul answer does not hold
	// back the schedule.
	g.SetLimit(64)
	for n := 0; ; n++ {
		// Change n is due at start + n*interval; a late one goes at once.
		due := start.Add(time.Duration(n) * interval)
		if due.Sub(start) >= b.churnDur {
			break
		}
		sleep(ctx, time.Until(due))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		svc := (offset + n) % watched
		visit := visits[svc]
		visits[svc]++
		g.Go(func() error {
			t0 := time.Now()
			if _, err := cat.toggleCheck(gctx, svc, visit); err != nil {
				return err
			}
			mu.Lock()
			writes = append(writes, write{at: gen.Since(t0), took: msSince(t0), svc: svc})
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	cpu1, req1, err := m.read(ctx)
	if err != nil {
		return nil, err
	}
	gcpu1, err := procCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	res.GeneratorCores = (gcpu1 - gcpu0).Seconds() / elapsed.Seconds()
	res.Changes = len(writes)
	res.DistinctSvcs = len(visits)
	res.AchievedPerS = float64(len(writes)) / elapsed.Seconds()
	res.CPUCores = (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	res.ConsulReqPerMin = (req1 - req0) / elapsed.Minutes()
	var last, took []float64
	for _, w := range writes {
		took = append(took, w.took)
		lat, missed := waitPushes(ctx, gen, byService[serviceName(w.svc)], w.at, b.pushTimeout)
		res.Missed += missed
		switch {
		case missed > 0:
			last = append(last, msOf(b.pushTimeout))
		case len(lat) > 0:
			last = append(last, slices.Max(lat))
		}
	}
	res.Latency = summarize(last)
	res.Write = summarize(took)
	return res, nil
}

// meter reads trellis's CPU and the Consul request counter.
type meter struct {
	consul  *consulAgent
	trellis *trellisServer
	// fromTrellis: the counter is trellis_consul_requests_total.
	fromTrellis bool
}

func (m *meter) source(ctx context.Context) (string, error) {
	_, ok, err := m.trellis.consulRequests(ctx)
	if err != nil {
		return "", err
	}
	m.fromTrellis = ok
	if ok {
		return "trellis_consul_requests_total", nil
	}
	return "consul consul_api_http_count (GET and others, without the benchmark's own paths)", nil
}

func (m *meter) requests(ctx context.Context) (float64, error) {
	if m.fromTrellis {
		v, _, err := m.trellis.consulRequests(ctx)
		return v, err
	}
	return m.consul.consulRequests(ctx)
}

func (m *meter) read(ctx context.Context) (time.Duration, float64, error) {
	cpu, err := procCPU(m.trellis.pid())
	if err != nil {
		return 0, 0, err
	}
	req, err := m.requests(ctx)
	return cpu, req, err
}

// window measures trellis CPU (cores) and Consul requests per minute over
// d with nothing changing.
func (m *meter) window(ctx context.Context, d time.Duration) (float64, float64, error) {
	cpu0, req0, err := m.read(ctx)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	sleep(ctx, d)
	cpu1, req1, err := m.read(ctx)
	if err != nil {
		return 0, 0, err
	}
	el := time.Since(start)
	return (cpu1 - cpu0).Seconds() / el.Seconds(), (req1 - req0) / el.Minutes(), nil
}

// medianRSS reads a process's RSS three times, 500 ms apart.
func medianRSS(ctx context.Context, pid int) (int64, error) {
	var v []int64
	for i := range 3 {
		if i > 0 {
			sleep(ctx, 500*time.Millisecond)
		}
		r, err := procRSS(pid)
		if err != nil {
			return 0, err
		}
		v = append(v, r)
	}
	slices.Sort(v)
	return v[1], nil
}

// settle waits until process pid is quiet: a window of settleWindow in
// which it used no more than twice its idle CPU (idleCores, in cores), and
// at least 10 % of a core, which /proc's clock ticks can tell from idle.
// It gives up after settleMax: a process that never quiets down is
// measured as it is.
func settle(ctx context.Context, pid int, idleCores float64) {
	const (
		settleWindow = 200 * time.Millisecond
		settleMax    = 5 * time.Second
	)
	quiet := time.Duration(max(0.1, 2*idleCores) * float64(settleWindow))
	deadline := time.Now().Add(settleMax)
	prev, err := procCPU(pid)
	for err == nil && ctx.Err() == nil && time.Now().Before(deadline) {
		sleep(ctx, settleWindow)
		var cur time.Duration
		if cur, err = procCPU(pid); err == nil && cur-prev <= quiet {
			return
		}
		prev = cur
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msSince(t time.Time) float64 { return msOf(time.Since(t)) }

func summarize(ms []float64) dist {
	if len(ms) == 0 {
		return dist{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	q := func(p float64) float64 {
		// Nearest rank.
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return dist{N: len(s), P50: q(0.50), P99: q(0.99), Max: s[len(s)-1]}
}

func machine() machineInfo {
	mi := machineInfo{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		mi.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				mi.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return mi
}

// problems lists the correctness failures in a result.
func problems(res *cpResult) []string {
	var out []string
	for _, r := range res.Runs {
		check := func(where string, st changeStats) {
			if st.Missed > 0 {
				out = append(out, fmt.Sprintf("%d services, %s: %d pushes did not arrive within the push timeout", r.Services, where, st.Missed))
			}
			if st.ResponsesToNonWatchers > 0 {
				out = append(out, fmt.Sprintf("%d services, %s: %d responses reached streams not watching the changed service", r.Services, where, st.ResponsesToNonWatchers))
			}
		}
		for _, ph := range r.Phases {
			check(fmt.Sprintf("%d streams", ph.Streams), ph.Single)
			if g := ph.Generator; g.NACKs > 0 || g.Failed > 0 || g.DroppedEvents > 0 {
				out = append(out, fmt.Sprintf("%d services, %d streams: %d NACKs, %d failed streams, %d events dropped", r.Services, ph.Streams, g.NACKs, g.Failed, g.DroppedEvents))
			}
		}
		if r.Churn != nil && r.Churn.Missed > 0 {
			out = append(out, fmt.Sprintf("%d services, churn: %d pushes did not arrive within the push timeout", r.Services, r.Churn.Missed))
		}
		if r.Fanout != nil {
			check("fan-out", r.Fanout.Changes)
		}
	}
	return out
}

// reevaluate reads a result file, evaluates its targets again (the goals
// are a function of the recorded results), prints it and writes it back.
func reevaluate(path string, stdout io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-evaluate: %w", err)
	}
	var res cpResult
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("-evaluate %s: %w", path, err)
	}
	res.Targets = evaluateTargets(&res)
	printTable(stdout, &res)
	data, err = json.MarshalIndent(&res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// evaluateTargets compares the results with the control plane's goals.
func evaluateTargets(res *cpResult) []target {
	var out []target
	if len(res.Runs) == 0 {
		return nil
	}
	// Push p99 to the one stream watching a service, at every catalog
	// size (steps where each service has one watcher).
	// Each kind of change apart: a check changing status reaches Trellis
	// through a health detector, a new passing instance through a sweep.
	for _, r := range res.Runs {
		worst := map[string]float64{}
		for _, ph := range r.Phases {
			if ph.WatchersPerService != 1 {
				continue
			}
			if len(ph.Single.ByKind) == 0 && ph.Single.Latency.N > 0 {
				worst["any"] = max(worst["any"], ph.Single.Latency.P99)
			}
			for kind, k := range ph.Single.ByKind {
				if k.Latency.N > 0 {
					worst[kind] = max(worst[kind], k.Latency.P99)
				}
			}
		}
		for _, kind := range slices.Sorted(maps.Keys(worst)) {
			w := worst[kind]
			out = append(out, target{Name: fmt.Sprintf("push p99, one watching stream, %s changes, %d services", kind, r.Services), Goal: "<= 250 ms",
				Value: w, Measured: fmt.Sprintf("%.0f ms (worst step)", w), Met: w <= 250})
		}
		if f := r.Fanout; f != nil && f.Changes.Latency.N > 0 {
			v := f.Changes.Latency.P99
			out = append(out, target{Name: fmt.Sprintf("push p99 to the last of %d streams, %d services", f.Streams, r.Services), Goal: "<= 500 ms at 10,000 streams",
				Value: v, Measured: fmt.Sprintf("%.0f ms", v), Met: v <= 500})
		}
	}
	// CPU per change, churn and memory per stream are goals at the
	// largest catalog, where each service has one watcher at every step
	// and churn reaches distinct services; smaller catalogs' figures are
	// printed above (with 10,000 streams on 100 services, each change
	// goes to 100 streams, and churn comes back to the same services).
	largest := 0
	for _, r := range res.Runs {
		largest = max(largest, r.Services)
	}
	for _, r := range res.Runs {
		if r.Services != largest {
			continue
		}
		if len(r.Phases) > 0 {
			ph := r.Phases[len(r.Phases)-1]
			v := ph.Single.CPUMsPerChange
			out = append(out, target{Name: fmt.Sprintf("trellis CPU per single-instance change, %d services, %d streams", r.Services, ph.Streams), Goal: "<= 20 ms at 10,000 services",
				Value: v, Measured: fmt.Sprintf("%.1f ms (raw %.1f ms)", v, ph.Single.CPUMsPerChangeRaw), Met: v <= 20})
			for _, kind := range slices.Sorted(maps.Keys(ph.Single.ByKind)) {
				k := ph.Single.ByKind[kind]
				out = append(out, target{Name: fmt.Sprintf("  of which %s changes", kind), Goal: "<= 20 ms at 10,000 services",
					Value: k.CPUMsPerChange, Measured: fmt.Sprintf("%.1f ms", k.CPUMsPerChange), Met: k.CPUMsPerChange <= 20})
			}
		}
		if c := r.Churn; c != nil {
			out = append(out, target{Name: fmt.Sprintf("trellis CPU during churn at %.0f changes/s, %d services", c.AchievedPerS, r.Services), Goal: "< 0.5 core",
				Value: c.CPUCores, Measured: fmt.Sprintf("%.2f cores", c.CPUCores), Met: c.CPUCores < 0.5})
			out = append(out, target{Name: fmt.Sprintf("push p99 during churn, %d services", r.Services), Goal: "<= 500 ms",
				Value: c.Latency.P99, Measured: fmt.Sprintf("%.0f ms", c.Latency.P99), Met: c.Latency.N > 0 && c.Latency.P99 <= 500})
		}
		if n := len(r.RSSPerStream); n > 0 {
			s := r.RSSPerStream[n-1]
			kib := s.BytesPerStream / 1024
			out = append(out, target{Name: fmt.Sprintf("trellis RSS per stream, %d -> %d streams, %d services", s.FromStreams, s.ToStreams, r.Services), Goal: "<= 48 KiB",
				Value: kib, Measured: fmt.Sprintf("%.1f KiB (heap goal %.1f KiB)", kib, s.HeapGoalPerStream/1024), Met: kib <= 48})
		}
		if n := len(r.Phases); n > 1 {
			a, z := r.Phases[0], r.Phases[n-1]
			// Unchanged within the counter's resolution over the idle window
			// (one request per window) or within 10 %.
			res1 := 1 / (res.Settings.IdleS / 60)
			av, zv, window := a.ConsulReqPerMin, z.ConsulReqPerMin, "idle window"
			if a.ConsulReqPerMinLong > 0 && z.ConsulReqPerMinLong > 0 {
				res1 = 1 / (res.Settings.ConsulWindowS / 60)
				av, zv, window = a.ConsulReqPerMinLong, z.ConsulReqPerMinLong, fmt.Sprintf("%.0f s window", res.Settings.ConsulWindowS)
			}
			diff := zv - av
			met := math.Abs(diff) <= max(res1, 0.1*av)
			out = append(out, target{Name: fmt.Sprintf("Consul requests/min idle, %d vs %d streams, %d services", a.Streams, z.Streams, r.Services), Goal: "unchanged",
				Value: diff, Measured: fmt.Sprintf("%.1f vs %.1f (%s, resolution %.1f)", av, zv, window, res1), Met: met})
		}
	}
	return out
}

func printTable(w io.Writer, res *cpResult) {
	scheme := res.Settings.ConsulScheme
	if scheme == "" {
		// Results recorded without the setting were measured over HTTP.
		scheme = consulSchemeHTTP
	}
	fmt.Fprintf(w, "control plane benchmark: %d CPUs, %s, trellis to Consul over %s, streams per connection %d, %d changes per step, took %.0f s\n",
		res.Machine.CPUs, res.Machine.GoVersion, scheme, res.Settings.StreamsPerConn, res.Settings.Changes, res.DurationS)
	for _, r := range res.Runs {
		fmt.Fprintf(w, "\n%d services x %d instances: catalog written in %.1f s, trellis ready in %.1f s (%.1f s CPU); Consul requests from %s\n",
			r.Services, r.InstancesPerService, r.CatalogWriteS, r.TrellisReadyS, r.TrellisReadyCPUS, r.ConsulRequestsSource)
		if r.Error != "" {
			fmt.Fprintf(w, "  ERROR: %s\n", r.Error)
		}
		if len(r.Phases) > 0 {
			fmt.Fprintf(w, "  %8s %6s %7s %9s %9s %8s %10s | %8s %8s %8s %8s %9s %8s %8s %6s %6s\n",
				"streams", "watch", "ready_s", "rss_MiB", "gen_MiB", "idle_cpu", "consul/min",
				"p50_ms", "p99_ms", "max_ms", "write_ms", "B/chg/cli", "cpu_ms", "gen_ms", "other", "missed")
		}
		for _, ph := range r.Phases {
			s := ph.Single
			fmt.Fprintf(w, "  %8d %6d %7.1f %9.1f %9.1f %8.3f %10.1f | %8.0f %8.0f %8.0f %8.0f %9.0f %8.1f %8.1f %6d %6d\n",
				ph.Streams, ph.WatchersPerService, ph.ReadyS, mib(ph.TrellisRSSBytes), mib(ph.GeneratorRSSBytes), ph.IdleCPUCores, ph.ConsulReqPerMin,
				s.Latency.P50, s.Latency.P99, s.Latency.Max, s.Write.P50, s.BytesPerChangePerClient, s.CPUMsPerChange, s.GeneratorCPUMsPerChange, s.ResponsesToNonWatchers, s.Missed)
		}
		for _, ph := range r.Phases {
			for _, kind := range slices.Sorted(maps.Keys(ph.Single.ByKind)) {
				k := ph.Single.ByKind[kind]
				fmt.Fprintf(w, "  %d streams, %-8s x%d: push p50 %.0f p99 %.0f max %.0f ms, trellis cpu %.1f ms/change\n",
					ph.Streams, kind, k.Changes, k.Latency.P50, k.Latency.P99, k.Latency.Max, k.CPUMsPerChange)
			}
		}
		for _, ph := range r.Phases {
			if ph.ConsulReqPerMinLong > 0 {
				fmt.Fprintf(w, "  %d streams: Consul %.1f requests/min over %.0f s idle\n", ph.Streams, ph.ConsulReqPerMinLong, res.Settings.ConsulWindowS)
			}
		}
		for _, s := range r.RSSPerStream {
			fmt.Fprintf(w, "  RSS per stream %d -> %d: %.1f KiB (heap goal %.1f KiB)\n", s.FromStreams, s.ToStreams, s.BytesPerStream/1024, s.HeapGoalPerStream/1024)
		}
		if c := r.Churn; c != nil {
			fmt.Fprintf(w, "  churn: %d changes at %.1f/s to %d services, %d streams: trellis %.2f cores (generator %.2f), Consul %.0f req/min, push p50 %.0f p99 %.0f max %.0f ms (Consul write p50 %.0f p99 %.0f ms), missed %d\n",
				c.Changes, c.AchievedPerS, c.DistinctSvcs, c.Streams, c.CPUCores, c.GeneratorCores, c.ConsulReqPerMin, c.Latency.P50, c.Latency.P99, c.Latency.Max, c.Write.P50, c.Write.P99, c.Missed)
		}
		if f := r.Fanout; f != nil {
			s := f.Changes
			if f.ServerSent.N > 0 {
				fmt.Fprintf(w, "  fan-out, trellis side: last response sent p50 %.0f p99 %.0f max %.0f ms after the write\n", f.ServerSent.P50, f.ServerSent.P99, f.ServerSent.Max)
			} else if f.ServerSentError != "" {
				fmt.Fprintf(w, "  fan-out, trellis side: not measured: %s\n", f.ServerSentError)
			}
			fmt.Fprintf(w, "  fan-out: %d streams on %s (ready in %.1f s): last stream p50 %.0f p99 %.0f max %.0f ms (Consul write p50 %.0f ms); all receipts p50 %.0f p99 %.0f ms; %.0f B/change/client; trellis cpu %.1f ms/change (generator %.1f); other %d, missed %d\n",
				f.Streams, f.Service, f.ReadyS, s.Latency.P50, s.Latency.P99, s.Latency.Max, s.Write.P50, s.AllReceipts.P50, s.AllReceipts.P99, s.BytesPerChangePerClient, s.CPUMsPerChange, s.GeneratorCPUMsPerChange, s.ResponsesToNonWatchers, s.Missed)
		}
	}
	if len(res.Targets) > 0 {
		fmt.Fprintf(w, "\ntargets:\n")
		for _, t := range res.Targets {
			mark := "MET   "
			if !t.Met {
				mark = "MISSED"
			}
			fmt.Fprintf(w, "  %s %-70s goal %-28s measured %s\n", mark, t.Name, t.Goal, t.Measured)
		}
	}
	for _, p := range res.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
