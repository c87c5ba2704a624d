package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/filesync"
)

func newIdentityCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Work with the workload's SPIFFE identity",
	}
	cmd.AddCommand(newIdentitySyncCommand())
	return cmd
}

// identitySyncOptions are the flags of `trellis identity sync`.
type identitySyncOptions struct {
	dir             string
	workloadAPIAddr string
	spiffeID        string
	logLevel        string
	logFormat       string
}

func newIdentitySyncCommand() *cobra.Command {
	var opts identitySyncOptions
	cmd := &cobra.Command{
		Use:   "sync --dir DIR",
		Short: "Keep the workload's X.509 SVID and trust bundles in files, rotation after rotation",
		Long: `Fetch the workload's X.509 SVID and trust bundles from the SPIFFE Workload
API and keep them in DIR, rewriting the files on every rotation until
interrupted:

  ` + identity.CertFileName + `                SVID certificate chain, leaf first (PEM)
  ` + identity.KeyFileName + `                 its private key (PKCS#8 PEM, mode 0600)
  ` + identity.CAFileName + `                  X.509 roots of every trust domain (PEM)
  ` + identity.BundleMapFileName + `  SPIFFE trust bundle map (gRFC A87)

Each file is replaced atomically. While the Workload API is unreachable the
files keep the last SVID, and the command keeps retrying; every rotation and
failure is logged.

The files feed gRPC's file_watcher certificate provider and "tls" channel
credentials: see trellis bootstrap --spiffe-files and --xds-server-tls files.
The workload's identity is the one the Workload API gives this process: run
the command as the workload's user, or next to it with the same selectors.`,
		Example: `  trellis identity sync --dir /run/trellis/identity --workload-api-addr unix:///run/spire/agent.sock
  trellis bootstrap --xds-server 127.0.0.1:18000 --node-id echo-1 \
    --spiffe-files /run/trellis/identity --xds-server-tls files -o bootstrap.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIdentitySync(cmd, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.dir, "dir", "", "directory to keep the files in; created when missing (required)")
	f.StringVar(&opts.workloadAPIAddr, "workload-api-addr", "", "SPIFFE Workload API address, unix:///path or tcp://ip:port (default: "+workloadapi.SocketEnv+")")
	f.StringVar(&opts.spiffeID, "spiffe-id", "", "SPIFFE ID of the SVID to keep when the Workload API offers several (default: the first)")
	f.StringVar(&opts.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&opts.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

func runIdentitySync(cmd *cobra.Command, opts identitySyncOptions) error {
	logger, err := newLoggerTo(cmd.ErrOrStderr(), opts.logLevel, opts.logFormat)
	if err != nil {
		return err
	}
	if opts.dir == "" {
		return errors.New("--dir is required: the directory to keep the SVID files in")
	}
	dir, err := filepath.Abs(opts.dir)
	if err != nil {
		return fmt.Errorf("--dir %q: %w", opts.dir, err)
	}
	addr, err := identity.WorkloadAPIAddr(opts.workloadAPIAddr)
	if err != nil {
		return fmt.Errorf("--workload-api-addr: %w", err)
	}
	var id spiffeid.ID
	if opts.spiffeID != "" {
		if id, err = spiffeid.FromString(opts.spiffeID); err != nil {
			return fmt.Errorf("--spiffe-id %q: %w (want spiffe://<trust domain>/<path>)", opts.spiffeID, err)
		}
	}
	syncer, err := filesync.New(filesync.Config{
		Dir:             dir,
		WorkloadAPIAddr: addr,
		SPIFFEID:        id,
		Logger:          logger.With("component", "identity"),
	})
	if err != nil {
		return err
	}
	logger.Info("keeping SVID files up to date; interrupt to stop", "dir", dir, "workload_api", addr)
	if err := syncer.Run(cmd.Context()); err != nil {
		return err
	}
	logger.Info("stopped keeping SVID files; they keep the last SVID", "dir", dir)
	return nil
}

// newLoggerTo returns a logger writing to w at level, in format text or
// json.
func newLoggerTo(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: accepted: debug, info, warn, error", level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: accepted: text, json", format)
	}
}
