package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/bench/dataplane"
)

// runDataplane is `trellis-bench dataplane`: the data-plane benchmark, its
// JSON report written to -o. `trellis-bench dataplane worker ...` is the
// worker process the benchmark starts for its clients and servers.
func runDataplane(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "worker" {
		return dataplane.WorkerMain(ctx, args[1:], os.Stdin, os.Stdout)
	}
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	tools := os.Getenv("TRELLIS_TOOLS_DIR")
	if tools == "" {
		if home, err := os.UserHomeDir(); err == nil {
			tools = filepath.Join(home, ".cache", "trellis", "tools")
		}
	}
	envOr := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	var cfg dataplane.Config
	out := fs.String("o", "bench/dataplane.json", "file that receives the JSON report")
	fs.StringVar(&cfg.TrellisBin, "trellis", "bin/trellis", "trellis binary")
	fs.StringVar(&cfg.ConsulBin, "consul", envOr("TRELLIS_CONSUL_BIN", filepath.Join(tools, "consul-v1.16.1")), "consul binary (default $TRELLIS_CONSUL_BIN)")
	fs.StringVar(&cfg.SPIREServerBin, "spire-server", envOr("TRELLIS_SPIRE_SERVER_BIN", filepath.Join(tools, "spire-server-v1.13.3")), "spire-server binary (default $TRELLIS_SPIRE_SERVER_BIN)")
	fs.StringVar(&cfg.SPIREAgentBin, "spire-agent", envOr("TRELLIS_SPIRE_AGENT_BIN", filepath.Join(tools, "spire-agent-v1.13.3")), "spire-agent binary (default $TRELLIS_SPIRE_AGENT_BIN)")
	configs := fs.String("configs", strings.Join(dataplane.AllConfigs, ","), "configurations to measure, comma-separated: a (direct), b (xDS), c (direct TLS), d (xDS mTLS), e (d + RBAC + retries)")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds; each runs every configuration, in reverse order every other round")
	phase := fs.Duration("phase", 3*time.Second, "duration of each measured load")
	fs.DurationVar(&cfg.Warmup, "warmup", 500*time.Millisecond, "unmeasured closed loop before the loads of each run")
	fs.StringVar(&cfg.ProfileDir, "profile-dir", "", "write CPU profiles of each configuration's client and server (first round) here")
	fs.StringVar(&cfg.ProfileLoad, "profile-load", "closed-64", "the load to profile")
	fs.UintVar(&cfg.ServerStreamWorkers, "server-stream-workers", 0, "serve streams on this many reused goroutines (grpc.NumStreamWorkers); 0: gRPC's default, a goroutine per call")
	fs.StringVar(&cfg.Dir, "dir", "", "keep logs, bootstraps and certificates here (default: a temporary directory, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *phase <= 0 {
		return fmt.Errorf("-phase %s: want more than 0", *phase)
	}
	cfg.Configs = strings.Split(*configs, ",")
	cfg.Loads = dataplane.DefaultLoads(*phase)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary for the workers: %w", err)
	}
	cfg.Worker = []string{self, "dataplane", "worker"}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "dataplane-bench")
	rep, err := dataplane.Run(ctx, cfg)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("encode the report: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	if err := os.WriteFile(*out, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	// Failed calls are results, reported with the rest: an overloaded
	// machine makes open loops queue past the channel's limits.
	for _, c := range rep.Summary.Cells {
		if c.Errors > 0 {
			fmt.Fprintf(os.Stderr, "warning: configuration %s, %s: %d of %d calls failed, first: %s\n", c.Config, c.Load, c.Errors, c.Errors+c.Calls, c.FirstError)
		}
	}
	for _, g := range rep.Summary.Goals {
		fmt.Fprintln(os.Stderr, g)
	}
	fmt.Fprintf(os.Stderr, "wrote %s (%s)\n", *out, rep.Duration.Round(time.Second))
	return nil
}
