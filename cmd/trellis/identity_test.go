package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// background runs `trellis ARGS...` until the returned stop is called (the
// Ctrl-C of a terminal: the command's context ends), and returns its output
// buffer and stop, which returns the command's error.
func background(t *testing.T, args ...string) (*syncBuffer, func() error) {
	t.Helper()
	cmd := newRootCommand()
	out := &syncBuffer{}
	cmd.SetOut(out)
	cmd.SetErr(out)
	cmd.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("trellis %s did not stop within 30s of its context ending", strings.Join(args, " "))
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

// waitUntil polls cond every 100ms until it returns "", failing the test
// with its last complaint after timeout.
func waitUntil(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// svidOnDisk reads the SVID files in dir.
func svidOnDisk(dir string) (*x509svid.SVID, error) {
	f := identity.SyncedFiles(dir)
	return x509svid.Load(f.Cert, f.Key)
}

// eachFileParses checks that the certificate and key files each hold what
// they should, whole, taken one at a time.
func eachFileParses(f identity.Files) error {
	cert, err := os.ReadFile(f.Cert)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(cert)
	if block == nil {
		return fmt.Errorf("%s: no PEM block", f.Cert)
	}
	if _, err := x509.ParseCertificates(block.Bytes); err != nil {
		return fmt.Errorf("%s: %w", f.Cert, err)
	}
	key, err := os.ReadFile(f.Key)
	if err != nil {
		return err
	}
	if block, _ = pem.Decode(key); block == nil {
		return fmt.Errorf("%s: no PEM block", f.Key)
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		return fmt.Errorf("%s: %w", f.Key, err)
	}
	return nil
}

func TestIdentitySync(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	id := spiffeid.RequireFromPath(spire.TrustDomain(), "/ns/default/dc/dc1/svc/echo")
	// A short lifetime: the agent rotates the SVID within seconds.
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String(), X509SVIDTTL: 20 * time.Second})

	dir := filepath.Join(t.TempDir(), "identity")
	out, stop := background(t, "identity", "sync", "--dir", dir, "--workload-api-addr", spire.WorkloadAPIAddr(), "--spiffe-id", id.String())

	var first *x509svid.SVID
	waitUntil(t, 30*time.Second, func() string {
		svid, err := svidOnDisk(dir)
		if err != nil {
			return fmt.Sprintf("no SVID on disk yet: %v\n%s", err, out)
		}
		first = svid
		return ""
	})
	if first.ID != id {
		t.Fatalf("SVID on disk is %s, want %s", first.ID, id)
	}
	ca, err := os.ReadFile(identity.SyncedFiles(dir).CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("%s holds no certificate", identity.CAFileName)
	}
	if _, err := first.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("SVID on disk does not verify against %s: %v", identity.CAFileName, err)
	}

	// A rotation rewrites the files and is logged. Each file is replaced
	// atomically: read alone, it always parses. Key and certificate are
	// two files, replaced one after the other, so the pair may mismatch
	// for the moment between the two renames (gRPC's file watchers then
	// keep the pair they have and read again), and no longer.
	const pairGrace = 2 * time.Second
	var mismatchSince time.Time
	waitUntil(t, 40*time.Second, func() string {
		if err := eachFileParses(identity.SyncedFiles(dir)); err != nil {
			t.Fatalf("mid-rotation: %v", err)
		}
		svid, err := svidOnDisk(dir)
		if err != nil {
			if mismatchSince.IsZero() {
				mismatchSince = time.Now()
			} else if time.Since(mismatchSince) > pairGrace {
				t.Fatalf("the SVID files do not make a pair for more than %v: %v", pairGrace, err)
			}
			return fmt.Sprintf("mid-rotation: %v", err)
		}
		mismatchSince = time.Time{}
		if svid.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			return "SVID not rotated yet"
		}
		return ""
	})
	waitUntil(t, 10*time.Second, func() string {
		if n := strings.Count(out.String(), "SVID files written"); n < 2 {
			return fmt.Sprintf("%d rotations logged, want 2:\n%s", n, out)
		}
		return ""
	})

	// Interrupting stops the command cleanly and leaves the files.
	if err := stop(); err != nil {
		t.Fatalf("identity sync returned %v after interruption\n%s", err, out)
	}
	if !strings.Contains(out.String(), "stopped keeping SVID files") {
		t.Errorf("no stop message in the output:\n%s", out)
	}
	if _, err := svidOnDisk(dir); err != nil {
		t.Errorf("the files are gone after the command stopped: %v", err)
	}
}

// TestIdentitySyncWithoutWorkloadAPI: with no agent at the address, the
// command keeps retrying and says why, writes nothing, and stops cleanly.
func TestIdentitySyncWithoutWorkloadAPI(t *testing.T) {
	dir := t.TempDir()
	sock := "unix://" + filepath.Join(t.TempDir(), "missing.sock")
	out, stop := background(t, "identity", "sync", "--dir", dir, "--workload-api-addr", sock)
	waitUntil(t, 30*time.Second, func() string {
		if !strings.Contains(out.String(), "no X.509 SVID from the Workload API yet; retrying") {
			return "no retry message yet:\n" + out.String()
		}
		return ""
	})
	if err := stop(); err != nil {
		t.Fatalf("identity sync returned %v after interruption\n%s", err, out)
	}
	if _, err := os.Stat(identity.SyncedFiles(dir).Cert); !os.IsNotExist(err) {
		t.Errorf("a certificate was written without a Workload API: %v", err)
	}
}

func TestIdentitySyncBadInput(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     string
		args    []string
		wantErr string
	}{
		{name: "no dir", args: []string{"--workload-api-addr", "unix:///a.sock"}, wantErr: "--dir is required"},
		{name: "no address", args: []string{"--dir", t.TempDir()}, wantErr: "SPIFFE_ENDPOINT_SOCKET"},
		{name: "relative socket", args: []string{"--dir", t.TempDir(), "--workload-api-addr", "unix://agent.sock"}, wantErr: "--workload-api-addr"},
		{name: "path, not an address", args: []string{"--dir", t.TempDir(), "--workload-api-addr", "/run/agent.sock"}, wantErr: "want unix:///abs/path or tcp://ip:port"},
		{name: "bad SPIFFE ID", env: "unix:///a.sock", args: []string{"--dir", t.TempDir(), "--spiffe-id", "echo"}, wantErr: "--spiffe-id"},
		{name: "bad log level", env: "unix:///a.sock", args: []string{"--dir", t.TempDir(), "--log-level", "loud"}, wantErr: "--log-level"},
		{name: "dir is a file", env: "unix:///a.sock", args: []string{"--dir", notADir}, wantErr: "not a directory"},
		{name: "arguments", args: []string{"x"}, wantErr: "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			out, err := runCLI(t, "", append([]string{"identity", "sync"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q\noutput: %s", err, tt.wantErr, out)
			}
		})
	}
}
