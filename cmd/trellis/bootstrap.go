package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
)

func newBootstrapCommand() *cobra.Command {
	var (
		cfg    bootstrap.Config
		output string
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Write a GRPC_XDS_BOOTSTRAP file pointing a workload at Trellis",
		Long: `Write the bootstrap file that grpc-go's xDS client and xds.NewGRPCServer read
from the file named by GRPC_XDS_BOOTSTRAP. Several --xds-server flags give an
ordered list: later servers are fallbacks.`,
		Example: `  trellis bootstrap --xds-server 127.0.0.1:18000 --node-id echo-1 -o bootstrap.json
  GRPC_XDS_BOOTSTRAP=bootstrap.json ./my-client   # dials xds:///echo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, err := bootstrap.Generate(cfg)
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			return writeFileAtomic(output, out)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&cfg.Servers, "xds-server", nil, "xDS server host:port; repeat for ordered fallbacks (required)")
	f.StringVar(&cfg.NodeID, "node-id", "", "node id of the workload, e.g. its instance id (required)")
	f.StringVar(&cfg.Cluster, "cluster", "", "node cluster, usually the service name")
	f.StringVar(&cfg.Zone, "zone", "", "node locality zone")
	f.StringVar(&cfg.Region, "region", "", "node locality region")
	f.StringToStringVar(&cfg.Metadata, "metadata", nil, "node metadata key=value pairs")
	f.StringVarP(&output, "output", "o", "", "file to write (default: standard output)")
	return cmd
}

// writeFileAtomic replaces path with data so that a reader never sees a
// partial file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
