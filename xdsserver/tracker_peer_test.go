package xdsserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// testCA issues certificates for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a leaf certificate for the given URI and IP SANs.
func (ca *testCA) issue(t *testing.T, uris []string, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
	}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestStreamPeerSPIFFEID checks that the stream status carries the SPIFFE
// ID of the client certificate of a TLS stream, and nothing for a client
// certificate without one.
func TestStreamPeerSPIFFEID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	ca := newTestCA(t)
	serverCreds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, nil, net.IPv4(127, 0, 0, 1))},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
	})
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	srv, err := xdsserver.New(xdsserver.Config{
		Cache:         c,
		Registerer:    prometheus.NewRegistry(),
		Logger:        testLogger(t),
		ServerOptions: []grpc.ServerOption{grpc.Creds(serverCreds)},
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx, lis) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	tests := []struct {
		name string
		uris []string
		want string
	}{
		{name: "SVID", uris: []string{"spiffe://trellis.test/ns/default/dc/dc1/svc/echo"}, want: "spiffe://trellis.test/ns/default/dc/dc1/svc/echo"},
		{name: "no URI SAN", want: ""},
		{name: "not a SPIFFE ID", uris: []string{"https://trellis.test/echo"}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientCreds := credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{ca.issue(t, tt.uris)},
				RootCAs:      ca.pool,
			})
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			streamCtx, cancelStream := context.WithCancel(ctx)
			defer cancelStream()
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(streamCtx)
			if err != nil {
				t.Fatal(err)
			}
			node := "node-" + tt.name
			if err := stream.Send(&discoveryv3.DiscoveryRequest{
				Node:          &corev3.Node{Id: node},
				TypeUrl:       resource.ListenerType,
				ResourceNames: []string{"svc"},
			}); err != nil {
				t.Fatal(err)
			}
			waitFor(ctx, t, func() string {
				for _, st := range srv.Streams() {
					if st.NodeID != node {
						continue
					}
					if st.PeerSPIFFEID != tt.want {
						t.Fatalf("stream of %s: PeerSPIFFEID = %q, want %q", node, st.PeerSPIFFEID, tt.want)
					}
					return ""
				}
				return fmt.Sprintf("no stream of %s yet: %+v", node, srv.Streams())
			})
		})
	}
}
