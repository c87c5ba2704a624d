package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// These tests cover the conversions on hand-made certificates; the
// integration tests of identity/certprovider and identity/filesync run them
// on SVIDs from a real SPIRE.

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T, td spiffeid.TrustDomain) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

func (ca testCA) issue(t *testing.T, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		URIs:         []*url.URL{id.URL()},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(der, keyDER)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func TestX509Conversions(t *testing.T) {
	tdA := spiffeid.RequireTrustDomainFromString("a.test")
	tdB := spiffeid.RequireTrustDomainFromString("b.test")
	caA, caB := newTestCA(t, tdA), newTestCA(t, tdB)
	set := x509bundle.NewSet(
		x509bundle.FromX509Authorities(tdB, []*x509.Certificate{caB.cert}),
		x509bundle.FromX509Authorities(tdA, []*x509.Certificate{caA.cert}),
	)
	svidA := caA.issue(t, spiffeid.RequireFromPath(tdA, "/svc/a"))
	svidB := caB.issue(t, spiffeid.RequireFromPath(tdB, "/svc/b"))

	t.Run("SelectSVID", func(t *testing.T) {
		svids := []*x509svid.SVID{svidA, svidB}
		tests := []struct {
			name    string
			want    spiffeid.ID
			wantID  spiffeid.ID
			wantErr string
		}{
			{name: "default is first", wantID: svidA.ID},
			{name: "by ID", want: svidB.ID, wantID: svidB.ID},
			{name: "absent", want: spiffeid.RequireFromPath(tdA, "/svc/c"), wantErr: "offers [spiffe://a.test/svc/a, spiffe://b.test/svc/b]"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := SelectSVID(svids, tt.want)
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("SelectSVID(%s) error = %v, want %q", tt.want, err, tt.wantErr)
					}
					return
				}
				if err != nil || got.ID != tt.wantID {
					t.Fatalf("SelectSVID(%s) = %v, %v; want %s", tt.want, got, err, tt.wantID)
				}
			})
		}
		if _, err := SelectSVID(nil, spiffeid.ID{}); err == nil {
			t.Error("SelectSVID(nil) succeeded, want an error")
		}
	})

	t.Run("TLSCertificate", func(t *testing.T) {
		cert, err := TLSCertificate(svidA)
		if err != nil {
			t.Fatal(err)
		}
		if cert.Leaf != svidA.Certificates[0] || len(cert.Certificate) != 1 || cert.PrivateKey == nil {
			t.Errorf("TLSCertificate = %+v, want the leaf and its key", cert)
		}
	})

	t.Run("RootPool verifies both trust domains", func(t *testing.T) {
		pool := RootPool(set)
		for _, s := range []*x509svid.SVID{svidA, svidB} {
			if _, err := s.Certificates[0].Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				t.Errorf("verify %s: %v", s.ID, err)
			}
		}
	})

	t.Run("SPIFFEBundleMap", func(t *testing.T) {
		m := SPIFFEBundleMap(set)
		if len(m) != 2 || !m["a.test"].HasX509Authority(caA.cert) || !m["b.test"].HasX509Authority(caB.cert) {
			t.Errorf("SPIFFEBundleMap = %v, want a.test and b.test with their CAs", m)
		}
	})

	t.Run("MarshalRoots", func(t *testing.T) {
		rest := MarshalRoots(set)
		var got []*x509.Certificate
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, c)
		}
		if len(got) != 2 || !got[0].Equal(caA.cert) || !got[1].Equal(caB.cert) {
			t.Errorf("MarshalRoots gave %d certificates, want a.test's CA then b.test's", len(got))
		}
	})

	t.Run("MarshalBundleMap parses back", func(t *testing.T) {
		out, err := MarshalBundleMap(set)
		if err != nil {
			t.Fatal(err)
		}
		// The parsing gRPC applies to spiffe_trust_bundle_map_file.
		var doc struct {
			TrustDomains map[string]json.RawMessage `json:"trust_domains"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(doc.TrustDomains) != 2 {
			t.Fatalf("trust_domains has %d entries, want 2:\n%s", len(doc.TrustDomains), out)
		}
		for name, ca := range map[string]testCA{"a.test": caA, "b.test": caB} {
			b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(name), doc.TrustDomains[name])
			if err != nil {
				t.Fatalf("parse bundle of %s: %v", name, err)
			}
			if !b.HasX509Authority(ca.cert) || len(b.X509Authorities()) != 1 {
				t.Errorf("bundle of %s lacks its CA", name)
			}
		}
	})
}

func TestWorkloadAPIAddr(t *testing.T) {
	tests := []struct {
		name    string
		addr    string
		env     string
		want    string
		wantErr string
	}{
		{name: "explicit", addr: "unix:///tmp/agent.sock", env: "unix:///other.sock", want: "unix:///tmp/agent.sock"},
		{name: "from environment", env: "unix:///run/spire/agent.sock", want: "unix:///run/spire/agent.sock"},
		{name: "tcp", addr: "tcp://127.0.0.1:8081", want: "tcp://127.0.0.1:8081"},
		{name: "none", wantErr: "set SPIFFE_ENDPOINT_SOCKET"},
		{name: "bad scheme", addr: "http://127.0.0.1:8081", wantErr: `"http://127.0.0.1:8081"`},
		{name: "bad environment", env: "agent.sock", wantErr: `"agent.sock"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			got, err := WorkloadAPIAddr(tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WorkloadAPIAddr(%q) = %q, %v; want error containing %q", tt.addr, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("WorkloadAPIAddr(%q) = %q, %v; want %q", tt.addr, got, err, tt.want)
			}
		})
	}
}
