package filesync_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	_ "google.golang.org/grpc/credentials/tls/certprovider/pemfile" // file_watcher

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/filesync"
	"github.com/trellis-mesh/trellis/internal/testutil/logtest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

const testTimeout = 90 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// run starts s.Run and returns a function that stops it and returns its
// result.
func run(t *testing.T, s *filesync.Syncer) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(testTimeout):
				err = errors.New("Run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// onDisk is what the files hold at one moment.
type onDisk struct {
	svid      *x509svid.SVID
	roots     []*x509.Certificate
	bundleMap map[string]*spiffebundle.Bundle
}

// waitForFiles waits until the files hold a consistent SVID that accept
// approves, and returns it.
func waitForFiles(t *testing.T, files identity.Files, accept func(onDisk) bool) onDisk {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	var last error
	for {
		d, err := readFiles(files)
		if err == nil && accept(d) {
			return d
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("files in %s not as expected within %s (last read error: %v)", filepath.Dir(files.Cert), testTimeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readFiles(files identity.Files) (onDisk, error) {
	svid, err := x509svid.Load(files.Cert, files.Key) // fails on a cert/key mismatch
	if err != nil {
		return onDisk{}, err
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		return onDisk{}, err
	}
	var roots []*x509.Certificate
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return onDisk{}, err
		}
		roots = append(roots, c)
	}
	raw, err := os.ReadFile(files.BundleMap)
	if err != nil {
		return onDisk{}, err
	}
	var doc struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return onDisk{}, err
	}
	m := map[string]*spiffebundle.Bundle{}
	for name, jwks := range doc.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return onDisk{}, err
		}
		if m[name], err = spiffebundle.Parse(td, jwks); err != nil {
			return onDisk{}, err
		}
	}
	return onDisk{svid: svid, roots: roots, bundleMap: m}, nil
}

func TestSyncWritesAndRotates(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	want := spiffeid.RequireFromPath(spire.TrustDomain(), "/ns/default/dc/dc1/svc/echo")
	// Rotation about 10 s after issue: see spiretest.Options.SVIDTTL.
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String(), X509SVIDTTL: 30 * time.Second})

	dir := filepath.Join(t.TempDir(), "identity")
	reg := prometheus.NewRegistry()
	s, err := filesync.New(filesync.Config{Dir: dir, WorkloadAPIAddr: spire.WorkloadAPIAddr(), Logger: testLogger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	files := s.Files()
	if files != identity.SyncedFiles(dir) {
		t.Errorf("Files() = %+v, want %+v", files, identity.SyncedFiles(dir))
	}
	run(t, s)

	first := waitForFiles(t, files, func(onDisk) bool { return true })
	if first.svid.ID != want {
		t.Errorf("cert.pem holds %s, want %s", first.svid.ID, want)
	}
	serverCAs := spire.Bundle(t).X509Authorities()
	if len(first.roots) != len(serverCAs) {
		t.Errorf("ca.pem holds %d roots, want the server's %d", len(first.roots), len(serverCAs))
	}
	for i := range min(len(first.roots), len(serverCAs)) {
		if !first.roots[i].Equal(serverCAs[i]) {
			t.Errorf("ca.pem root %d is not the server CA", i)
		}
	}
	b, ok := first.bundleMap[spire.TrustDomain().Name()]
	if !ok || len(first.bundleMap) != 1 {
		t.Fatalf("bundle map has %d trust domains, want %s only", len(first.bundleMap), spire.TrustDomain())
	}
	for _, ca := range serverCAs {
		if !b.HasX509Authority(ca) {
			t.Errorf("bundle map lacks the server CA")
		}
	}
	if _, err := first.svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool(first.roots), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("cert.pem does not verify against ca.pem: %v", err)
	}
	checkModes(t, dir)

	// gRPC's stock file_watcher reads the files through the bootstrap
	// fragment, and follows the rotation.
	frag, err := identity.FileWatcherProvider(dir, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	watcher := buildProvider(t, frag)

	rotated := waitForFiles(t, files, func(d onDisk) bool {
		return d.svid.Certificates[0].SerialNumber.Cmp(first.svid.Certificates[0].SerialNumber) != 0
	})
	if rotated.svid.ID != want {
		t.Errorf("rotated cert.pem holds %s, want %s", rotated.svid.ID, want)
	}
	if !rotated.svid.Certificates[0].NotAfter.After(first.svid.Certificates[0].NotAfter) {
		t.Errorf("rotated SVID does not expire later than the first")
	}
	checkModes(t, dir)

	deadline := time.Now().Add(testTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		km, err := watcher.KeyMaterial(ctx)
		cancel()
		if err != nil {
			t.Fatalf("file_watcher KeyMaterial: %v", err)
		}
		if leaf := km.Certs[0].Leaf; leaf != nil && leaf.SerialNumber.Cmp(first.svid.Certificates[0].SerialNumber) != 0 {
			break
		} else if leaf == nil {
			// grpc-go's file_watcher fills Certificate but not Leaf.
			c, err := x509.ParseCertificate(km.Certs[0].Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if c.SerialNumber.Cmp(first.svid.Certificates[0].SerialNumber) != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("file_watcher did not pick up the rotated SVID")
		}
		time.Sleep(200 * time.Millisecond)
	}

	if got := gauge(t, reg, "trellis_identity_sync_writes_total"); got < 2 {
		t.Errorf("trellis_identity_sync_writes_total = %v, want at least 2", got)
	}
	if got := gauge(t, reg, "trellis_identity_sync_svid_expiry_timestamp_seconds"); got < float64(rotated.svid.Certificates[0].NotAfter.Unix()) {
		t.Errorf("trellis_identity_sync_svid_expiry_timestamp_seconds = %v, want at least %d", got, rotated.svid.Certificates[0].NotAfter.Unix())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, " "), "ca.pem cert.pem key.pem spiffe_bundle_map.json"; got != want {
		t.Errorf("directory holds %q, want %q (no temporary files left)", got, want)
	}
}

func TestSyncWithoutWorkloadAPI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	reg := prometheus.NewRegistry()
	logs := &logtest.Recorder{}
	addr := "unix://" + filepath.Join(t.TempDir(), "missing.sock")
	s, err := filesync.New(filesync.Config{Dir: dir, WorkloadAPIAddr: addr, Logger: slog.New(logs), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	rec := logs.WaitFor(t, "no X.509 SVID from the Workload API yet; retrying", testTimeout)
	if !strings.Contains(attr(rec, "error"), "no such file or directory") {
		t.Errorf("logged error %q does not say the socket is missing", attr(rec, "error"))
	}
	if got := gauge(t, reg, "trellis_identity_sync_workload_api_errors_total"); got < 1 {
		t.Errorf("trellis_identity_sync_workload_api_errors_total = %v, want at least 1", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v, want nil", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("files written without an SVID: %v", entries)
	}
}

func TestNewAndRunErrors(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	tests := []struct {
		name    string
		cfg     filesync.Config
		wantErr string
	}{
		{name: "no dir", cfg: filesync.Config{WorkloadAPIAddr: "unix:///a.sock"}, wantErr: "Dir is required"},
		{name: "no address", cfg: filesync.Config{Dir: "/x"}, wantErr: "SPIFFE_ENDPOINT_SOCKET"},
		{name: "bad address", cfg: filesync.Config{Dir: "/x", WorkloadAPIAddr: "unix://a.sock"}, wantErr: "must be absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := filesync.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "filesync: ") {
				t.Fatalf("New(%+v) error = %v, want %q", tt.cfg, err, tt.wantErr)
			}
		})
	}

	t.Run("duplicate metrics", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := filesync.Config{Dir: "/x", WorkloadAPIAddr: "unix:///a.sock", Registerer: reg}
		if _, err := filesync.New(cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := filesync.New(cfg); err == nil || !strings.Contains(err.Error(), "register metrics") {
			t.Fatalf("second New on one registry: %v, want a registration error", err)
		}
	})

	t.Run("dir is a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := filesync.New(filesync.Config{Dir: file, WorkloadAPIAddr: "unix:///a.sock", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := s.Run(ctx); err == nil || !strings.HasPrefix(err.Error(), "filesync: ") {
			t.Fatalf("Run into a file = %v, want a filesync error", err)
		}
	})
}

func checkModes(t *testing.T, dir string) {
	t.Helper()
	for name, want := range map[string]os.FileMode{
		identity.CertFileName:      0o644,
		identity.KeyFileName:       0o600,
		identity.CAFileName:        0o644,
		identity.BundleMapFileName: 0o644,
	} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s has mode %o, want %o", name, got, want)
		}
	}
}

func buildProvider(t *testing.T, frag json.RawMessage) grpccertprovider.Provider {
	t.Helper()
	var entry struct {
		PluginName string          `json:"plugin_name"`
		Config     json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(frag, &entry); err != nil {
		t.Fatal(err)
	}
	p, err := grpccertprovider.GetProvider(entry.PluginName, entry.Config, grpccertprovider.BuildOptions{WantIdentity: true, WantRoot: true})
	if err != nil {
		t.Fatalf("GetProvider(%s): %v", frag, err)
	}
	t.Cleanup(p.Close)
	return p
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// gauge returns the value of a counter or gauge without labels.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func attr(rec slog.Record, key string) string {
	var v string
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

// TestSyncFederatedRoots: with a federated trust domain, ca.pem and the
// bundle map hold the roots of both.
func TestSyncFederatedRoots(t *testing.T) {
	local := spiretest.Start(t, spiretest.Options{TrustDomain: "a.test"})
	remote := spiretest.Start(t, spiretest.Options{TrustDomain: "b.test"})
	local.SetFederatedBundle(t, remote.Bundle(t))
	id := spiffeid.RequireFromPath(local.TrustDomain(), "/ns/default/dc/dc1/svc/echo")
	local.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String(), FederatesWith: []string{"b.test"}})

	dir := t.TempDir()
	s, err := filesync.New(filesync.Config{Dir: dir, WorkloadAPIAddr: local.WorkloadAPIAddr(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	d := waitForFiles(t, s.Files(), func(d onDisk) bool { return len(d.bundleMap) == 2 })

	want := map[string][]*x509.Certificate{
		"a.test": local.Bundle(t).X509Authorities(),
		"b.test": remote.Bundle(t).X509Authorities(),
	}
	var wantRoots []*x509.Certificate
	for _, td := range []string{"a.test", "b.test"} { // ca.pem is ordered by trust domain
		wantRoots = append(wantRoots, want[td]...)
		b := d.bundleMap[td]
		if b == nil || len(b.X509Authorities()) != len(want[td]) {
			t.Fatalf("bundle map entry of %s = %v, want %d authorities", td, b, len(want[td]))
		}
		for _, ca := range want[td] {
			if !b.HasX509Authority(ca) {
				t.Errorf("bundle map entry of %s lacks its CA", td)
			}
		}
	}
	if len(d.roots) != len(wantRoots) {
		t.Fatalf("ca.pem holds %d roots, want %d", len(d.roots), len(wantRoots))
	}
	for i := range wantRoots {
		if !d.roots[i].Equal(wantRoots[i]) {
			t.Errorf("ca.pem root %d is %s, want %s", i, d.roots[i].Subject, wantRoots[i].Subject)
		}
	}
}
