package integration

import (
	"context"
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

// TestExampleProgramsWithGeneratedBootstrap runs the user's path end to end
// with separate processes: echo servers that register themselves in Consul
// with a gRPC health check, a bootstrap file written by `trellis bootstrap`,
// and the example client dialing xds:///echo with GRPC_XDS_BOOTSTRAP.
func TestExampleProgramsWithGeneratedBootstrap(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellis(t, consul.HTTPAddr())
	dir := t.TempDir()

	for i := 1; i <= 2; i++ {
		id := fmt.Sprintf("example-%d", i)
		cmd := exec.Command(echoServerBin, "--listen", freeAddr(t), "--instance-id", id,
			"--consul-addr", consul.HTTPAddr(), "--check-interval", "1s")
		logFile, err := os.Create(filepath.Join(dir, id+".log"))
		if err != nil {
			t.Fatal(err)
		}
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
				t.Logf("%s log:\n%s", id, raw)
			}
		})
	}
	waitFor(t, 30*time.Second, "both example servers passing in Consul", func() error {
		entries, _, err := consul.Client(t).Health().Service("echo", "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != 2 {
			return fmt.Errorf("%d passing instances", len(entries))
		}
		return nil
	})

	bootstrapPath := filepath.Join(dir, "bootstrap.json")
	out, err := exec.Command(trellisBin, "bootstrap", "--xds-server", trellis.xdsAddr, "--node-id", "example-client", "-o", bootstrapPath).CombinedOutput()
	if err != nil {
		t.Fatalf("trellis bootstrap: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := exec.CommandContext(ctx, echoClientBin, "--target", "xds:///echo", "--rate", "50", "--count", "100", "--require-all-ok")
	client.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrapPath)
	out, err = client.CombinedOutput()
	if err != nil {
		t.Fatalf("echo-client: %v\n%s", err, out)
	}
	var total string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "total:") {
			total = line
		}
	}
	if !strings.Contains(total, "ok=100") || !strings.Contains(total, "example-1=") || !strings.Contains(total, "example-2=") {
		t.Errorf("client summary %q: want 100 ok calls answered by both instances\n%s", total, out)
	}
	trellis.requireNoNACKsInMetrics(t)
}
