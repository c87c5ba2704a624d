package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"
)

// oldPlugin is the trellis_spiffe plugin's config parsing as it was before
// the roots option: a strict decode of the two fields it had. This test
// binary does not link identity/certprovider, so it stands in for it
// under the same name, as in a workload built before the option.
type oldPlugin struct{}

func (oldPlugin) Name() string { return ProviderPluginName }

func (oldPlugin) ParseConfig(c any) (*grpccertprovider.BuildableConfig, error) {
	raw, ok := c.(json.RawMessage)
	if !ok {
		return nil, fmt.Errorf("unsupported config type %T", c)
	}
	var cfg struct {
		WorkloadAPIAddr string `json:"workload_api_addr,omitempty"`
		SPIFFEID        string `json:"spiffe_id,omitempty"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("certprovider: %s config %s: %w (fields: workload_api_addr, spiffe_id)", ProviderPluginName, raw, err)
	}
	return grpccertprovider.NewBuildableConfig(ProviderPluginName, raw, func(grpccertprovider.BuildOptions) grpccertprovider.Provider { return nil }), nil
}

// TestOldPluginRefusesOwnTrustDomainRoots: a workload whose trellis_spiffe
// plugin predates the roots option cannot start from a bootstrap with the
// own-trust-domain instance: grpc-go refuses the whole bootstrap, so the
// workload never serves with roots of every trust domain where the
// control plane relies on its own only. The same bootstrap without that
// instance parses.
func TestOldPluginRefusesOwnTrustDomainRoots(t *testing.T) {
	grpccertprovider.Register(oldPlugin{})
	addr := "unix:///run/spire/agent.sock"
	all, err := ProviderFragment(ProviderConfig{WorkloadAPIAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	own, err := ProviderFragment(ProviderConfig{WorkloadAPIAddr: addr, Roots: RootsOwnTrustDomain})
	if err != nil {
		t.Fatal(err)
	}
	// An address nobody listens on.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := lis.Addr().String()
	lis.Close()
	boot := func(providers map[string]json.RawMessage) []byte {
		b, err := json.Marshal(map[string]any{
			"xds_servers":           []any{map[string]any{"server_uri": server, "channel_creds": []any{map[string]any{"type": "insecure"}}}},
			"node":                  map[string]any{"id": "echo-1", "metadata": map[string]string{"trellis.own_trust_domain_roots": "true"}},
			"certificate_providers": providers,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const refused = "config parsing for certificate provider plugin"
	err = dialErr(t, boot(map[string]json.RawMessage{"trellis": all}))
	t.Logf("without it: %v", err)
	if strings.Contains(err.Error(), refused) {
		t.Fatalf("the old plugin refuses a bootstrap without the option: %v", err)
	}
	err = dialErr(t, boot(map[string]json.RawMessage{"trellis": all, "trellis-own-td": own}))
	t.Logf("with the own-trust-domain instance: %v", err)
	for _, want := range []string{refused, ProviderPluginName, `unknown field "roots"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("call error %q does not contain %q", err, want)
		}
	}
}

// dialErr is the error of a call through an xDS channel with bootstrap
// boot: grpc-go parses the bootstrap when the channel leaves idle. No xDS
// server answers, so the call fails in any case; what matters is why.
func dialErr(t *testing.T, boot []byte) error {
	t.Helper()
	builder, err := xds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = conn.Invoke(ctx, "/trellis.test.Nothing/Call", &emptypb.Empty{}, &emptypb.Empty{})
	if err == nil {
		t.Fatal("a call succeeded with no xDS server")
	}
	return err
}
