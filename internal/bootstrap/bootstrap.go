// Package bootstrap writes the GRPC_XDS_BOOTSTRAP file that points a gRPC
// xDS client (grpc-go, grpc-js-xds or C-core) and xDS-enabled gRPC servers
// at Trellis, holding only what the chosen implementation accepts.
//
// It owns the bootstrap format only. Certificate provider and channel
// credentials entries come from the identity package as opaque JSON; this
// package must not import it, the catalog or the xDS server.
package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ServerListenerTemplate names the Listener an xDS-enabled gRPC server asks
// for: %s becomes the listening address exactly as net.Listener.Addr()
// prints it. The translator names server Listeners the same way.
const ServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

// CertificateProviderInstance is the certificate_providers instance name
// that the translator's TLS contexts name for both the workload's identity
// and its trusted roots: a bootstrap for mTLS must define an instance of
// this name.
const CertificateProviderInstance = "trellis"

// OwnTrustDomainProviderInstance is the certificate_providers instance
// name of a grpc-go bootstrap's second trellis_spiffe provider, the one
// that trusts only the workload's own trust domain. The translator names
// it, for identity and roots, on the server Listeners whose handshake
// authorizes callers, and only for clients whose node declares it
// (clients.OwnTrustDomainRootsMetadataKey).
const OwnTrustDomainProviderInstance = "trellis-own-td"

// Config describes one bootstrap file.
type Config struct {
	// Servers are the xDS servers as host:port, or as a gRPC DNS target
	// dns://[dns-server]/host:port that resolves to several replicas
	// (e.g. dns://127.0.0.1:8600/trellis-xds.service.consul:18000), in
	// order: the first is used while it works, later ones are fallbacks
	// (gRFC A71: only while resources are missing). At least one is
	// required.
	Servers []string
	// NodeID identifies the workload to the control plane. Required.
	NodeID string
	// Cluster is the node's cluster, usually the service name. Optional.
	Cluster string
	// Zone and Region set the node's locality. Optional.
	Zone   string
	Region string
	// Metadata is added to the node. Optional.
	Metadata map[string]string
	// ChannelCreds is the JSON of the xds_servers channel_creds list, used
	// for every server; grpc-go uses the first type it supports (see
	// identity.ChannelCreds and identity.TLSFilesChannelCreds).
	// Default: plaintext ([{"type": "insecure"}]).
	ChannelCreds json.RawMessage
	// CertificateProviders maps instance names to certificate provider
	// configurations ({"plugin_name": ..., "config": ...}). Optional.
	CertificateProviders map[string]json.RawMessage
	// For is the gRPC implementation that reads the file: ForGo, ForNode
	// or ForCpp; the file holds only what that implementation accepts
	// (see Implementation). Default: ForGo.
	For Implementation
}

// Implementation names a gRPC implementation whose bootstrap parser
// Generate writes for.
type Implementation string

// Implementations Generate writes for.
const (
	// ForGo is grpc-go: every option.
	ForGo Implementation = "go"
	// ForNode is grpc-js-xds 1.14. It uses only the first xds server
	// (Generate writes only that one), accepts only "insecure" and
	// "google_default" channel credentials and only the file_watcher
	// certificate provider, without spiffe_trust_bundle_map_file (left
	// out: ca_certificate_file carries the roots).
	ForNode Implementation = "node"
	// ForCpp is gRPC C-core 1.51 (Python, C++, Ruby, PHP): "insecure" and
	// "google_default" channel credentials, the file_watcher certificate
	// provider without spiffe_trust_bundle_map_file.
	ForCpp Implementation = "cpp"
)

// Implementations lists the accepted values of Config.For.
func Implementations() []Implementation { return []Implementation{ForGo, ForNode, ForCpp} }

// FileWatcherPlugin is gRPC's PEM file certificate provider, the only one
// grpc-js-xds and C-core implement.
const FileWatcherPlugin = "file_watcher"

// bundleMapField is the file_watcher option of gRFC A87 that grpc-js-xds
// and C-core 1.51 do not know.
const bundleMapField = "spiffe_trust_bundle_map_file"

type file struct {
	XDSServers                          []server                   `json:"xds_servers"`
	Node                                node                       `json:"node"`
	ServerListenerResourceNameTemplate  string                     `json:"server_listener_resource_name_template"`
	ClientDefaultListenerResourceNameTp string                     `json:"client_default_listener_resource_name_template,omitempty"`
	CertificateProviders                map[string]json.RawMessage `json:"certificate_providers,omitempty"`
}

type server struct {
	ServerURI      string          `json:"server_uri"`
	ChannelCreds   json.RawMessage `json:"channel_creds"`
	ServerFeatures []string        `json:"server_features"`
}

type node struct {
	ID       string            `json:"id"`
	Cluster  string            `json:"cluster,omitempty"`
	Locality locality          `json:"locality"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

type locality struct {
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
}

// Generate validates cfg and renders the bootstrap JSON.
func Generate(cfg Config) ([]byte, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	creds := cfg.ChannelCreds
	if len(creds) == 0 {
		creds = json.RawMessage(`[{"type":"insecure"}]`)
	}
	f := file{
		Node: node{
			ID:       cfg.NodeID,
			Cluster:  cfg.Cluster,
			Metadata: cfg.Metadata,
		},
		ServerListenerResourceNameTemplate: ServerListenerTemplate,
		CertificateProviders:               cfg.CertificateProviders,
	}
	// locality is always written, {} at least: grpc-js-xds refuses a
	// node without it.
	f.Node.Locality = locality{Region: cfg.Region, Zone: cfg.Zone}
	servers := cfg.Servers
	if cfg.For == ForNode {
		servers = servers[:1] // grpc-js-xds uses only the first
	}
	if cfg.For == ForNode || cfg.For == ForCpp {
		providers, err := withoutBundleMap(cfg.CertificateProviders)
		if err != nil {
			return nil, err
		}
		f.CertificateProviders = providers
	}
	for _, s := range servers {
		f.XDSServers = append(f.XDSServers, server{
			ServerURI:      s,
			ChannelCreds:   creds,
			ServerFeatures: []string{"xds_v3"},
		})
	}
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode: %w", err)
	}
	return append(out, '\n'), nil
}

func (cfg Config) validate() error {
	var errs []error
	if len(cfg.Servers) == 0 {
		errs = append(errs, errors.New("bootstrap: xds server: at least one is required (host:port)"))
	}
	for i, s := range cfg.Servers {
		if err := checkServer(s); err != nil {
			errs = append(errs, fmt.Errorf("bootstrap: xds server[%d] %q: %w", i, s, err))
		}
	}
	if strings.TrimSpace(cfg.NodeID) == "" {
		errs = append(errs, errors.New("bootstrap: node id: required, e.g. the service instance id"))
	}
	if len(cfg.ChannelCreds) > 0 {
		errs = append(errs, checkChannelCreds(cfg.ChannelCreds)...)
	}
	for name, p := range cfg.CertificateProviders {
		if !json.Valid(p) {
			errs = append(errs, fmt.Errorf("bootstrap: certificate provider %q: not valid JSON", name))
		}
	}
	errs = append(errs, cfg.checkImplementation()...)
	return errors.Join(errs...)
}

// checkImplementation checks that the implementation named by cfg.For
// accepts the channel credentials and certificate providers.
func (cfg Config) checkImplementation() []error {
	switch cfg.For {
	case "", ForGo:
		return nil
	case ForNode, ForCpp:
	default:
		return []error{fmt.Errorf("bootstrap: for %q: accepted: %s, %s, %s", cfg.For, ForGo, ForNode, ForCpp)}
	}
	var errs []error
	if len(cfg.ChannelCreds) > 0 {
		var list []struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(cfg.ChannelCreds, &list) == nil {
			ok := false
			for _, c := range list {
				if c.Type == "insecure" || c.Type == "google_default" {
					ok = true
				}
			}
			if !ok {
				errs = append(errs, fmt.Errorf("bootstrap: channel creds for %s: the implementation accepts only \"insecure\" and \"google_default\" for the xDS server; use a plaintext xDS connection on a trusted network (e.g. loopback to a local relay)", cfg.For))
			}
		}
	}
	for name, p := range cfg.CertificateProviders {
		var prov struct {
			PluginName string `json:"plugin_name"`
		}
		if json.Unmarshal(p, &prov) == nil && prov.PluginName != FileWatcherPlugin {
			errs = append(errs, fmt.Errorf("bootstrap: certificate provider %q for %s: plugin %q is not implemented there; accepted: %s (trellis identity sync files)", name, cfg.For, prov.PluginName, FileWatcherPlugin))
		}
	}
	return errs
}

// withoutBundleMap returns the providers with spiffe_trust_bundle_map_file
// removed from every config.
func withoutBundleMap(providers map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	if len(providers) == 0 {
		return providers, nil
	}
	out := make(map[string]json.RawMessage, len(providers))
	for name, raw := range providers {
		var prov map[string]json.RawMessage
		if err := json.Unmarshal(raw, &prov); err != nil {
			return nil, fmt.Errorf("bootstrap: certificate provider %q: %w", name, err)
		}
		var cfg map[string]json.RawMessage
		if c, ok := prov["config"]; ok {
			if err := json.Unmarshal(c, &cfg); err != nil {
				return nil, fmt.Errorf("bootstrap: certificate provider %q config: %w", name, err)
			}
			delete(cfg, bundleMapField)
			b, err := json.Marshal(cfg)
			if err != nil {
				return nil, fmt.Errorf("bootstrap: certificate provider %q: %w", name, err)
			}
			prov["config"] = b
		}
		b, err := json.Marshal(prov)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: certificate provider %q: %w", name, err)
		}
		out[name] = b
	}
	return out, nil
}

// checkChannelCreds checks that creds is a non-empty list of channel
// credentials, each with a type: grpc-go uses the first type it supports.
func checkChannelCreds(creds json.RawMessage) []error {
	var list []struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(creds, &list); err != nil {
		return []error{fmt.Errorf("bootstrap: channel creds: want a JSON list of {\"type\": ..., \"config\": {...}}: %w", err)}
	}
	if len(list) == 0 {
		return []error{errors.New("bootstrap: channel creds: the list is empty; leave it out for plaintext")}
	}
	var errs []error
	for i, c := range list {
		if c.Type == "" {
			errs = append(errs, fmt.Errorf("bootstrap: channel creds[%d]: no type", i))
		}
	}
	return errs
}

// checkServer accepts host:port and dns://[dns-server]/host:port, the
// targets of grpc-go's default and DNS resolvers.
func checkServer(s string) error {
	rest, ok := strings.CutPrefix(s, "dns://")
	if !ok {
		return checkHostPort(s)
	}
	authority, endpoint, ok := strings.Cut(rest, "/")
	if !ok {
		return errors.New("want dns://<DNS server host:port>/<host>:<port>, or dns:///<host>:<port> for the system's DNS servers")
	}
	if authority != "" {
		if err := checkHostPort(authority); err != nil {
			return fmt.Errorf("DNS server %q: %w", authority, err)
		}
	}
	if err := checkHostPort(endpoint); err != nil {
		return fmt.Errorf("name %q: %w", endpoint, err)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port ([ipv6]:port for IPv6): %w", err)
	}
	if host == "" {
		return errors.New("host is empty; want host:port")
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	return nil
}
