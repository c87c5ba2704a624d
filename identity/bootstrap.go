package identity

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ProviderPluginName is the gRPC certificate provider plugin that
// identity/certprovider registers.
const ProviderPluginName = "trellis_spiffe"

// FileWatcherPluginName is gRPC's stock PEM file certificate provider.
const FileWatcherPluginName = "file_watcher"

// ProviderConfig is the "config" object of a trellis_spiffe certificate
// provider in the gRPC xDS bootstrap.
type ProviderConfig struct {
	// WorkloadAPIAddr is the SPIFFE Workload API address, such as
	// "unix:///run/spire/agent.sock".
	// Default: the workload's SPIFFE_ENDPOINT_SOCKET environment variable.
	WorkloadAPIAddr string `json:"workload_api_addr,omitempty"`
	// SPIFFEID picks one SVID when the Workload API offers several.
	// Default: the Workload API's default (first) SVID.
	SPIFFEID string `json:"spiffe_id,omitempty"`
}

// Validate checks c without resolving defaults.
func (c ProviderConfig) Validate() error {
	if c.WorkloadAPIAddr != "" {
		if _, err := WorkloadAPIAddr(c.WorkloadAPIAddr); err != nil {
			return fmt.Errorf("identity: workload_api_addr: %w", err)
		}
	}
	if c.SPIFFEID != "" {
		if _, err := spiffeid.FromString(c.SPIFFEID); err != nil {
			return fmt.Errorf("identity: spiffe_id %q: %w", c.SPIFFEID, err)
		}
	}
	return nil
}

// Names of the files identity/filesync keeps in its directory.
const (
	// CertFileName holds the X.509 SVID chain, leaf first (PEM).
	CertFileName = "cert.pem"
	// KeyFileName holds the SVID's private key (PKCS#8 PEM, mode 0600).
	KeyFileName = "key.pem"
	// CAFileName holds the X.509 roots of every trust domain (PEM).
	CAFileName = "ca.pem"
	// BundleMapFileName holds the SPIFFE trust bundle map (gRFC A87 JSON).
	BundleMapFileName = "spiffe_bundle_map.json"
)

// Files are the paths of the files identity/filesync keeps.
type Files struct {
	Cert      string
	Key       string
	CA        string
	BundleMap string
}

// SyncedFiles returns the paths of the files kept in dir.
func SyncedFiles(dir string) Files {
	return Files{
		Cert:      filepath.Join(dir, CertFileName),
		Key:       filepath.Join(dir, KeyFileName),
		CA:        filepath.Join(dir, CAFileName),
		BundleMap: filepath.Join(dir, BundleMapFileName),
	}
}

// DefaultFileRefreshInterval is how often file_watcher re-reads the files
// when FileWatcherProvider is given no interval.
const DefaultFileRefreshInterval = time.Minute

// certificateProvider is one entry of the bootstrap's certificate_providers.
type certificateProvider struct {
	PluginName string `json:"plugin_name"`
	Config     any    `json:"config"`
}

// ProviderFragment returns the certificate_providers entry
// ({"plugin_name": "trellis_spiffe", "config": {...}}) that makes a workload
// fetch its SVID in process from the Workload API. The workload must import
// identity/certprovider for its side effect.
func ProviderFragment(cfg ProviderConfig) (json.RawMessage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return marshalFragment(certificateProvider{PluginName: ProviderPluginName, Config: cfg})
}

// FileWatcherProvider returns the certificate_providers entry for gRPC's
// stock file_watcher plugin reading the files identity/filesync keeps in
// dir, which must be absolute. refresh is how often the files are re-read;
// zero means DefaultFileRefreshInterval.
//
// The entry names both ca.pem and the SPIFFE bundle map. grpc-go reads the
// bundle map only when GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true, and then
// prefers it, verifying each peer against the roots of its own trust domain;
// otherwise it uses ca.pem, the roots of all trust domains.
func FileWatcherProvider(dir string, refresh time.Duration) (json.RawMessage, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("identity: file_watcher directory %q: must be absolute", dir)
	}
	if refresh < 0 {
		return nil, fmt.Errorf("identity: file_watcher refresh interval %s: must not be negative", refresh)
	}
	if refresh == 0 {
		refresh = DefaultFileRefreshInterval
	}
	if refresh%time.Millisecond != 0 {
		return nil, fmt.Errorf("identity: file_watcher refresh interval %s: must be whole milliseconds", refresh)
	}
	f := SyncedFiles(filepath.Clean(dir))
	return marshalFragment(certificateProvider{
		PluginName: FileWatcherPluginName,
		Config: struct {
			CertificateFile          string `json:"certificate_file"`
			PrivateKeyFile           string `json:"private_key_file"`
			CACertificateFile        string `json:"ca_certificate_file"`
			SPIFFETrustBundleMapFile string `json:"spiffe_trust_bundle_map_file"`
			RefreshInterval          string `json:"refresh_interval"`
		}{
			CertificateFile:          f.Cert,
			PrivateKeyFile:           f.Key,
			CACertificateFile:        f.CA,
			SPIFFETrustBundleMapFile: f.BundleMap,
			RefreshInterval:          durationJSON(refresh),
		},
	})
}

// durationJSON formats d as a google.protobuf.Duration in JSON ("1.5s").
func durationJSON(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

func marshalFragment(p certificateProvider) (json.RawMessage, error) {
	out, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("identity: encode %s certificate provider: %w", p.PluginName, err)
	}
	return out, nil
}
