package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// settingsProbe is a command with one flag of each kind the server uses;
// run records the values it ran with.
type settingsProbe struct {
	listen  string
	verbose bool
	timeout time.Duration
	keys    []string
	ids     []string
	count   int
}

func newSettingsProbe(p *settingsProbe) *cobra.Command {
	cmd := &cobra.Command{
		Use:  "probe",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return nil },
	}
	f := cmd.Flags()
	f.StringVar(&p.listen, "xds-listen", "127.0.0.1:18000", "listen address")
	f.BoolVar(&p.verbose, "exclude-warning", false, "a switch")
	f.DurationVar(&p.timeout, "sync-timeout", time.Minute, "a duration")
	f.StringSliceVar(&p.keys, "zone-meta-key", nil, "a list")
	f.StringArrayVar(&p.ids, "allowed-id", nil, "a repeatable flag")
	f.IntVar(&p.count, "max-streams", 100, "a number")
	return cmd
}

// runProbe runs the probe command with args, environment env and, when
// file is not empty, a config file with that content named by --config.
func runProbe(t *testing.T, args []string, env map[string]string, file string) (settingsProbe, string, error) {
	t.Helper()
	var p settingsProbe
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cmd := withSettings(newSettingsProbe(&p), lookup)
	if file != "" {
		path := filepath.Join(t.TempDir(), "trellis.yaml")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", path)
	}
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return p, out.String(), err
}

func TestSettingsPrecedence(t *testing.T) {
	file := `
xds-listen: 10.0.0.1:1
exclude-warning: true
sync-timeout: 5m
zone-meta-key: [zone, az]
max-streams: 7
`
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want settingsProbe
	}{
		{
			name: "defaults",
			want: settingsProbe{listen: "127.0.0.1:18000", timeout: time.Minute, count: 100},
		},
		{
			name: "file over defaults",
			file: file,
			want: settingsProbe{listen: "10.0.0.1:1", verbose: true, timeout: 5 * time.Minute, keys: []string{"zone", "az"}, count: 7},
		},
		{
			name: "environment over file",
			file: file,
			env: map[string]string{
				"TRELLIS_XDS_LISTEN":    "10.0.0.2:2",
				"TRELLIS_ZONE_META_KEY": "rack",
				"TRELLIS_MAX_STREAMS":   "8",
			},
			want: settingsProbe{listen: "10.0.0.2:2", verbose: true, timeout: 5 * time.Minute, keys: []string{"rack"}, count: 8},
		},
		{
			name: "flags over environment and file",
			file: file,
			args: []string{"--xds-listen", "10.0.0.3:3", "--zone-meta-key", "dc", "--exclude-warning=false"},
			env: map[string]string{
				"TRELLIS_XDS_LISTEN":      "10.0.0.2:2",
				"TRELLIS_EXCLUDE_WARNING": "true",
				"TRELLIS_SYNC_TIMEOUT":    "2s",
			},
			want: settingsProbe{listen: "10.0.0.3:3", timeout: 2 * time.Second, keys: []string{"dc"}, count: 7},
		},
		{
			name: "environment over defaults without a file",
			env:  map[string]string{"TRELLIS_EXCLUDE_WARNING": "1", "TRELLIS_ZONE_META_KEY": "a,b", "TRELLIS_ALLOWED_ID": "spiffe://x/a, spiffe://x/b"},
			want: settingsProbe{listen: "127.0.0.1:18000", verbose: true, timeout: time.Minute, keys: []string{"a", "b"}, ids: []string{"spiffe://x/a", "spiffe://x/b"}, count: 100},
		},
		{
			name: "comma-separated list in the file, empty value clears a default",
			file: "zone-meta-key: a,b\nxds-listen: ''\nallowed-id: [spiffe://x/a]\n",
			want: settingsProbe{listen: "", timeout: time.Minute, keys: []string{"a", "b"}, ids: []string{"spiffe://x/a"}, count: 100},
		},
		{
			name: "empty file sets nothing",
			file: "# nothing yet\n",
			want: settingsProbe{listen: "127.0.0.1:18000", timeout: time.Minute, count: 100},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, out, err := runProbe(t, tc.args, tc.env, tc.file)
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(settingsProbe{})); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSettingsConfigFileFromEnvironment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("max-streams: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, out, err := runProbe(t, nil, map[string]string{"TRELLIS_CONFIG": path}, "")
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if got.count != 3 {
		t.Errorf("max-streams = %d from the file named by TRELLIS_CONFIG, want 3", got.count)
	}
}

func TestSettingsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		// wantErr are substrings the error must contain.
		wantErr []string
	}{
		{
			name:    "unknown key",
			file:    "xds-listen: a\nxds-lisen: b\n",
			wantErr: []string{`:2: unknown key "xds-lisen"`, "accepted keys: allowed-id, exclude-warning, max-streams, sync-timeout, xds-listen, zone-meta-key"},
		},
		{
			name:    "config is not a setting of the file",
			file:    "config: other.yaml\n",
			wantErr: []string{`unknown key "config"`},
		},
		{
			name:    "unparsable boolean in the file",
			file:    "exclude-warning: maybe\n",
			wantErr: []string{`:1: key "exclude-warning"`, "--exclude-warning", "accepted: true or false"},
		},
		{
			name:    "unparsable duration in the environment",
			env:     map[string]string{"TRELLIS_SYNC_TIMEOUT": "soon"},
			wantErr: []string{`environment TRELLIS_SYNC_TIMEOUT="soon"`, "--sync-timeout", "accepted: a duration"},
		},
		{
			name:    "unparsable integer in the environment",
			env:     map[string]string{"TRELLIS_MAX_STREAMS": "many"},
			wantErr: []string{"TRELLIS_MAX_STREAMS", "accepted: an integer"},
		},
		{
			name:    "list for a single value",
			file:    "xds-listen: [a, b]\n",
			wantErr: []string{`key "xds-listen"`, "takes a single value"},
		},
		{
			name:    "mapping value",
			file:    "xds-listen:\n  host: a\n",
			wantErr: []string{`key "xds-listen"`, "accepted: a string"},
		},
		{
			name:    "not a mapping",
			file:    "- xds-listen\n",
			wantErr: []string{"accepted: a mapping of setting names to values"},
		},
		{
			name:    "duplicate key",
			file:    "max-streams: 1\nmax-streams: 2\n",
			wantErr: []string{`:2: key "max-streams" is given twice`},
		},
		{
			name:    "missing file",
			args:    []string{"--config", "/nonexistent/trellis.yaml"},
			wantErr: []string{"config file", "/nonexistent/trellis.yaml"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runProbe(t, tc.args, tc.env, tc.file)
			if err == nil {
				t.Fatalf("run succeeded, want an error containing %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestSettingsCommandLineBeatsBadEnvironment: a setting given on the
// command line is not read from the environment at all.
func TestSettingsCommandLineBeatsBadEnvironment(t *testing.T) {
	got, out, err := runProbe(t, []string{"--max-streams", "4"}, map[string]string{"TRELLIS_MAX_STREAMS": "many"}, "")
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if got.count != 4 {
		t.Errorf("max-streams = %d, want 4", got.count)
	}
}

// TestServerPrintConfig runs the real server command with --print-config:
// every server flag is printed, with the value precedence gives it, and the
// output is itself a valid config file.
func TestServerPrintConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "trellis.yaml")
	if err := os.WriteFile(path, []byte("admin-listen: 127.0.0.1:9001\nxds-listen: 127.0.0.1:9000\nlog-level: warn\nzone-meta-key: [zone]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TRELLIS_ADMIN_LISTEN": "127.0.0.1:9002", "TRELLIS_LOG_FORMAT": "json", "TRELLIS_CONSUL_TOKEN": "s3cr3t"}
	printed := func(args ...string) map[string]any {
		t.Helper()
		cmd := withSettings(newServerCommand(), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append([]string{"--print-config"}, args...))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("server --print-config: %v", err)
		}
		if strings.Contains(out.String(), "s3cr3t") {
			t.Errorf("--print-config prints the Consul token:\n%s", out.String())
		}
		var got map[string]any
		if err := yaml.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("output is not YAML: %v\n%s", err, out.String())
		}
		// The printed settings are accepted back as a config file.
		again := filepath.Join(dir, "printed.yaml")
		if err := os.WriteFile(again, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readSettingsFile(again, withSettings(newServerCommand(), nil).Flags()); err != nil {
			t.Errorf("printed settings are not a valid config file: %v\n%s", err, out.String())
		}
		return got
	}

	got := printed("--config", path, "--admin-listen", "127.0.0.1:9003")
	want := map[string]any{
		"admin-listen":  "127.0.0.1:9003", // flag
		"log-format":    "json",           // environment
		"xds-listen":    "127.0.0.1:9000", // file
		"log-level":     "warn",           // file
		"zone-meta-key": []any{"zone"},    // file
		"consul-token":  "<redacted>",     // environment, not printed
		"consul-addr":   "",               // default
	}
	for k, w := range want {
		if diff := cmp.Diff(w, got[k]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", k, diff)
		}
	}
	var names []string
	for _, n := range settingNames(newServerCommand().Flags()) {
		names = append(names, n)
		if _, ok := got[n]; !ok {
			t.Errorf("--print-config omits the setting %q", n)
		}
	}
	if len(got) != len(names) {
		t.Errorf("--print-config printed %d settings, the server has %d: %v", len(got), len(names), got)
	}
}

// TestServerHelpDocumentsSettings: --help names each setting's variable and
// default, and explains the mapping.
func TestServerHelpDocumentsSettings(t *testing.T) {
	cmd := withSettings(newServerCommand(), func(string) (string, bool) { return "", false })
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, w := range []string{"TRELLIS_XDS_LISTEN", "--config FILE", "command-line flags, then environment, then the file"} {
		if !strings.Contains(help, w) {
			t.Errorf("help does not contain %q", w)
		}
	}
	// Each flag's entry in the Flags: section, joined across wrapped lines.
	flagsAt := strings.Index(help, "\nFlags:\n")
	if flagsAt < 0 {
		t.Fatalf("help has no Flags: section:\n%s", help)
	}
	entries := map[string]string{}
	entryRE := regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9-]+)`)
	current := ""
	for _, l := range strings.Split(help[flagsAt+len("\nFlags:\n"):], "\n") {
		if strings.TrimSpace(l) == "" {
			break
		}
		if m := entryRE.FindStringSubmatch(l); m != nil {
			current = m[1]
			entries[current] = l
			continue
		}
		entries[current] += " " + strings.TrimSpace(l)
	}
	for _, name := range settingNames(newServerCommand().Flags()) {
		entry, ok := entries[name]
		if !ok {
			t.Errorf("help has no entry for --%s", name)
			continue
		}
		if !strings.Contains(entry, "[env "+envName(name)+"]") {
			t.Errorf("help for --%s does not name %s: %q", name, envName(name), entry)
		}
		if !strings.Contains(entry, "(default") {
			t.Errorf("help for --%s states no default: %q", name, entry)
		}
	}
}
