package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

func TestLoadReportingOptions(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name     string
		opts     loadReportingOptions
		wantErr  string
		disabled bool
	}{
		{name: "default", opts: loadReportingOptions{enabled: true, interval: 5 * time.Second, maxSeries: 10}},
		{name: "off", opts: loadReportingOptions{enabled: false, interval: 0}, disabled: true},
		{name: "short interval", opts: loadReportingOptions{enabled: true, interval: 100 * time.Millisecond, maxSeries: 10}, wantErr: "--load-reporting-interval 100ms: accepted: 1s or more"},
		{name: "no series", opts: loadReportingOptions{enabled: true, interval: time.Second}, wantErr: "--load-reporting-max-series 0: accepted: 1 or more"},
		// A long interval stretches the rate window and idle time.
		{name: "long interval", opts: loadReportingOptions{enabled: true, interval: 10 * time.Minute, maxSeries: 10}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := newLoadReporting(c.opts, false, prometheus.NewRegistry(), logger)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.disabled() != c.disabled || (len(l.services()) == 0) != c.disabled || (l.graph() == nil) != c.disabled {
				t.Errorf("disabled %t, services %d, graph %t; want disabled %t", l.disabled(), len(l.services()), l.graph() != nil, c.disabled)
			}
		})
	}
}

// TestLoadReportingSource: with --xds-tls, a stream's source is the service
// of its peer's SPIFFE ID in the mesh's trust domain, else the node's
// cluster.
func TestLoadReportingSource(t *testing.T) {
	l, err := newLoadReporting(loadReportingOptions{enabled: true, interval: time.Second, maxSeries: 10}, true, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	withPeer := func(id string) context.Context {
		ctx := context.Background()
		if id == "" {
			return ctx
		}
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}}})
	}
	node := &corev3.Node{Id: "n1", Cluster: "declared"}
	if got := l.source(withPeer("spiffe://mesh.test/ns/default/dc/dc1/svc/web"), node); got != "declared" {
		t.Errorf("before the security settings: %q, want the node's cluster", got)
	}
	l.identifyBy(translate.Security{TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.test")})
	for _, c := range []struct{ name, peer, want string }{
		{"service of the SVID", "spiffe://mesh.test/ns/default/dc/dc1/svc/web", "web"},
		{"other trust domain", "spiffe://other.test/ns/default/dc/dc1/svc/web", "declared"},
		{"not under the scheme", "spiffe://mesh.test/something/else", "declared"},
		{"no TLS peer", "", "declared"},
	} {
		if got := l.source(withPeer(c.peer), node); got != c.want {
			t.Errorf("%s: source %q, want %q", c.name, got, c.want)
		}
	}
}
