package certprovider

import (
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"

	"github.com/trellis-mesh/trellis/identity/internal/testca"
)

// verifies reports whether leaf verifies against roots as a client
// certificate, as grpc-go's xDS server credentials verify one.
func verifies(leaf *x509.Certificate, roots *x509.CertPool) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func TestKeyMaterialRoots(t *testing.T) {
	own, federated := testca.New(t, "trellis.test"), testca.New(t, "other.test")
	svid := own.SVID(t, "/ns/default/dc/dc1/svc/echo")
	local, foreign := own.SVID(t, "/ns/default/dc/dc1/svc/web"), federated.SVID(t, "/ns/default/dc/dc1/svc/web")
	bundles := x509bundle.NewSet(own.X509Bundle(), federated.X509Bundle())

	tests := []struct {
		name        string
		bundles     *x509bundle.Set
		ownTD       bool
		wantDomains []string
		wantForeign bool // whether a peer of other.test verifies against Roots
		wantLocal   bool
	}{
		{name: "all", bundles: bundles, wantDomains: []string{"other.test", "trellis.test"}, wantForeign: true, wantLocal: true},
		{name: "own trust domain", bundles: bundles, ownTD: true, wantDomains: []string{"trellis.test"}, wantLocal: true},
		{name: "own trust domain without its bundle", bundles: x509bundle.NewSet(federated.X509Bundle()), ownTD: true, wantDomains: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			km, err := keyMaterial(svid, tt.bundles, tt.ownTD)
			if err != nil {
				t.Fatal(err)
			}
			if len(km.Certs) != 1 || km.Certs[0].Leaf != svid.Certificates[0] {
				t.Errorf("identity certificate is not the SVID")
			}
			if km.SPIFFEBundleMap == nil {
				t.Fatal("SPIFFEBundleMap is nil: grpc-go would verify peers against Roots without looking at their trust domain")
			}
			var got []string
			for td := range km.SPIFFEBundleMap {
				got = append(got, td)
			}
			if len(got) != len(tt.wantDomains) {
				t.Fatalf("SPIFFEBundleMap trust domains %v, want %v", got, tt.wantDomains)
			}
			for _, td := range tt.wantDomains {
				if _, ok := km.SPIFFEBundleMap[td]; !ok {
					t.Errorf("SPIFFEBundleMap lacks %s (has %v)", td, got)
				}
			}
			if v := verifies(foreign.Certificates[0], km.Roots); v != tt.wantForeign {
				t.Errorf("a peer of other.test verifies against Roots: %v, want %v", v, tt.wantForeign)
			}
			if v := verifies(local.Certificates[0], km.Roots); v != tt.wantLocal {
				t.Errorf("a peer of trellis.test verifies against Roots: %v, want %v", v, tt.wantLocal)
			}
		})
	}
}

func TestParseConfigRoots(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
	tests := []struct {
		config    string
		wantOwnTD bool
		wantErr   string
	}{
		{config: `{}`},
		{config: `{"roots": "all"}`},
		{config: `{"roots": "own_trust_domain"}`, wantOwnTD: true},
		{config: `{"roots": "own"}`, wantErr: `roots "own": accepted: "all" (default), "own_trust_domain"`},
		{config: `{"roots": ""}`},
		{config: `{"roots": true}`, wantErr: "fields: workload_api_addr, spiffe_id, roots"},
	}
	for _, tt := range tests {
		t.Run(tt.config, func(t *testing.T) {
			cfg, err := parseConfig([]byte(tt.config))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseConfig(%s) = %+v, %v; want error containing %q", tt.config, cfg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OwnTrustDomainRoots != tt.wantOwnTD {
				t.Errorf("OwnTrustDomainRoots = %v, want %v", cfg.OwnTrustDomainRoots, tt.wantOwnTD)
			}
		})
	}
}

// TestCanonicalConfigRoots: providers are shared by canonical config, so
// "all" spelt out shares with the default, and own_trust_domain never
// shares with either (it must not be handed every bundle).
func TestCanonicalConfigRoots(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
	canonical := func(config string) string {
		t.Helper()
		bc, err := grpccertprovider.ParseConfig(PluginName, json.RawMessage(config))
		if err != nil {
			t.Fatal(err)
		}
		return bc.String()
	}
	def, all, own := canonical(`{}`), canonical(`{"roots": "all"}`), canonical(`{"roots": "own_trust_domain"}`)
	if def != all {
		t.Errorf("default and \"all\" differ: %s, %s", def, all)
	}
	if own == def {
		t.Errorf("own_trust_domain shares the default's config %s", def)
	}
}
