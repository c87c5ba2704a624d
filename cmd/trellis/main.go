// Command trellis is the Trellis control plane and its tooling:
//
//	trellis server      the xDS control plane fed by the Consul catalog
//	trellis bootstrap   writes a GRPC_XDS_BOOTSTRAP file for a workload
//	trellis policy      manages service policies (apply, get, list, delete, validate)
//	trellis identity    keeps the workload's SPIFFE identity in files (sync)
//	trellis version     prints the version, commit and key dependency versions
//	trellis status      shows what the xDS clients hold (--csds: what one process holds)
//	trellis explain     says why a client gets what it gets for a target
//
// This is the only place where Trellis components are wired together.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "trellis:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "trellis",
		Short:         "A gRPC-native service mesh without proxies, fed by Consul",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Every setting of `trellis server` also comes from TRELLIS_* variables
	// or a --config file (config.go).
	root.AddCommand(withSettings(newServerCommand(), os.LookupEnv), newBootstrapCommand(), newPolicyCommand(), newIdentityCommand(), newVersionCommand(), newStatusCommand(), newExplainCommand())
	return root
}
