package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// version and commit are the release version and VCS revision, set at
// build time (make build does):
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)" ./cmd/trellis
//
// Without them, the module version and the VCS revision recorded in the
// build information are reported ("(devel)" and none for a build from a
// source checkout with -buildvcs=false).
var version, commit string

// reportedModules are the dependencies whose versions `trellis version`
// reports: the ones that decide what the control plane speaks.
func reportedModules() []string {
	return []string{
		"google.golang.org/grpc",
		"github.com/envoyproxy/go-control-plane",
		"github.com/envoyproxy/go-control-plane/envoy",
		"github.com/hashicorp/consul/api",
		"github.com/spiffe/go-spiffe/v2",
	}
}

// versionInfo is what `trellis version` prints.
type versionInfo struct {
	Version string `json:"version"`
	// Commit is the VCS revision the binary was built from, with
	// "-dirty" when the work tree had uncommitted changes; empty when the
	// build recorded none.
	Commit     string `json:"commit"`
	CommitTime string `json:"commitTime,omitempty"`
	GoVersion  string `json:"goVersion"`
	// Modules maps each reported module path to its version ("" when the
	// module is not in the binary).
	Modules map[string]string `json:"modules"`
}

// buildVersion reads versionInfo from the build information; ldVersion and
// ldCommit, when set, override the module version and the VCS revision.
func buildVersion(info *debug.BuildInfo, ok bool, ldVersion, ldCommit string) versionInfo {
	v := versionInfo{Version: ldVersion, Commit: ldCommit, Modules: map[string]string{}}
	for _, m := range reportedModules() {
		v.Modules[m] = ""
	}
	if !ok || info == nil {
		if v.Version == "" {
			v.Version = "unknown"
		}
		return v
	}
	if v.Version == "" {
		v.Version = info.Main.Version
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	v.GoVersion = info.GoVersion
	if v.Commit != "" {
		return withModules(v, info)
	}
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.CommitTime = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && v.Commit != "" {
		v.Commit += "-dirty"
	}
	return withModules(v, info)
}

// withModules fills v.Modules from the dependencies in info.
func withModules(v versionInfo, info *debug.BuildInfo) versionInfo {
	for _, dep := range info.Deps {
		if _, want := v.Modules[dep.Path]; !want {
			continue
		}
		ver := dep.Version
		if dep.Replace != nil {
			ver = dep.Replace.Version
			if ver == "" {
				ver = "=> " + dep.Replace.Path
			}
		}
		v.Modules[dep.Path] = ver
	}
	return v
}

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, Go version and key dependency versions",
		Long: `Print the version of trellis, the commit it was built from, the Go
version, and the versions of grpc-go, go-control-plane, the Consul API and
go-spiffe built into it. -o json prints the same as a JSON object.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, ok := debug.ReadBuildInfo()
			return printVersion(cmd.OutOrStdout(), buildVersion(info, ok, version, commit), output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printVersion(w io.Writer, v versionInfo, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		commit := v.Commit
		if commit == "" {
			commit = "unknown"
		}
		if v.CommitTime != "" {
			commit += " (" + v.CommitTime + ")"
		}
		fmt.Fprintf(tw, "trellis\t%s\n", v.Version)
		fmt.Fprintf(tw, "commit\t%s\n", commit)
		fmt.Fprintf(tw, "go\t%s\n", v.GoVersion)
		for _, m := range reportedModules() {
			ver := v.Modules[m]
			if ver == "" {
				ver = "not built in"
			}
			fmt.Fprintf(tw, "%s\t%s\n", m, ver)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("--output %q: accepted: text, json", output)
	}
}
