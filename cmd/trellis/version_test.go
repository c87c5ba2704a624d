package main

import (
	"bytes"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBuildVersion(t *testing.T) {
	info := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/trellis-mesh/trellis", Version: "v0.3.0"},
		Deps: []*debug.Module{
			{Path: "google.golang.org/grpc", Version: "v1.85.0"},
			{Path: "github.com/envoyproxy/go-control-plane", Version: "v0.14.0"},
			{Path: "github.com/envoyproxy/go-control-plane/envoy", Version: "v1.40.0"},
			{Path: "github.com/hashicorp/consul/api", Version: "v1.34.5", Replace: &debug.Module{Path: "github.com/example/consul-api", Version: "v1.34.6"}},
			{Path: "github.com/spf13/cobra", Version: "v1.10.2"},
		},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "7ba9a92c"},
			{Key: "vcs.time", Value: "2026-12-01T20:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name      string
		info      *debug.BuildInfo
		ok        bool
		ldVersion string
		ldCommit  string
		want      versionInfo
	}{
		{
			name: "from build information",
			info: info, ok: true,
			want: versionInfo{
				Version: "v0.3.0", Commit: "7ba9a92c-dirty", CommitTime: "2026-12-01T20:00:00Z", GoVersion: "go1.26.8",
				Modules: map[string]string{
					"google.golang.org/grpc":                       "v1.85.0",
					"github.com/envoyproxy/go-control-plane":       "v0.14.0",
					"github.com/envoyproxy/go-control-plane/envoy": "v1.40.0",
					"github.com/hashicorp/consul/api":              "v1.34.6",
					"github.com/spiffe/go-spiffe/v2":               "",
				},
			},
		},
		{
			name: "ldflags version wins",
			info: &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "fff"}}}, ok: true,
			ldVersion: "v1.0.0", ldCommit: "0123abc",
			want: versionInfo{Version: "v1.0.0", Commit: "0123abc", GoVersion: "go1.26.8", Modules: map[string]string{
				"google.golang.org/grpc": "", "github.com/envoyproxy/go-control-plane": "", "github.com/envoyproxy/go-control-plane/envoy": "",
				"github.com/hashicorp/consul/api": "", "github.com/spiffe/go-spiffe/v2": "",
			}},
		},
		{
			name: "no build information",
			want: versionInfo{Version: "unknown", Modules: map[string]string{
				"google.golang.org/grpc": "", "github.com/envoyproxy/go-control-plane": "", "github.com/envoyproxy/go-control-plane/envoy": "",
				"github.com/hashicorp/consul/api": "", "github.com/spiffe/go-spiffe/v2": "",
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := buildVersion(tc.info, tc.ok, tc.ldVersion, tc.ldCommit)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("buildVersion (-want +got):\n%s", diff)
			}
		})
	}
}

// TestVersionCommand runs `trellis version` in this test binary, whose build
// information holds the real dependencies, in both output formats.
func TestVersionCommand(t *testing.T) {
	run := func(args ...string) (string, error) {
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"version"}, args...))
		err := root.Execute()
		return out.String(), err
	}
	out, err := run("-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version -o json is not JSON: %v\n%s", err, out)
	}
	info, _ := debug.ReadBuildInfo()
	for _, m := range reportedModules() {
		var want string
		for _, d := range info.Deps {
			if d.Path == m {
				want = d.Version
			}
		}
		if want == "" || v.Modules[m] != want {
			t.Errorf("module %s: reported %q, built in %q", m, v.Modules[m], want)
		}
	}
	if v.GoVersion != info.GoVersion || v.Version == "" {
		t.Errorf("version %q, go %q; want a version and go %q", v.Version, v.GoVersion, info.GoVersion)
	}

	text, err := run()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"trellis ", "commit ", "go ", "google.golang.org/grpc", v.Modules["google.golang.org/grpc"], "github.com/spiffe/go-spiffe/v2"} {
		if !strings.Contains(text, w) {
			t.Errorf("version output does not contain %q:\n%s", w, text)
		}
	}
	if _, err := run("-o", "yaml"); err == nil || !strings.Contains(err.Error(), "accepted: text, json") {
		t.Errorf("version -o yaml: err %v, want one naming the accepted formats", err)
	}
}
