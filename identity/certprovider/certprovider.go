// Package certprovider is the in-process gRPC certificate provider plugin
// "trellis_spiffe": it serves a workload's X.509 SVID and trust bundles from
// the SPIFFE Workload API to grpc-go's xDS credentials, and picks up every
// rotation without a restart.
//
// Importing the package registers the plugin with grpc-go:
//
//	import _ "github.com/trellis-mesh/trellis/identity/certprovider"
//
// and the xDS bootstrap names it (see identity.ProviderFragment):
//
//	"certificate_providers": {
//	  "trellis": {
//	    "plugin_name": "trellis_spiffe",
//	    "config": {"workload_api_addr": "unix:///run/spire/agent.sock"}
//	  }
//	}
//
// The config's "roots" option chooses the trusted roots: "all" (the
// default) hands gRPC the bundles of every trust domain the Workload API
// serves, federated ones included; "own_trust_domain" only the bundle of
// the trust domain of the workload's own SVID. With the latter, grpc-go's
// xDS server credentials refuse, in the TLS handshake, every client whose
// SPIFFE ID is of another trust domain: grpc-go verifies a client against
// the SPIFFEBundleMap entry of the trust domain of its SPIFFE ID (its one
// URI SAN), and the map holds no other trust domain. The control plane
// relies on that to serve a Listener without an RBAC filter when its only
// rule is "any workload of the trust domain" (see xdsserver/translate).
//
// The config is parsed strictly: an unknown field, or an unknown value of
// a known one, is an error, and grpc-go then refuses the whole bootstrap.
// So a workload built with a plugin that does not know an option fails to
// start rather than run with a weaker setting; that is what keeps the
// "roots" option safe for workloads built before it existed.
//
// The same import registers the xDS bootstrap channel credentials
// "trellis_spiffe" (see identity.ChannelCreds): the workload reaches the xDS
// server itself over mTLS with its SVID, and accepts the server by its
// SPIFFE ID rather than a host name:
//
//	"xds_servers": [{
//	  "server_uri": "trellis.example:18000",
//	  "channel_creds": [{
//	    "type": "trellis_spiffe",
//	    "config": {"server_spiffe_ids": ["spiffe://example.org/trellis/control-plane"]}
//	  }]
//	}]
//
// The package must not import anything of Trellis outside identity.
package certprovider

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/internal/x509watch"
)

// PluginName is the name the plugin registers under.
const PluginName = identity.ProviderPluginName

func init() {
	grpccertprovider.Register(builder{last: &lastSVIDs{byConfig: map[string]*lastSVID{}}})
}

// Config configures a Provider.
type Config struct {
	// WorkloadAPIAddr is the SPIFFE Workload API address, such as
	// "unix:///run/spire/agent.sock".
	// Default: the SPIFFE_ENDPOINT_SOCKET environment variable.
	WorkloadAPIAddr string
	// SPIFFEID picks one SVID when the Workload API offers several.
	// Default: the Workload API's default (first) SVID.
	SPIFFEID spiffeid.ID
	// OwnTrustDomainRoots hands gRPC, as Roots and SPIFFEBundleMap, only
	// the bundle of the trust domain of the SVID served, so that peers of
	// every other trust domain fail the TLS handshake. Default: false, the
	// bundles of every trust domain the Workload API serves.
	OwnTrustDomainRoots bool
	// Logger receives rotations and Workload API failures.
	// Default: slog.Default() with component=identity.
	Logger *slog.Logger
}

// Provider is a grpc-go certificate provider fed by the Workload API.
//
// KeyMaterial returns the current SVID as the identity certificate, the
// X.509 roots of every trust domain as Roots (with OwnTrustDomainRoots, of
// the SVID's trust domain only), and the same bundles keyed by trust
// domain as SPIFFEBundleMap, so that grpc-go's xDS credentials verify each
// peer against the roots of the peer's own trust domain and match its
// SPIFFE ID (URI SAN) against the SAN matchers from the control plane.
//
// Until the first SVID arrives KeyMaterial blocks; once the Workload API has
// failed without ever delivering one, KeyMaterial returns that failure while
// the Provider keeps retrying. After the first SVID, failures and expiry are
// logged and the last SVID is served until a new one arrives.
//
// Providers built through the plugin (from the xDS bootstrap) start from the
// last unexpired SVID that an earlier Provider of the same config fetched in
// this process: grpc-go builds a Provider per connection on xDS servers and
// closes it with the connection, and a new connection must not depend on
// the Workload API answering right then (an agent restart, say).
type Provider struct {
	addr   string
	want   spiffeid.ID
	ownTD  bool
	logger *slog.Logger
	dist   *grpccertprovider.Distributor

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	expiry *time.Timer // fires when the current SVID expires

	// last, when set, receives every SVID, for the next Provider of the
	// same config.
	last *lastSVID

	mu   sync.Mutex
	svid *x509svid.SVID // current SVID; nil before the first
}

var _ grpccertprovider.Provider = (*Provider)(nil)

// New validates cfg and starts watching the Workload API in the background.
// It does not wait for the first SVID: KeyMaterial does.
func New(cfg Config) (*Provider, error) {
	return newProvider(cfg, nil)
}

// newProvider is New, starting from the SVID in last, if any and unexpired,
// and keeping every new SVID there.
func newProvider(cfg Config, last *lastSVID) (*Provider, error) {
	addr, err := identity.WorkloadAPIAddr(cfg.WorkloadAPIAddr)
	if err != nil {
		return nil, fmt.Errorf("certprovider: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default().With("component", "identity")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Provider{
		addr:   addr,
		want:   cfg.SPIFFEID,
		ownTD:  cfg.OwnTrustDomainRoots,
		logger: logger.With("workload_api", addr),
		dist:   grpccertprovider.NewDistributor(),
		cancel: cancel,
		expiry: time.NewTimer(time.Hour),
		last:   last,
	}
	p.expiry.Stop()
	if svid, km := last.get(); svid != nil && time.Now().Before(svid.Certificates[0].NotAfter) {
		p.svid = svid
		p.dist.Set(km, nil)
		p.expiry.Reset(time.Until(svid.Certificates[0].NotAfter))
		p.logger.Debug("serving the last X.509 SVID fetched in this process until the Workload API answers",
			"spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter.UTC())
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		if err := x509watch.Watch(ctx, addr, p.logger, (*watchHandler)(p)); err != nil {
			p.logger.Error("Workload API watch stopped", "error", err)
			p.fail(err)
		}
	}()
	go func() {
		defer p.wg.Done()
		p.reportExpiry(ctx)
	}()
	return p, nil
}

// KeyMaterial returns the current identity certificate and trust bundles,
// waiting for the first SVID until ctx ends. Callers must not modify it.
func (p *Provider) KeyMaterial(ctx context.Context) (*grpccertprovider.KeyMaterial, error) {
	km, err := p.dist.KeyMaterial(ctx)
	if err != nil {
		return nil, fmt.Errorf("certprovider: %w", err)
	}
	return km, nil
}

// Close stops the Provider and waits for its goroutines. It is idempotent.
func (p *Provider) Close() {
	p.closeOnce.Do(func() {
		p.cancel()
		p.wg.Wait()
		p.expiry.Stop()
		p.dist.Stop()
	})
}

// watchHandler receives the Workload API stream for a Provider.
type watchHandler Provider

var _ x509watch.Handler = (*watchHandler)(nil)

// OnUpdate serves a new SVID and bundles.
func (h *watchHandler) OnUpdate(c *workloadapi.X509Context) {
	p := (*Provider)(h)
	svid, err := identity.SelectSVID(c.SVIDs, p.want)
	if err != nil {
		h.OnError(err)
		return
	}
	km, err := keyMaterial(svid, c.Bundles, p.ownTD)
	if err != nil {
		h.OnError(err)
		return
	}
	if p.ownTD && len(km.SPIFFEBundleMap) == 0 {
		p.logger.Warn("the Workload API serves no bundle for the SVID's own trust domain; every peer will be refused",
			"spiffe_id", svid.ID.String())
	}

	p.mu.Lock()
	p.dist.Set(km, nil)
	p.svid = svid
	p.expiry.Reset(time.Until(svid.Certificates[0].NotAfter))
	p.mu.Unlock()
	p.last.set(svid, km)
	leaf := svid.Certificates[0]
	p.logger.Info("X.509 SVID updated", "spiffe_id", svid.ID.String(),
		"serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter.UTC())
}

// keyMaterial is what a Provider serves for svid and bundles: with ownTD,
// only the bundle of svid's trust domain (none, and every peer is refused,
// when bundles lack it). SPIFFEBundleMap is never nil, so that grpc-go
// always verifies peers by the trust domain of their SPIFFE ID.
func keyMaterial(svid *x509svid.SVID, bundles *x509bundle.Set, ownTD bool) (*grpccertprovider.KeyMaterial, error) {
	cert, err := identity.TLSCertificate(svid)
	if err != nil {
		return nil, err
	}
	if ownTD {
		own := x509bundle.NewSet()
		if b, ok := bundles.Get(svid.ID.TrustDomain()); ok {
			own.Add(b)
		}
		bundles = own
	}
	return &grpccertprovider.KeyMaterial{
		Certs:           []tls.Certificate{cert},
		Roots:           identity.RootPool(bundles),
		SPIFFEBundleMap: identity.SPIFFEBundleMap(bundles),
	}, nil
}

// OnError reports a failure and keeps the current SVID, if any.
func (h *watchHandler) OnError(err error) {
	p := (*Provider)(h)
	p.mu.Lock()
	svid := p.svid
	p.mu.Unlock()
	if svid == nil {
		p.logger.Warn("no X.509 SVID from the Workload API yet; retrying", "error", err)
		p.fail(err)
		return
	}
	leaf := svid.Certificates[0]
	p.logger.Warn("Workload API failed; serving the last X.509 SVID until a new one arrives",
		"error", err, "spiffe_id", svid.ID.String(), "not_after", leaf.NotAfter.UTC(),
		"expired", !time.Now().Before(leaf.NotAfter))
}

// fail makes KeyMaterial return err, unless an SVID has arrived.
func (p *Provider) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.svid != nil {
		return
	}
	p.dist.Set(nil, fmt.Errorf("no X.509 SVID from the Workload API at %s: %w", p.addr, err))
}

// reportExpiry logs when the served SVID expires before a new one arrives.
func (p *Provider) reportExpiry(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.expiry.C:
			p.mu.Lock()
			svid := p.svid
			p.mu.Unlock()
			if svid == nil || time.Now().Before(svid.Certificates[0].NotAfter) {
				continue
			}
			p.logger.Error("X.509 SVID expired and the Workload API has not delivered a new one; still serving it, peers will reject it",
				"spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter.UTC())
		}
	}
}

// lastSVIDs holds, per plugin config, the last SVID a Provider built by the
// plugin fetched: part of the plugin registration, it lives as long as the
// process.
type lastSVIDs struct {
	mu       sync.Mutex
	byConfig map[string]*lastSVID
}

func (l *lastSVIDs) forConfig(canonical string) *lastSVID {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.byConfig[canonical]
	if !ok {
		v = &lastSVID{}
		l.byConfig[canonical] = v
	}
	return v
}

// lastSVID is the last SVID of one plugin config. A nil *lastSVID holds
// nothing.
type lastSVID struct {
	mu   sync.Mutex
	svid *x509svid.SVID
	km   *grpccertprovider.KeyMaterial
}

func (l *lastSVID) get() (*x509svid.SVID, *grpccertprovider.KeyMaterial) {
	if l == nil {
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.svid, l.km
}

func (l *lastSVID) set(svid *x509svid.SVID, km *grpccertprovider.KeyMaterial) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.svid, l.km = svid, km
}

// builder is the grpc-go plugin builder.
type builder struct {
	last *lastSVIDs
}

func (builder) Name() string { return PluginName }

// ParseConfig parses the plugin's bootstrap config (identity.ProviderConfig
// as JSON), resolving the Workload API address from SPIFFE_ENDPOINT_SOCKET
// when the config names none.
func (b builder) ParseConfig(c any) (*grpccertprovider.BuildableConfig, error) {
	raw, ok := c.(json.RawMessage)
	if !ok {
		return nil, fmt.Errorf("certprovider: %s config: unsupported type %T, want JSON", PluginName, c)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, err
	}
	canonical, err := json.Marshal(identity.ProviderConfig{WorkloadAPIAddr: cfg.WorkloadAPIAddr, SPIFFEID: idString(cfg.SPIFFEID), Roots: rootsString(cfg.OwnTrustDomainRoots)})
	if err != nil {
		return nil, fmt.Errorf("certprovider: %s config: %w", PluginName, err)
	}
	last := b.last.forConfig(string(canonical))
	return grpccertprovider.NewBuildableConfig(PluginName, canonical, func(grpccertprovider.BuildOptions) grpccertprovider.Provider {
		p, err := newProvider(cfg, last)
		if err != nil {
			// Unreachable: parseConfig validated cfg. grpc-go reports a
			// nil Provider as a build failure.
			slog.Default().Error("certprovider: build", "error", err)
			return nil
		}
		return p
	}), nil
}

// parseConfig decodes and validates the plugin config. Unknown fields are
// rejected so that a misspelt field cannot silently fall back to a default.
func parseConfig(raw json.RawMessage) (Config, error) {
	var pc identity.ProviderConfig
	if len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&pc); err != nil {
			return Config{}, fmt.Errorf("certprovider: %s config %s: %w (fields: workload_api_addr, spiffe_id, roots)", PluginName, raw, err)
		}
	}
	if err := pc.Validate(); err != nil {
		return Config{}, fmt.Errorf("certprovider: %s config: %w", PluginName, err)
	}
	addr, err := identity.WorkloadAPIAddr(pc.WorkloadAPIAddr)
	if err != nil {
		return Config{}, fmt.Errorf("certprovider: %s config: workload_api_addr: %w", PluginName, err)
	}
	cfg := Config{WorkloadAPIAddr: addr, OwnTrustDomainRoots: pc.OwnTrustDomainRoots()}
	if pc.SPIFFEID != "" {
		if cfg.SPIFFEID, err = spiffeid.FromString(pc.SPIFFEID); err != nil {
			return Config{}, fmt.Errorf("certprovider: %s config: spiffe_id %q: %w", PluginName, pc.SPIFFEID, err)
		}
	}
	return cfg, nil
}

// rootsString is the roots option of the canonical config: every option
// spelled out, so that configs that differ only by a default share a
// provider.
func rootsString(ownTD bool) string {
	if ownTD {
		return identity.RootsOwnTrustDomain
	}
	return identity.RootsAll
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
