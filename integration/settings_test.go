package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestSettingsPrecedence runs the real binary with a config file, TRELLIS_*
// variables and flags that disagree, and checks what it actually does:
// flags win over the environment, the environment over the file, the file
// over the defaults. The admin listener it binds (answering /healthz) and
// the xDS listener a real grpc-go client gets its configuration from are
// the effective values; --print-config prints the same.
func TestSettingsPrecedence(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})

	adminFile, adminEnv := freeAddr(t), freeAddr(t)
	xdsFile, xdsFlag := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "trellis.yaml")
	writeSettings(t, config, map[string]any{
		"admin-listen":  adminFile,   // overridden by the environment
		"xds-listen":    xdsFile,     // overridden by the flag
		"log-level":     "warn",      // overridden by the environment
		"log-format":    "json",      // from the file
		"policy-prefix": "settings/", // from the file
		"consul-addr":   consul.HTTPAddr(),
	})
	env := append(os.Environ(),
		"TRELLIS_CONFIG="+config,
		"TRELLIS_ADMIN_LISTEN="+adminEnv,
		"TRELLIS_XDS_LISTEN="+freeAddr(t), // overridden by the flag
		"TRELLIS_LOG_LEVEL=debug",
	)
	args := []string{"server", "--xds-listen", xdsFlag}

	// What the binary says it will use.
	printed := exec.Command(trellisBin, append(args, "--print-config")...)
	printed.Env = env
	out, err := printed.Output()
	if err != nil {
		t.Fatalf("trellis server --print-config: %v\n%s", err, stderrOf(err))
	}
	var effective map[string]any
	if err := yaml.Unmarshal(out, &effective); err != nil {
		t.Fatalf("--print-config output: %v\n%s", err, out)
	}
	want := map[string]any{
		"admin-listen":    adminEnv,
		"xds-listen":      xdsFlag,
		"log-level":       "debug",
		"log-format":      "json",
		"policy-prefix":   "settings/",
		"consul-addr":     consul.HTTPAddr(),
		"exclude-warning": false, // default
	}
	for k, w := range want {
		if effective[k] != w {
			t.Errorf("--print-config %s = %v, want %v", k, effective[k], w)
		}
	}

	// What the binary does.
	s := &trellisServer{
		t:         t,
		xdsAddr:   xdsFlag,
		adminAddr: adminEnv,
		args:      args,
		env:       env,
		logPath:   filepath.Join(t.TempDir(), "trellis.log"),
	}
	s.Start() // waits for /readyz on adminEnv
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.dumpLog()
		}
	})
	if code, body, err := s.get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz on the environment's admin address %s: %d %v %s", adminEnv, code, err, body)
	}
	for _, addr := range []string{adminFile, xdsFile} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s (from the config file, overridden) accepts connections", addr)
		}
	}
	conn := dialXDS(t, s.bootstrapFor(t, "settings-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")
	s.requireAllACKed(t)

	// log-format from the file and log-level from the environment: JSON
	// lines, debug ones among them.
	started, debugLines := false, 0
	for _, line := range strings.Split(strings.TrimSpace(s.Log()), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		started = started || rec["msg"] == "trellis server starting"
		if rec["level"] == "DEBUG" {
			debugLines++
		}
	}
	if !started {
		t.Errorf("no JSON log line \"trellis server starting\" with log-format json from the file")
	}
	if debugLines == 0 {
		t.Errorf("no DEBUG log line with TRELLIS_LOG_LEVEL=debug over the file's warn")
	}
}

// TestSettingsRejected: the binary refuses an unknown key in the file and a
// value it cannot parse in the environment, naming the key or variable and
// what is accepted, before it binds anything.
func TestSettingsRejected(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "trellis.yaml")
	if err := os.WriteFile(config, []byte("admin-listen: 127.0.0.1:0\nxds-lisen: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     []string
		wantErr []string
	}{
		{
			name:    "unknown key in the file",
			args:    []string{"server", "--config", config},
			wantErr: []string{config + `:2: unknown key "xds-lisen"`, "accepted keys: ", "xds-listen"},
		},
		{
			name:    "unparsable environment value",
			args:    []string{"server"},
			env:     []string{"TRELLIS_EXCLUDE_WARNING=sometimes"},
			wantErr: []string{`TRELLIS_EXCLUDE_WARNING="sometimes"`, "--exclude-warning", "accepted: true or false"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, trellisBin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatalf("trellis %v: %v, want exit status 1\n%s", tc.args, err, stderr.String())
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), w)
				}
			}
		})
	}
}

// TestVersionOfBuiltBinary: `trellis version -o json` of the built binary
// reports the dependency versions the module selects.
func TestVersionOfBuiltBinary(t *testing.T) {
	out, err := exec.Command(trellisBin, "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("trellis version: %v\n%s", err, stderrOf(err))
	}
	var v struct {
		Version, GoVersion string
		Modules            map[string]string
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, out)
	}
	list, err := exec.Command("go", "list", "-m", "-json",
		"google.golang.org/grpc", "github.com/envoyproxy/go-control-plane", "github.com/envoyproxy/go-control-plane/envoy",
		"github.com/hashicorp/consul/api", "github.com/spiffe/go-spiffe/v2").Output()
	if err != nil {
		t.Fatalf("go list -m: %v\n%s", err, stderrOf(err))
	}
	dec := json.NewDecoder(bytes.NewReader(list))
	n := 0
	for dec.More() {
		var m struct{ Path, Version string }
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		n++
		if v.Modules[m.Path] != m.Version {
			t.Errorf("trellis version reports %s %q, the module selects %q", m.Path, v.Modules[m.Path], m.Version)
		}
	}
	if n != 5 {
		t.Errorf("go list -m listed %d modules, want 5", n)
	}
	if v.Version == "" || !strings.HasPrefix(v.GoVersion, "go1.") {
		t.Errorf("version %q, go %q", v.Version, v.GoVersion)
	}
}

func writeSettings(t testing.TB, path string, settings map[string]any) {
	t.Helper()
	raw, err := yaml.Marshal(settings)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
