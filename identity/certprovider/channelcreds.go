package certprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/credentials"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	xdsbootstrap "google.golang.org/grpc/xds/bootstrap"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
)

// ChannelCredsType is the xds_servers channel_creds type the package
// registers.
const ChannelCredsType = identity.ChannelCredsType

func init() {
	xdsbootstrap.RegisterChannelCredentials(channelCredsBuilder{})
}

// channelCredsBuilder builds the "trellis_spiffe" channel credentials of
// the xDS bootstrap's xds_servers: mTLS to the xDS server with the SVID from
// the Workload API (see identity.ChannelCredsConfig).
type channelCredsBuilder struct{}

var _ xdsbootstrap.ChannelCredentials = channelCredsBuilder{}

func (channelCredsBuilder) Name() string { return ChannelCredsType }

// Build parses the config and returns the credentials. The SVID comes from
// a trellis_spiffe certificate provider taken from grpc-go's provider store,
// so that every user of the same Workload API address and SPIFFE ID (the
// xDS credentials of the workload's own connections among them) shares one
// Workload API stream. grpc-go does not always call the returned close
// function; the shared provider then lives as long as the process.
func (channelCredsBuilder) Build(raw json.RawMessage) (credentials.Bundle, func(), error) {
	cfg, err := parseChannelCredsConfig(raw)
	if err != nil {
		return nil, nil, err
	}
	ids, _ := cfg.ParseServerSPIFFEIDs()    // validated by parseChannelCredsConfig
	tds, _ := cfg.ParseServerTrustDomains() // validated by parseChannelCredsConfig
	var authorize spiffetls.Authorizer
	switch {
	case len(ids) > 0 && len(tds) > 0:
		authorize = spiffetls.AuthorizeEither(spiffetls.AuthorizeIDs(ids...), spiffetls.AuthorizeTrustDomains(tds...))
	case len(ids) > 0:
		authorize = spiffetls.AuthorizeIDs(ids...)
	default:
		// No trust domain means the workload's own.
		authorize = spiffetls.AuthorizeTrustDomains(tds...)
	}
	providerCfg, err := json.Marshal(cfg.Provider())
	if err != nil {
		return nil, nil, fmt.Errorf("certprovider: %s channel credentials: %w", ChannelCredsType, err)
	}
	p, err := grpccertprovider.GetProvider(PluginName, json.RawMessage(providerCfg), grpccertprovider.BuildOptions{WantIdentity: true, WantRoot: true})
	if err != nil {
		return nil, nil, fmt.Errorf("certprovider: %s channel credentials: %w", ChannelCredsType, err)
	}
	return &channelBundle{creds: spiffetls.ClientCredentials(p, authorize)}, sync.OnceFunc(p.Close), nil
}

// parseChannelCredsConfig decodes and validates the channel credentials
// config. Unknown fields are rejected so that a misspelt field cannot
// silently widen what the workload accepts.
func parseChannelCredsConfig(raw json.RawMessage) (identity.ChannelCredsConfig, error) {
	var cfg identity.ChannelCredsConfig
	if len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("certprovider: %s channel credentials config %s: %w (fields: workload_api_addr, spiffe_id, server_spiffe_ids, server_trust_domains)", ChannelCredsType, raw, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("certprovider: %s channel credentials config: %w", ChannelCredsType, err)
	}
	return cfg, nil
}

// channelBundle is the credentials.Bundle of trellis_spiffe channel
// credentials: transport credentials only.
type channelBundle struct {
	creds credentials.TransportCredentials
}

func (b *channelBundle) TransportCredentials() credentials.TransportCredentials { return b.creds }

func (b *channelBundle) PerRPCCredentials() credentials.PerRPCCredentials { return nil }

func (b *channelBundle) NewWithMode(string) (credentials.Bundle, error) {
	return nil, errors.New("certprovider: trellis_spiffe channel credentials have a single mode")
}
