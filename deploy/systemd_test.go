package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: line %q is not key=value in a section", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unitFile) last(key string) (string, bool) {
	v := u["Service"][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// systemdAnalyze is Debian's systemd-analyze; the test fails, never skips,
// without it.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found: install Debian's systemd package (make test-deps does: apt-get install systemd): %v", err)
	}
	return path
}

// TestSystemdUnits verifies each unit with systemd-analyze verify (which
// must print nothing), requires the hardening the deployment promises,
// keeps systemd-analyze security's exposure at "OK" or better, and runs
// the unit's command line through the real binary.
func TestSystemdUnits(t *testing.T) {
	analyze := systemdAnalyze(t)
	units := []struct {
		file string
		// instance is the name a template unit is verified under.
		instance string
		command  []string
		// readWrite are the only writable paths the unit may have.
		readWrite []string
	}{
		{file: "trellis-server.service", command: []string{"server"}},
		{file: "trellis-identity-sync@.service", instance: "trellis-identity-sync@echo.service", command: []string{"identity", "sync"}, readWrite: []string{"/run/trellis/identity/%i"}},
	}
	for _, tc := range units {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("systemd", tc.file)
			u := parseUnit(t, path)
			for key, want := range map[string]string{
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"NoNewPrivileges":         "yes",
				"CapabilityBoundingSet":   "",
				"Restart":                 "on-failure",
				"SystemCallArchitectures": "native",
			} {
				if got, ok := u.last(key); !ok || got != want {
					t.Errorf("%s=%q (set: %t), want %q", key, got, ok, want)
				}
			}
			if filters := u["Service"]["SystemCallFilter"]; len(filters) == 0 || filters[0] != "@system-service" {
				t.Errorf("SystemCallFilter=%q, want @system-service first", filters)
			}
			if fam, _ := u.last("RestrictAddressFamilies"); fam == "" || strings.Contains(fam, "AF_NETLINK") || strings.Contains(fam, "AF_PACKET") {
				t.Errorf("RestrictAddressFamilies=%q, want the inet and unix families only", fam)
			}
			dyn, _ := u.last("DynamicUser")
			user, _ := u.last("User")
			if dyn != "yes" && (user == "" || user == "root" || user == "0") {
				t.Errorf("DynamicUser=%q User=%q: want DynamicUser=yes or a dedicated user", dyn, user)
			}
			rw := u["Service"]["ReadWritePaths"]
			if strings.Join(rw, " ") != strings.Join(tc.readWrite, " ") {
				t.Errorf("ReadWritePaths=%q, want %q", rw, tc.readWrite)
			}

			// The command line: the binary it names, the subcommand, and
			// flags the binary accepts.
			exec0, _ := u.last("ExecStart")
			argv := strings.Fields(exec0)
			if len(argv) < 1+len(tc.command) || argv[0] != "/usr/local/bin/trellis" || strings.Join(argv[1:1+len(tc.command)], " ") != strings.Join(tc.command, " ") {
				t.Fatalf("ExecStart=%q, want /usr/local/bin/trellis %s ...", exec0, strings.Join(tc.command, " "))
			}
			flags := argv[1+len(tc.command):]
			if tc.command[0] == "server" {
				// --config /etc/trellis/server.yaml is systemd/server.yaml.
				if len(flags) != 2 || flags[0] != "--config" || flags[1] != "/etc/trellis/server.yaml" {
					t.Fatalf("server flags %q, want --config /etc/trellis/server.yaml", flags)
				}
				config, err := os.ReadFile("systemd/server.yaml")
				if err != nil {
					t.Fatal(err)
				}
				s := effectiveSettings(t, string(config), nil)
				requireSetting(t, "systemd server.yaml", s, "xds-tls", true)
			} else {
				args := append([]string{}, tc.command...)
				for _, f := range flags {
					args = append(args, strings.ReplaceAll(f, "%i", "echo"))
				}
				run(t, nil, "trellis", append(args, "--help")...)
			}

			// systemd-analyze verify on the unit as written, with only the
			// binary's path pointing at the built one (verify requires it to
			// exist).
			dir := t.TempDir()
			name := tc.file
			if tc.instance != "" {
				name = tc.instance
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			unit := strings.ReplaceAll(string(raw), "/usr/local/bin/trellis", filepath.Join(bin, "trellis"))
			if err := os.WriteFile(filepath.Join(dir, name), []byte(unit), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(analyze, "verify", filepath.Join(dir, name)).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", tc.file, err, out)
			}
			out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=20", filepath.Join(dir, name)).CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze security %s: %v\n%s", tc.file, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			verdict := lines[len(lines)-1]
			t.Logf("%s: %s", tc.file, verdict)
			if !strings.Contains(verdict, " OK ") && !strings.Contains(verdict, " SAFE ") {
				t.Errorf("systemd-analyze security %s: %s, want OK or SAFE", tc.file, verdict)
			}
		})
	}
}
