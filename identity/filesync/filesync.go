// Package filesync keeps a workload's X.509 SVID and trust bundles on disk,
// for gRPC's stock file_watcher certificate provider (see
// identity.FileWatcherProvider) and any other consumer of PEM files.
//
// In its directory it keeps cert.pem (SVID chain, leaf first), key.pem
// (PKCS#8, mode 0600), ca.pem (the X.509 roots of every trust domain) and
// spiffe_bundle_map.json (the SPIFFE trust bundle map of gRFC A87), and
// rewrites them on every rotation the SPIFFE Workload API delivers. Each
// file is replaced atomically (a temporary file in the same directory,
// fsync, rename), so a reader never sees a partial file. The key and the
// certificate are two files, replaced one after the other: for the moment
// between the two renames a reader may find the new key beside the old
// certificate. gRPC's file_watcher providers (grpc-go, C-core) check that
// the pair matches, and otherwise keep the pair they have and read again
// at their next refresh.
//
// The package must not import anything of Trellis outside identity, but
// for the dependency-free internal/atomicfile.
package filesync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/internal/x509watch"
	"github.com/trellis-mesh/trellis/internal/atomicfile"
)

// Config configures a Syncer.
type Config struct {
	// Dir is the directory that holds the files. It is created (mode 0755)
	// when missing. Required.
	Dir string
	// WorkloadAPIAddr is the SPIFFE Workload API address, such as
	// "unix:///run/spire/agent.sock".
	// Default: the SPIFFE_ENDPOINT_SOCKET environment variable.
	WorkloadAPIAddr string
	// SPIFFEID picks one SVID when the Workload API offers several.
	// Default: the Workload API's default (first) SVID.
	SPIFFEID spiffeid.ID
	// Logger receives rotations and failures. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics. Default: none (no metrics).
	Registerer prometheus.Registerer
}

// Syncer keeps the files of one directory up to date.
type Syncer struct {
	dir    string
	files  identity.Files
	addr   string
	want   spiffeid.ID
	logger *slog.Logger

	writes    prometheus.Counter
	apiErrors prometheus.Counter
	notAfter  prometheus.Gauge

	running sync.Mutex // held by Run
}

// New validates cfg and registers the metrics:
//
//	trellis_identity_sync_writes_total             rotations written to disk
//	trellis_identity_sync_workload_api_errors_total Workload API failures
//	trellis_identity_sync_svid_expiry_timestamp_seconds NotAfter of the SVID on disk
func New(cfg Config) (*Syncer, error) {
	if cfg.Dir == "" {
		return nil, errors.New("filesync: Dir is required")
	}
	addr, err := identity.WorkloadAPIAddr(cfg.WorkloadAPIAddr)
	if err != nil {
		return nil, fmt.Errorf("filesync: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	dir := filepath.Clean(cfg.Dir)
	s := &Syncer{
		dir:    dir,
		files:  identity.SyncedFiles(dir),
		addr:   addr,
		want:   cfg.SPIFFEID,
		logger: logger.With("dir", dir, "workload_api", addr),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_identity_sync_writes_total",
			Help: "SVID rotations written to disk.",
		}),
		apiErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_identity_sync_workload_api_errors_total",
			Help: "Failures of the SPIFFE Workload API stream.",
		}),
		notAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_identity_sync_svid_expiry_timestamp_seconds",
			Help: "Expiry (NotAfter, Unix seconds) of the X.509 SVID on disk.",
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.writes, s.apiErrors, s.notAfter} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("filesync: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Files returns the paths of the files the Syncer keeps.
func (s *Syncer) Files() identity.Files { return s.files }

// Run writes the files on every SVID or bundle update until ctx ends, and
// returns nil then. While the Workload API is unreachable it keeps retrying
// and leaves the files as they are; an expired SVID stays on disk until a
// new one arrives. Run returns an error when the directory cannot be
// created or a file cannot be written.
func (s *Syncer) Run(ctx context.Context) error {
	if !s.running.TryLock() {
		return errors.New("filesync: Run is already running")
	}
	defer s.running.Unlock()
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("filesync: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h := &handler{s: s, cancel: cancel}
	if err := x509watch.Watch(ctx, s.addr, s.logger, h); err != nil {
		return fmt.Errorf("filesync: %w", err)
	}
	// Watch calls h on this goroutine, so h.writeErr is settled.
	return h.writeErr
}

// handler writes each update; it lives for one Run.
type handler struct {
	s        *Syncer
	cancel   context.CancelCauseFunc
	writeErr error
	last     map[string][]byte // file path -> content on disk
	notAfter time.Time         // of the SVID on disk
	hasSVID  bool
}

func (h *handler) OnUpdate(c *workloadapi.X509Context) {
	if h.writeErr != nil {
		return
	}
	svid, err := identity.SelectSVID(c.SVIDs, h.s.want)
	if err != nil {
		h.OnError(err)
		return
	}
	certPEM, keyPEM, err := identity.MarshalSVID(svid)
	if err != nil {
		h.OnError(err)
		return
	}
	bundleMap, err := identity.MarshalBundleMap(c.Bundles)
	if err != nil {
		h.OnError(err)
		return
	}
	f := h.s.files
	// The roots go first, so that a reader of the new SVID already trusts
	// the authorities it may chain to; key and cert are written back to back.
	writes := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{f.CA, identity.MarshalRoots(c.Bundles), 0o644},
		{f.BundleMap, bundleMap, 0o644},
		{f.Key, keyPEM, 0o600},
		{f.Cert, certPEM, 0o644},
	}
	if h.last == nil {
		h.last = map[string][]byte{}
	}
	changed := false
	for _, w := range writes {
		if bytes.Equal(h.last[w.path], w.data) {
			continue
		}
		if err := atomicfile.Write(w.path, w.data, w.mode); err != nil {
			h.writeErr = fmt.Errorf("filesync: %w", err)
			h.s.logger.Error("writing SVID files failed", "error", err)
			h.cancel(h.writeErr)
			return
		}
		h.last[w.path] = w.data
		changed = true
	}
	leaf := svid.Certificates[0]
	h.notAfter, h.hasSVID = leaf.NotAfter, true
	h.s.notAfter.Set(float64(leaf.NotAfter.Unix()))
	if changed {
		h.s.writes.Inc()
		h.s.logger.Info("SVID files written", "spiffe_id", svid.ID.String(),
			"serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter.UTC(),
			"trust_domains", c.Bundles.Len())
	}
}

func (h *handler) OnError(err error) {
	h.s.apiErrors.Inc()
	if !h.hasSVID {
		h.s.logger.Warn("no X.509 SVID from the Workload API yet; retrying", "error", err)
		return
	}
	h.s.logger.Warn("Workload API failed; the files keep the last SVID until a new one arrives",
		"error", err, "not_after", h.notAfter.UTC(), "expired", !time.Now().Before(h.notAfter))
}
