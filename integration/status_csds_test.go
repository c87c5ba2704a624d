package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// csdsReport is the JSON of `trellis status --csds`.
type csdsReport struct {
	Replica string `json:"replica"`
	Clients []struct {
		Scope     string `json:"scope"`
		NodeID    string `json:"node_id"`
		UserAgent string `json:"user_agent"`
		Profile   string `json:"profile"`
		Resources []struct {
			Type           string `json:"type"`
			Name           string `json:"name"`
			ClientState    string `json:"client_state"`
			ClientVersion  string `json:"client_version"`
			TrellisVersion string `json:"trellis_version"`
			Result         string `json:"result"`
			Detail         string `json:"detail"`
		} `json:"resources"`
	} `json:"clients"`
	Summary map[string]int `json:"summary"`
}

// results returns "TYPE name=RESULT" for every resource of the client whose
// scope is scope, sorted as the command sorts them.
func (r csdsReport) results(scope string) []string {
	var out []string
	for _, c := range r.Clients {
		if c.Scope != scope {
			continue
		}
		for _, res := range c.Resources {
			out = append(out, res.Type+" "+res.Name+"="+res.Result)
		}
	}
	return out
}

// startEchoClient runs the example client against target with its admin
// services on adminAddr, until the test ends.
func startEchoClient(t *testing.T, bootstrapJSON []byte, target, adminAddr string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(path, bootstrapJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "client.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(echoClientBin, "--target", target, "--rate", "5", "--admin-addr", adminAddr)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+path)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			raw, _ := os.ReadFile(logFile.Name())
			t.Logf("echo-client %s log:\n%s", target, raw)
		}
	})
}

// runCSDS runs `trellis status --csds admin` against s.
func runCSDS(t *testing.T, s *trellisServer, admin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(trellisBin, append([]string{"status", "--server", s.adminAddr, "--token", apiToken, "--timeout", "10s", "--csds", admin}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func csdsJSON(t *testing.T, s *trellisServer, admin string) (csdsReport, error) {
	t.Helper()
	out, err := runCSDS(t, s, admin, "-o", "json")
	if err != nil {
		return csdsReport{}, fmt.Errorf("%v: %s", err, out)
	}
	var r csdsReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return csdsReport{}, fmt.Errorf("decode: %v\n%s", err, out)
	}
	return r, nil
}

// TestStatusCSDS reads the CSDS of real example clients (grpc/admin) and
// compares it with what Trellis serves: SAME for a synced client, MISSING
// for a target Trellis does not serve, and DIFFERS for endpoints changed
// while the client's server was down, compared against another replica that
// follows the change.
func TestStatusCSDS(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	primary := startTrellisWithAPI(t, consul)
	other := startTrellisWithAPI(t, consul)

	admin, typoAdmin := freeAddr(t), freeAddr(t)
	startEchoClient(t, primary.bootstrapFor(t, "csds-client"), "xds:///echo", admin)
	startEchoClient(t, primary.bootstrapFor(t, "csds-typo"), "xds:///ecoh", typoAdmin)

	want := []string{"LDS echo=SAME", "RDS echo=SAME", "CDS echo=SAME", "EDS echo=SAME"}
	var report csdsReport
	waitFor(t, 30*time.Second, "the client's CSDS to match what Trellis serves", func() error {
		var err error
		if report, err = csdsJSON(t, primary, admin); err != nil {
			return err
		}
		if got := report.results("xds:///echo"); strings.Join(got, " ") != strings.Join(want, " ") {
			return fmt.Errorf("results %v, want %v", got, want)
		}
		return nil
	})
	c := report.Clients[0]
	if c.NodeID != "csds-client" || !strings.HasPrefix(c.UserAgent, "gRPC Go") || c.Profile != "grpc-go" || report.Replica != primary.xdsAddr {
		t.Fatalf("client %s (%s), profile %s, replica %s: want csds-client, gRPC Go, grpc-go, %s", c.NodeID, c.UserAgent, c.Profile, report.Replica, primary.xdsAddr)
	}
	for _, r := range c.Resources {
		if r.ClientState != "ACKED" || r.ClientVersion == "" || r.TrellisVersion == "" {
			t.Fatalf("resource %s %s: state %s, client version %q, trellis version %q", r.Type, r.Name, r.ClientState, r.ClientVersion, r.TrellisVersion)
		}
	}
	table, err := runCSDS(t, primary, admin)
	if err != nil {
		t.Fatalf("trellis status --csds: %v\n%s", err, table)
	}
	for _, w := range []string{"xds:///echo  node csds-client", "CLIENT STATE", "ACKED", "SAME", "4 same, 0 differ, 0 missing, 0 nacked"} {
		if !strings.Contains(table, w) {
			t.Fatalf("trellis status --csds lacks %q:\n%s", w, table)
		}
	}

	// A name Trellis does not serve: the client holds nothing for it.
	waitFor(t, 30*time.Second, "the mistyped target to be MISSING", func() error {
		r, err := csdsJSON(t, primary, typoAdmin)
		if err != nil {
			return err
		}
		if got := r.results("xds:///ecoh"); strings.Join(got, " ") != "LDS ecoh=MISSING" {
			return fmt.Errorf("results %v", got)
		}
		if d := r.Clients[0].Resources[0].Detail; !strings.Contains(d, "Trellis does not serve it") {
			return fmt.Errorf("detail %q", d)
		}
		return nil
	})

	primary.requireAllACKed(t)

	// The client's server stops; the client keeps what it holds, and a
	// new instance reaches the replica that is still running, not the
	// client.
	primary.Stop()
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	want = []string{"LDS echo=SAME", "RDS echo=SAME", "CDS echo=SAME", "EDS echo=DIFFERS"}
	waitFor(t, 30*time.Second, "the client's endpoints to differ from the other replica's", func() error {
		var err error
		if report, err = csdsJSON(t, other, admin); err != nil {
			return err
		}
		if got := report.results("xds:///echo"); strings.Join(got, " ") != strings.Join(want, " ") {
			return fmt.Errorf("results %v, want %v", got, want)
		}
		return nil
	})
	if n := report.Summary["DIFFERS"]; n != 1 {
		t.Fatalf("summary %v, want 1 DIFFERS", report.Summary)
	}
	table, err = runCSDS(t, other, admin)
	if err != nil {
		t.Fatalf("trellis status --csds: %v\n%s", err, table)
	}
	if !strings.Contains(table, "EDS echo: the client holds other content than Trellis serves now") || !strings.Contains(table, "3 same, 1 differ") {
		t.Fatalf("trellis status --csds after the change:\n%s", table)
	}
}
