package identity

import (
	"encoding/json"
	"errors"
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
	// Roots chooses the trust bundles the provider hands gRPC as trusted
	// roots: RootsAll, or RootsOwnTrustDomain for only the bundle of the
	// trust domain of the workload's own SVID. Default: RootsAll.
	Roots string `json:"roots,omitempty"`
}

// Values of ProviderConfig.Roots.
const (
	// RootsAll trusts the bundles of every trust domain the Workload API
	// serves, federated ones included.
	RootsAll = "all"
	// RootsOwnTrustDomain trusts only the bundle of the trust domain of the
	// workload's own SVID: a peer of any other trust domain fails the TLS
	// handshake.
	//
	// A plugin that does not know the option refuses the config, as it
	// refuses every unknown field, so a bootstrap asking for it fails to
	// parse with such a plugin rather than trusting every trust domain.
	RootsOwnTrustDomain = "own_trust_domain"
)

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
	switch c.Roots {
	case "", RootsAll, RootsOwnTrustDomain:
	default:
		return fmt.Errorf("identity: roots %q: accepted: %q (default), %q", c.Roots, RootsAll, RootsOwnTrustDomain)
	}
	return nil
}

// OwnTrustDomainRoots reports whether c trusts only the workload's own
// trust domain.
func (c ProviderConfig) OwnTrustDomainRoots() bool { return c.Roots == RootsOwnTrustDomain }

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
	f, interval, err := fileConfig(dir, refresh)
	if err != nil {
		return nil, err
	}
	return marshalFragment(certificateProvider{PluginName: FileWatcherPluginName, Config: pemFilesConfig(f, interval)})
}

// fileConfig checks the directory and refresh interval of PEM file
// credentials and resolves the default interval.
func fileConfig(dir string, refresh time.Duration) (Files, time.Duration, error) {
	if !filepath.IsAbs(dir) {
		return Files{}, 0, fmt.Errorf("identity: file_watcher directory %q: must be absolute", dir)
	}
	if refresh < 0 {
		return Files{}, 0, fmt.Errorf("identity: file_watcher refresh interval %s: must not be negative", refresh)
	}
	if refresh == 0 {
		refresh = DefaultFileRefreshInterval
	}
	if refresh%time.Millisecond != 0 {
		return Files{}, 0, fmt.Errorf("identity: file_watcher refresh interval %s: must be whole milliseconds", refresh)
	}
	return SyncedFiles(filepath.Clean(dir)), refresh, nil
}

// pemFiles is the config of gRPC's file_watcher plugin and of its "tls"
// channel credentials.
type pemFiles struct {
	CertificateFile          string `json:"certificate_file"`
	PrivateKeyFile           string `json:"private_key_file"`
	CACertificateFile        string `json:"ca_certificate_file"`
	SPIFFETrustBundleMapFile string `json:"spiffe_trust_bundle_map_file"`
	RefreshInterval          string `json:"refresh_interval"`
}

func pemFilesConfig(f Files, refresh time.Duration) pemFiles {
	return pemFiles{
		CertificateFile:          f.Cert,
		PrivateKeyFile:           f.Key,
		CACertificateFile:        f.CA,
		SPIFFETrustBundleMapFile: f.BundleMap,
		RefreshInterval:          durationJSON(refresh),
	}
}

// ChannelCredsType is the xds_servers channel_creds type that
// identity/certprovider registers: the workload reaches the xDS server over
// mTLS with its SVID from the Workload API, in process.
const ChannelCredsType = "trellis_spiffe"

// TLSChannelCredsType is gRPC's stock xds_servers channel_creds type that
// reads PEM files (gRFC A65).
const TLSChannelCredsType = "tls"

// ChannelCredsConfig is the "config" object of trellis_spiffe channel
// credentials in the gRPC xDS bootstrap.
//
// The control plane is accepted when its SVID verifies against the bundle of
// its trust domain and its SPIFFE ID is one of ServerSPIFFEIDs or belongs to
// one of ServerTrustDomains. With neither set, any SPIFFE ID of the
// workload's own trust domain is accepted.
type ChannelCredsConfig struct {
	// WorkloadAPIAddr is the SPIFFE Workload API address, such as
	// "unix:///run/spire/agent.sock".
	// Default: the workload's SPIFFE_ENDPOINT_SOCKET environment variable.
	WorkloadAPIAddr string `json:"workload_api_addr,omitempty"`
	// SPIFFEID picks the workload's SVID when the Workload API offers
	// several. Default: the Workload API's default (first) SVID.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// ServerSPIFFEIDs are the SPIFFE IDs the xDS server may present.
	// Optional.
	ServerSPIFFEIDs []string `json:"server_spiffe_ids,omitempty"`
	// ServerTrustDomains are trust domains (names, such as "example.org")
	// any of whose SPIFFE IDs the xDS server may present. Optional.
	ServerTrustDomains []string `json:"server_trust_domains,omitempty"`
}

// Provider returns the certificate provider configuration that supplies
// the workload's SVID and bundles to these credentials.
func (c ChannelCredsConfig) Provider() ProviderConfig {
	return ProviderConfig{WorkloadAPIAddr: c.WorkloadAPIAddr, SPIFFEID: c.SPIFFEID}
}

// Validate checks c without resolving defaults.
func (c ChannelCredsConfig) Validate() error {
	if err := c.Provider().Validate(); err != nil {
		return err
	}
	if _, err := c.ParseServerSPIFFEIDs(); err != nil {
		return err
	}
	if _, err := c.ParseServerTrustDomains(); err != nil {
		return err
	}
	return nil
}

// ParseServerSPIFFEIDs parses ServerSPIFFEIDs.
func (c ChannelCredsConfig) ParseServerSPIFFEIDs() ([]spiffeid.ID, error) {
	ids := make([]spiffeid.ID, 0, len(c.ServerSPIFFEIDs))
	for i, s := range c.ServerSPIFFEIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("identity: server_spiffe_ids[%d] %q: %w (want spiffe://<trust domain>/<path>)", i, s, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// ParseServerTrustDomains parses ServerTrustDomains.
func (c ChannelCredsConfig) ParseServerTrustDomains() ([]spiffeid.TrustDomain, error) {
	tds := make([]spiffeid.TrustDomain, 0, len(c.ServerTrustDomains))
	for i, s := range c.ServerTrustDomains {
		td, err := spiffeid.TrustDomainFromString(s)
		if err == nil && td.Name() != s {
			err = errors.New("not a bare trust domain name")
		}
		if err != nil {
			return nil, fmt.Errorf("identity: server_trust_domains[%d] %q: %w (want a name such as example.org)", i, s, err)
		}
		tds = append(tds, td)
	}
	return tds, nil
}

// channelCreds is one entry of an xds_servers channel_creds list.
type channelCreds struct {
	Type   string `json:"type"`
	Config any    `json:"config"`
}

// ChannelCreds returns the xds_servers channel_creds entry
// ({"type": "trellis_spiffe", "config": {...}}) that makes a workload reach
// the xDS server over mTLS with its SVID from the Workload API, in process,
// checking the server's SPIFFE ID. The workload must import
// identity/certprovider for its side effect.
func ChannelCreds(cfg ChannelCredsConfig) (json.RawMessage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return marshalCreds(channelCreds{Type: ChannelCredsType, Config: cfg})
}

// TLSFilesChannelCreds returns the xds_servers channel_creds entry for
// gRPC's stock "tls" credentials reading the files identity/filesync keeps
// in dir, which must be absolute: the workload presents its SVID (cert.pem,
// key.pem, re-read every refresh; zero means DefaultFileRefreshInterval).
//
// These credentials verify the xDS server as gRPC's TLS does, not by SPIFFE
// ID: against ca.pem, and the server's certificate must carry a DNS SAN (or
// IP SAN) matching the host of the bootstrap's server_uri, which a SPIRE
// entry gets with `-dns <host>`. With GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true,
// grpc-go verifies the server's chain against the SPIFFE bundle map instead,
// by trust domain and without any host name or SPIFFE ID check.
func TLSFilesChannelCreds(dir string, refresh time.Duration) (json.RawMessage, error) {
	f, interval, err := fileConfig(dir, refresh)
	if err != nil {
		return nil, err
	}
	return marshalCreds(channelCreds{Type: TLSChannelCredsType, Config: pemFilesConfig(f, interval)})
}

func marshalCreds(c channelCreds) (json.RawMessage, error) {
	out, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("identity: encode %s channel credentials: %w", c.Type, err)
	}
	return out, nil
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
