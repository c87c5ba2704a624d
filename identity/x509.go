package identity

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadAPIAddr returns the SPIFFE Workload API address to use: addr when
// set, otherwise the SPIFFE_ENDPOINT_SOCKET environment variable. The
// address is a URI: "unix:///abs/path.sock" or "tcp://127.0.0.1:port".
func WorkloadAPIAddr(addr string) (string, error) {
	if addr == "" {
		addr = os.Getenv(workloadapi.SocketEnv)
		if addr == "" {
			return "", fmt.Errorf("identity: no Workload API address: set it (e.g. unix:///run/spire/agent.sock) or set %s", workloadapi.SocketEnv)
		}
	}
	err := workloadapi.ValidateAddress(addr)
	if u, perr := url.Parse(addr); err == nil && perr == nil && u.Scheme == "unix" && (u.Host != "" || !path.IsAbs(u.Path)) {
		err = errors.New("unix socket path must be absolute, with three slashes after unix:")
	}
	if err != nil {
		return "", fmt.Errorf("identity: Workload API address %q: %w (want unix:///abs/path or tcp://ip:port)", addr, err)
	}
	return addr, nil
}

// SelectSVID returns the SVID whose SPIFFE ID is want, or the first SVID (the
// Workload API's default identity) when want is zero.
func SelectSVID(svids []*x509svid.SVID, want spiffeid.ID) (*x509svid.SVID, error) {
	if len(svids) == 0 {
		return nil, errors.New("identity: the Workload API returned no X.509 SVID")
	}
	if want.IsZero() {
		return svids[0], nil
	}
	ids := make([]string, 0, len(svids))
	for _, s := range svids {
		if s.ID == want {
			return s, nil
		}
		ids = append(ids, s.ID.String())
	}
	return nil, fmt.Errorf("identity: no X.509 SVID for %s; the Workload API offers [%s]", want, strings.Join(ids, ", "))
}

// TLSCertificate returns svid as a tls.Certificate: the leaf and its
// intermediates, the private key, and the parsed leaf.
func TLSCertificate(svid *x509svid.SVID) (tls.Certificate, error) {
	if svid == nil || len(svid.Certificates) == 0 {
		return tls.Certificate{}, errors.New("identity: empty X.509 SVID")
	}
	if svid.PrivateKey == nil {
		return tls.Certificate{}, fmt.Errorf("identity: X.509 SVID %s has no private key", svid.ID)
	}
	cert := tls.Certificate{
		PrivateKey: svid.PrivateKey,
		Leaf:       svid.Certificates[0],
	}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// RootPool returns the X.509 authorities of every trust domain in set.
func RootPool(set *x509bundle.Set) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, b := range set.Bundles() {
		for _, c := range b.X509Authorities() {
			pool.AddCert(c)
		}
	}
	return pool
}

// SPIFFEBundleMap returns set keyed by trust domain name, the form gRPC's
// certificate providers use to pick the roots for a peer's trust domain.
func SPIFFEBundleMap(set *x509bundle.Set) map[string]*spiffebundle.Bundle {
	m := make(map[string]*spiffebundle.Bundle, set.Len())
	for _, b := range set.Bundles() {
		m[b.TrustDomain().Name()] = spiffebundle.FromX509Bundle(b)
	}
	return m
}

// MarshalSVID encodes svid as PEM: the certificate chain (leaf first) and
// the PKCS#8 private key.
func MarshalSVID(svid *x509svid.SVID) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = svid.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("identity: encode X.509 SVID %s: %w", svid.ID, err)
	}
	return certPEM, keyPEM, nil
}

// MarshalRoots encodes the X.509 authorities of every trust domain in set as
// PEM, ordered by trust domain.
func MarshalRoots(set *x509bundle.Set) []byte {
	var out []byte
	for _, b := range set.Bundles() {
		for _, c := range b.X509Authorities() {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	return out
}

// MarshalBundleMap encodes set as a SPIFFE trust bundle map, the format of
// gRFC A87 and of the file_watcher plugin's spiffe_trust_bundle_map_file:
//
//	{"trust_domains": {"example.org": <SPIFFE bundle (JWKS)>, ...}}
func MarshalBundleMap(set *x509bundle.Set) ([]byte, error) {
	doc := struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}{TrustDomains: map[string]json.RawMessage{}}
	for _, b := range set.Bundles() {
		jwks, err := spiffebundle.FromX509Bundle(b).Marshal()
		if err != nil {
			return nil, fmt.Errorf("identity: encode bundle of %s: %w", b.TrustDomain(), err)
		}
		doc.TrustDomains[b.TrustDomain().Name()] = jwks
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("identity: encode SPIFFE bundle map: %w", err)
	}
	return append(out, '\n'), nil
}
