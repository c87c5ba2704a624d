package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// envWorker makes the test binary act as a worker process (WorkerMain).
const envWorker = "TRELLIS_DATAPLANE_TEST_WORKER"

var trellisBin string

func TestMain(m *testing.M) {
	if os.Getenv(envWorker) == "1" {
		if err := WorkerMain(context.Background(), os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "dataplane-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	trellisBin = filepath.Join(dir, "trellis")
	build := exec.Command("go", "build", "-o", trellisBin, "github.com/trellis-mesh/trellis/cmd/trellis")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build trellis:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tool returns the path of a pinned tool, from env or the tools directory.
func tool(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	dir := os.Getenv("TRELLIS_TOOLS_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(home, ".cache", "trellis", "tools")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found (set %s or run `make tools`): %v", name, env, err)
	}
	return p
}

// TestSmoke runs the whole harness briefly, with a real Consul, SPIRE,
// trellis server and worker processes, and checks that every configuration
// made successful calls under every load and that the report is complete.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	loads := []Load{
		{Kind: KindClosed, Concurrency: 4, Duration: 400 * time.Millisecond},
		{Kind: KindOpen, Rate: 200, Duration: 400 * time.Millisecond},
		{Kind: KindStream, Concurrency: 2, Duration: 400 * time.Millisecond},
	}
	rep, err := Run(ctx, Config{
		TrellisBin:     trellisBin,
		ConsulBin:      tool(t, "TRELLIS_CONSUL_BIN", "consul-v1.16.1"),
		SPIREServerBin: tool(t, "TRELLIS_SPIRE_SERVER_BIN", "spire-server-v1.13.3"),
		SPIREAgentBin:  tool(t, "TRELLIS_SPIRE_AGENT_BIN", "spire-agent-v1.13.3"),
		Worker:         []string{self},
		WorkerEnv:      []string{envWorker + "=1"},
		Rounds:         2,
		Loads:          loads,
		Warmup:         200 * time.Millisecond,
		ProfileDir:     filepath.Join(dir, "profiles"),
		Dir:            dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Report
	if err := json.Unmarshal(raw, &decoded); err != nil {
		t.Fatalf("the report does not decode: %v", err)
	}
	if got, want := len(decoded.Runs), 2*len(AllConfigs); got != want {
		t.Fatalf("%d runs, want %d", got, want)
	}
	// Round 2 runs the configurations in reverse.
	if decoded.Runs[0].Config != ConfigDirect || decoded.Runs[len(AllConfigs)].Config != ConfigXDSMTLSPolicy {
		t.Errorf("order %s ... %s, want round 1 from a and round 2 from e", decoded.Runs[0].Config, decoded.Runs[len(AllConfigs)].Config)
	}
	for _, run := range decoded.Runs {
		if run.ClientPeakRSS <= 0 || run.ServerPeakRSS <= 0 || run.Ready.HeapAfter == 0 {
			t.Errorf("%s round %d: client peak RSS %d, server peak RSS %d, heap %d: want measured", run.Config, run.Round,
				run.ClientPeakRSS, run.ServerPeakRSS, run.Ready.HeapAfter)
		}
		if run.LoadAfter > decoded.Machine.LoadMax {
			t.Errorf("%s round %d: load average %.2f at its end, above the run's highest %.2f", run.Config, run.Round, run.LoadAfter, decoded.Machine.LoadMax)
		}
		if len(run.Phases) != len(loads) {
			t.Errorf("%s round %d: %d phases, want %d", run.Config, run.Round, len(run.Phases), len(loads))
		}
		// CPU comes in 10 ms ticks: a short open loop may use less than
		// one, the closed loop uses hundreds.
		var clientCPU, serverCPU time.Duration
		for _, p := range run.Phases {
			if p.Result.Calls == 0 || p.Result.Errors != 0 {
				t.Errorf("%s round %d %s: %d calls, %d errors (%s): want only successes", run.Config, run.Round, p.Load,
					p.Result.Calls, p.Result.Errors, p.Result.FirstError)
			}
			clientCPU += p.ClientCPU
			serverCPU += p.ServerCPU
		}
		if clientCPU <= 0 || serverCPU <= 0 {
			t.Errorf("%s round %d: client CPU %s, server CPU %s over the loads: want both measured", run.Config, run.Round, clientCPU, serverCPU)
		}
	}
	s := decoded.Summary
	if len(s.Cells) != len(AllConfigs)*len(loads) || len(s.Memory) != len(AllConfigs) {
		t.Fatalf("summary has %d cells and %d memory rows, want %d and %d", len(s.Cells), len(s.Memory), len(AllConfigs)*len(loads), len(AllConfigs))
	}
	for _, c := range s.Cells {
		if c.CallsPerSec.Median <= 0 || c.P99.Median <= 0 || len(c.VsBaseline.Values) != 2 {
			t.Errorf("cell %s/%s: %.0f calls/s, p99 %.0f µs, %d ratios: want measured in both rounds", c.Config, c.Load,
				c.CallsPerSec.Median, c.P99.Median, len(c.VsBaseline.Values))
		}
	}
	if c := s.Cell(ConfigDirect, loads[0].Name()); c == nil || c.VsBaseline.Median != 1 {
		t.Errorf("the baseline's ratio to itself is not 1: %+v", c)
	}
	if len(s.Goals) == 0 {
		t.Error("no goal evaluated")
	}
	// The profiled load left a client and a server profile per configuration.
	for _, c := range AllConfigs {
		for _, side := range []string{"client", "server"} {
			p := filepath.Join(dir, "profiles", c+"-"+loads[0].Name()+"-"+side+".pprof")
			if info, err := os.Stat(p); err != nil || info.Size() == 0 {
				t.Errorf("profile %s: %v", p, err)
			}
		}
	}
	for _, g := range s.Goals {
		t.Log(g)
	}
}

// TestConfigNeedsSPIREOnlyForXDSMTLS checks that configurations without
// SVIDs run without SPIRE binaries, and that (d) and (e) require them by
// name.
func TestConfigNeedsSPIREOnlyForXDSMTLS(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		configs []string
		wantErr string
	}{
		{[]string{ConfigDirect, ConfigXDS, ConfigTLS}, ""},
		{[]string{ConfigTLS, ConfigXDSMTLS}, "Config.SPIRE"},
		{[]string{ConfigXDSMTLSPolicy}, "Config.SPIRE"},
		{nil, "Config.SPIRE"}, // the default: every configuration
	} {
		cfg := Config{TrellisBin: bin, ConsulBin: bin, Worker: []string{bin}, Configs: tt.configs}
		err := cfg.setDefaults()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("configs %v without SPIRE binaries: %v, want accepted", tt.configs, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("configs %v without SPIRE binaries: error %v, want one naming %s", tt.configs, err, tt.wantErr)
		}
	}
}
