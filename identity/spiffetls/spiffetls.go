// Package spiffetls builds mutual TLS between SPIFFE workloads for gRPC on
// go-spiffe: server and client TLS configurations and transport
// credentials that present the local X.509 SVID, verify the peer's SVID
// against the trust bundle of the peer's own trust domain, and authorize
// the peer by its SPIFFE ID; and the SPIFFE ID of a gRPC peer, for
// authorization after the handshake.
//
// Certificates, peer verification and SVID parsing are go-spiffe's
// (spiffetls/tlsconfig, svid/x509svid, spiffegrpc/grpccredentials for peer
// IDs). What the package adds is what go-spiffe lacks: adapters from a
// grpc-go certificate provider (Source) to go-spiffe's x509svid.Source and
// x509bundle.Source; authorizers that see the local SVID's ID, so that
// "the peer's trust domain is mine" needs no configuration
// (AuthorizeTrustDomains with no argument); verification against plain
// Roots for key material without a SPIFFE bundle map (VerifyChain); and
// servers that refuse TLS session resumption, which would skip the
// verification and the authorization.
//
// Key material comes from a Source, the interface of grpc-go certificate
// providers (such as identity/certprovider, fed by the Workload API), and is
// read again on every handshake, so that rotated SVIDs and bundles take
// effect for every new connection without a restart.
//
// SPIFFE SVIDs name a workload in a URI SAN, not a DNS name: the credentials
// here never check the peer's host name, only its SPIFFE ID.
//
// The package must not import anything of Trellis outside identity.
package spiffetls

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/peer"
)

// Source supplies the local SVID (Certs[0]) and the trust bundles (the
// SPIFFEBundleMap, or else Roots). grpc-go certificate providers implement
// it. KeyMaterial may block until key material is available or ctx ends.
type Source interface {
	KeyMaterial(ctx context.Context) (*certprovider.KeyMaterial, error)
}

var _ Source = certprovider.Provider(nil)

// Authorizer decides whether a peer whose certificate chain verified may
// connect. peer is the peer's SPIFFE ID; self is the SPIFFE ID of the local
// SVID presented in the same handshake. It returns nil to accept the peer.
type Authorizer func(peer, self spiffeid.ID) error

// AuthorizeAny accepts every peer whose chain verified against a trusted
// bundle.
func AuthorizeAny() Authorizer {
	return func(spiffeid.ID, spiffeid.ID) error { return nil }
}

// AuthorizeIDs accepts the peers whose SPIFFE ID is one of ids.
func AuthorizeIDs(ids ...spiffeid.ID) Authorizer {
	ids = slices.Clone(ids)
	match := spiffeid.MatchOneOf(ids...)
	return func(p, _ spiffeid.ID) error {
		if match(p) == nil {
			return nil
		}
		return fmt.Errorf("spiffetls: peer %s is not one of the accepted SPIFFE IDs [%s]", p, joinIDs(ids))
	}
}

// AuthorizeTrustDomains accepts the peers of the trust domains tds. With no
// trust domain it accepts the peers of the local SVID's trust domain.
func AuthorizeTrustDomains(tds ...spiffeid.TrustDomain) Authorizer {
	tds = slices.Clone(tds)
	return func(p, self spiffeid.ID) error {
		accepted := tds
		if len(accepted) == 0 {
			accepted = []spiffeid.TrustDomain{self.TrustDomain()}
		}
		for _, td := range accepted {
			if spiffeid.MatchMemberOf(td)(p) == nil {
				return nil
			}
		}
		names := make([]string, len(accepted))
		for i, td := range accepted {
			names[i] = td.Name()
		}
		return fmt.Errorf("spiffetls: peer %s is not in an accepted trust domain [%s]", p, strings.Join(names, ", "))
	}
}

// AuthorizeEither accepts a peer that at least one of auths accepts. With
// no authorizer it accepts nobody.
func AuthorizeEither(auths ...Authorizer) Authorizer {
	auths = slices.Clone(auths)
	return func(p, self spiffeid.ID) error {
		var errs []error
		for _, a := range auths {
			err := a(p, self)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return fmt.Errorf("spiffetls: peer %s: no peer is accepted", p)
		}
		return errors.Join(errs...)
	}
}

func joinIDs(ids []spiffeid.ID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return strings.Join(s, ", ")
}

// keyMaterialTimeout bounds how long a handshake waits for the Source's
// key material: go-spiffe's sources take no context.
const keyMaterialTimeout = 10 * time.Second

// SVIDSource adapts a Source to go-spiffe's x509svid.Source: the SVID is
// the Source's current Certs[0], read again on every call. It fails when
// the Source has no key material within 10 s, or holds a certificate that
// is not an X.509 SVID.
func SVIDSource(src Source) x509svid.Source { return svidSource{src} }

// BundleSource adapts a Source to go-spiffe's x509bundle.Source: the
// bundle of a trust domain is the one its SPIFFEBundleMap holds, read again
// on every call.
func BundleSource(src Source) x509bundle.Source { return bundleSource{src} }

type svidSource struct{ src Source }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) {
	km, self, err := keyMaterial(s.src)
	if err != nil {
		return nil, err
	}
	cert := km.Certs[0]
	chain := make([]*x509.Certificate, len(cert.Certificate))
	for i, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("spiffetls: local SVID certificate %d: %w", i, err)
		}
		chain[i] = c
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("spiffetls: local SVID: the private key cannot sign")
	}
	return &x509svid.SVID{ID: self, Certificates: chain, PrivateKey: signer}, nil
}

type bundleSource struct{ src Source }

func (s bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	km, _, err := keyMaterial(s.src)
	if err != nil {
		return nil, err
	}
	b, ok := km.SPIFFEBundleMap[td.Name()]
	if !ok {
		return nil, fmt.Errorf("spiffetls: no trust bundle for trust domain %q", td.Name())
	}
	return x509bundle.FromX509Authorities(td, b.X509Authorities()), nil
}

// ServerConfig returns a TLS server configuration, built on go-spiffe's
// tlsconfig.MTLSServerConfig, that on every handshake presents the
// Source's current SVID, requires a client certificate, verifies it as an
// X.509 SVID against the bundle of its trust domain, and lets authorize
// decide on its SPIFFE ID. Beyond go-spiffe it accepts key material with
// Roots and no bundle map (see VerifyChain), refuses TLS session
// resumption (a resumed session would skip the verification and the
// authorization), and negotiates HTTP/2 (ALPN "h2"). Handshakes fail while
// the Source has no key material.
func ServerConfig(src Source, authorize Authorizer) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(SVIDSource(src), BundleSource(src), tlsconfig.AuthorizeAny())
	cfg.VerifyPeerCertificate = verifyPeer(src, authorize)
	cfg.NextProtos = []string{"h2"}
	cfg.SessionTicketsDisabled = true
	return cfg
}

// ServerCredentials returns gRPC server transport credentials built on
// ServerConfig. The peer's credentials.TLSInfo carries its SPIFFE ID.
func ServerCredentials(src Source, authorize Authorizer) credentials.TransportCredentials {
	return credentials.NewTLS(ServerConfig(src, authorize))
}

// ClientConfig returns a TLS client configuration, built on go-spiffe's
// tlsconfig.MTLSClientConfig, that on every handshake presents the
// Source's current SVID, verifies the server's certificate as an X.509
// SVID against the bundle of its trust domain (or Roots, see VerifyChain),
// and lets authorize decide on its SPIFFE ID. The server's host name is
// not checked: the SPIFFE ID is the server's identity.
func ClientConfig(src Source, authorize Authorizer) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(SVIDSource(src), BundleSource(src), tlsconfig.AuthorizeAny())
	cfg.VerifyPeerCertificate = verifyPeer(src, authorize)
	return cfg
}

// ClientCredentials returns gRPC client transport credentials built on
// ClientConfig.
func ClientCredentials(src Source, authorize Authorizer) credentials.TransportCredentials {
	return credentials.NewTLS(ClientConfig(src, authorize))
}

// keyMaterial reads the Source and checks that it holds an SVID and a
// trust bundle; it returns the SVID's SPIFFE ID.
func keyMaterial(src Source) (*certprovider.KeyMaterial, spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), keyMaterialTimeout)
	defer cancel()
	km, err := src.KeyMaterial(ctx)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("spiffetls: no local SVID: %w", err)
	}
	if len(km.Certs) == 0 || len(km.Certs[0].Certificate) == 0 {
		return nil, spiffeid.ID{}, errors.New("spiffetls: no local SVID: the key material holds no certificate")
	}
	leaf := km.Certs[0].Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(km.Certs[0].Certificate[0]); err != nil {
			return nil, spiffeid.ID{}, fmt.Errorf("spiffetls: local SVID: %w", err)
		}
	}
	self, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("spiffetls: local certificate is not an X.509 SVID: %w", err)
	}
	if km.SPIFFEBundleMap == nil && km.Roots == nil {
		return nil, spiffeid.ID{}, errors.New("spiffetls: no trust bundle in the key material")
	}
	return km, self, nil
}

// verifyPeer verifies the peer's chain as an X.509 SVID, with go-spiffe's
// tlsconfig.VerifyPeerCertificate against the Source's bundles (or
// VerifyChain against its Roots when it has no bundle map), and authorizes
// its SPIFFE ID against the local SVID's.
func verifyPeer(src Source, authorize Authorizer) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		km, self, err := keyMaterial(src)
		if err != nil {
			return err
		}
		if km.SPIFFEBundleMap == nil {
			id, err := VerifyChain(raw, km)
			if err != nil {
				return err
			}
			return authorize(id, self)
		}
		verify := tlsconfig.VerifyPeerCertificate(staticBundles(km), func(id spiffeid.ID, _ [][]*x509.Certificate) error {
			return authorize(id, self)
		})
		if err := verify(raw, chains); err != nil {
			return fmt.Errorf("spiffetls: peer SVID: %w", err)
		}
		return nil
	}
}

// staticBundles is the x509bundle.Source of one read of key material, so
// that a handshake verifies against the bundles it read once.
func staticBundles(km *certprovider.KeyMaterial) x509bundle.Source {
	set := x509bundle.NewSet()
	for _, b := range km.SPIFFEBundleMap {
		set.Add(x509bundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()))
	}
	return set
}

// VerifyChain parses a peer's certificate chain (leaf first), verifies it
// as an X.509 SVID and returns its SPIFFE ID. The chain is verified against
// the bundle of the leaf's trust domain in km.SPIFFEBundleMap or, when the
// key material has no bundle map, against km.Roots.
func VerifyChain(raw [][]byte, km *certprovider.KeyMaterial) (spiffeid.ID, error) {
	if len(raw) == 0 {
		return spiffeid.ID{}, errors.New("spiffetls: peer sent no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("spiffetls: peer certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	if km.SPIFFEBundleMap != nil {
		id, _, err := x509svid.Verify(certs, staticBundles(km))
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("spiffetls: peer SVID: %w", err)
		}
		return id, nil
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("spiffetls: peer certificate is not an X.509 SVID: %w", err)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: km.Roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return spiffeid.ID{}, fmt.Errorf("spiffetls: peer SVID %s: %w", id, err)
	}
	return id, nil
}

// PeerID returns the SPIFFE ID of the peer of a gRPC call or stream, from
// its TLS state. It is meaningful only on connections whose credentials
// verified the peer's chain, such as ServerCredentials or an HTTP/2 server
// using ServerConfig.
func PeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errors.New("spiffetls: no peer in the context")
	}
	// Connections made with go-spiffe's grpccredentials carry the ID in
	// their own auth info.
	if id, ok := grpccredentials.PeerIDFromPeer(p); ok {
		return id, nil
	}
	return PeerIDFromAuthInfo(p.AuthInfo)
}

// PeerIDFromAuthInfo returns the SPIFFE ID of a peer from its gRPC
// authentication info: the SPIFFE ID grpc-go's TLS credentials found, or
// else the URI SAN of the peer's leaf certificate.
func PeerIDFromAuthInfo(info credentials.AuthInfo) (spiffeid.ID, error) {
	var tlsInfo credentials.TLSInfo
	switch v := info.(type) {
	case credentials.TLSInfo:
		tlsInfo = v
	case *credentials.TLSInfo:
		if v == nil {
			return spiffeid.ID{}, errors.New("spiffetls: the peer did not connect over TLS")
		}
		tlsInfo = *v
	case nil:
		return spiffeid.ID{}, errors.New("spiffetls: the peer did not connect over TLS")
	default:
		return spiffeid.ID{}, fmt.Errorf("spiffetls: the peer connected with %s, not TLS", info.AuthType())
	}
	if tlsInfo.SPIFFEID != nil {
		id, err := spiffeid.FromURI(tlsInfo.SPIFFEID)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("spiffetls: peer SPIFFE ID: %w", err)
		}
		return id, nil
	}
	certs := tlsInfo.State.PeerCertificates
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("spiffetls: the peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("spiffetls: the peer's certificate is not an X.509 SVID: %w", err)
	}
	return id, nil
}
