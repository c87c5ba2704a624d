// Command trellis-bench measures Trellis and writes BENCHMARKS.md.
//
// Usage:
//
//	trellis-bench controlplane [flags] the control-plane benchmark (controlplane.go)
//	trellis-bench dataplane [flags]   the data-plane benchmark (dataplane.go)
//	trellis-bench report [flags]      BENCHMARKS.md and plots from the JSON results (report.go)
//
// Each subcommand lives in its own file and parses its own flags; run
// `trellis-bench <subcommand> -h` for them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// subcommand runs one subcommand with the arguments after its name.
type subcommand func(ctx context.Context, args []string) error

func main() {
	commands := map[string]subcommand{
		"controlplane": runControlplane,
		"dataplane":    runDataplane,
		"report":       runReport,
	}
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintf(os.Stderr, "usage: trellis-bench <%s> [flags]\n", strings.Join(names, "|"))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := commands[os.Args[1]](ctx, os.Args[2:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "trellis-bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
