// Package spiffetls builds mutual TLS between SPIFFE workloads for gRPC:
// server and client transport credentials that present the local X.509 SVID,
// verify the peer's SVID against the trust bundle of the peer's own trust
// domain, and authorize the peer by its SPIFFE ID; and the SPIFFE ID of a
// gRPC peer, for authorization after the handshake.
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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	return func(p, _ spiffeid.ID) error {
		if slices.Contains(ids, p) {
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
		if slices.Contains(accepted, p.TrustDomain()) {
			return nil
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

// ServerConfig returns a TLS server configuration that, on every
// handshake, presents the Source's current SVID, requires a client
// certificate, verifies it as an X.509 SVID against the bundle of its trust
// domain, and lets authorize decide on its SPIFFE ID. It negotiates HTTP/2
// (ALPN "h2") and TLS 1.2 or later. Handshakes fail while the Source has no
// key material.
func ServerConfig(src Source, authorize Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			km, self, err := keyMaterial(hello.Context(), src)
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				NextProtos:   []string{"h2"},
				Certificates: km.Certs[:1],
				// The chain is verified by VerifyPeerCertificate, against
				// the bundle of the client's trust domain.
				ClientAuth:            tls.RequireAnyClientCert,
				VerifyPeerCertificate: verifyPeer(km, self, authorize),
				// A resumed session skips VerifyPeerCertificate: every
				// connection verifies and authorizes the client afresh.
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// ServerCredentials returns gRPC server transport credentials built on
// ServerConfig. The peer's credentials.TLSInfo carries its SPIFFE ID.
func ServerCredentials(src Source, authorize Authorizer) credentials.TransportCredentials {
	return credentials.NewTLS(ServerConfig(src, authorize))
}

// ClientCredentials returns gRPC client transport credentials that, on
// every handshake, present the Source's current SVID, verify the server's
// certificate as an X.509 SVID against the bundle of its trust domain, and
// let authorize decide on its SPIFFE ID. The server's host name is not
// checked: the SPIFFE ID is the server's identity.
func ClientCredentials(src Source, authorize Authorizer) credentials.TransportCredentials {
	return &clientCreds{src: src, authorize: authorize}
}

type clientCreds struct {
	src       Source
	authorize Authorizer
}

var _ credentials.TransportCredentials = (*clientCreds)(nil)

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	km, self, err := keyMaterial(ctx, c.src)
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: km.Certs[:1],
		// Host names are not checked; VerifyPeerCertificate verifies the
		// chain against the bundle of the server's trust domain and
		// authorizes its SPIFFE ID.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyPeer(km, self, c.authorize),
	}
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, raw)
}

func (c *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("spiffetls: client credentials cannot serve a handshake; use ServerCredentials")
}

func (c *clientCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (c *clientCreds) Clone() credentials.TransportCredentials {
	return &clientCreds{src: c.src, authorize: c.authorize}
}

// OverrideServerName is accepted and ignored: the server is identified by
// its SPIFFE ID, not its name.
func (c *clientCreds) OverrideServerName(string) error { return nil }

// keyMaterial reads the Source and checks that it holds an SVID.
func keyMaterial(ctx context.Context, src Source) (*certprovider.KeyMaterial, spiffeid.ID, error) {
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

// verifyPeer verifies the peer's chain as an X.509 SVID and authorizes its
// SPIFFE ID.
func verifyPeer(km *certprovider.KeyMaterial, self spiffeid.ID, authorize Authorizer) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		id, err := VerifyChain(raw, km)
		if err != nil {
			return err
		}
		if err := authorize(id, self); err != nil {
			return err
		}
		return nil
	}
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
		set := x509bundle.NewSet()
		for _, b := range km.SPIFFEBundleMap {
			set.Add(x509bundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()))
		}
		id, _, err := x509svid.Verify(certs, set)
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
