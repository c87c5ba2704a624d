package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

func TestServerTLSOptions(t *testing.T) {
	missing := "unix://" + filepath.Join(t.TempDir(), "missing.sock")
	tests := []struct {
		name    string
		opts    serverTLSOptions
		env     string
		wantErr string
	}{
		{name: "trust domain without xds TLS", opts: serverTLSOptions{trustDomains: []string{"t.test"}}, wantErr: "--xds-tls-trust-domain applies to --xds-tls only"},
		{name: "bad trust domain", opts: serverTLSOptions{xdsTLS: true, trustDomains: []string{"spiffe://t.test/x"}}, env: "unix:///a.sock", wantErr: `--xds-tls-trust-domain "spiffe://t.test/x"`},
		{name: "allowed IDs without listener", opts: serverTLSOptions{apiAllowedIDs: []string{"spiffe://t.test/admin"}}, wantErr: "--api-allowed-spiffe-id needs --api-tls-listen"},
		{name: "bad allowed ID", opts: serverTLSOptions{apiTLSListen: "127.0.0.1:0", apiAllowedIDs: []string{"admin"}}, env: "unix:///a.sock", wantErr: `--api-allowed-spiffe-id "admin"`},
		{name: "address without TLS", opts: serverTLSOptions{workloadAPIAddr: "unix:///a.sock"}, wantErr: "apply to --xds-tls and --api-tls-listen only"},
		{name: "no address", opts: serverTLSOptions{xdsTLS: true}, wantErr: "SPIFFE_ENDPOINT_SOCKET"},
		{name: "bad address", opts: serverTLSOptions{xdsTLS: true, workloadAPIAddr: "/run/agent.sock"}, wantErr: "--workload-api-addr"},
		{name: "bad own ID", opts: serverTLSOptions{xdsTLS: true, spiffeID: "cp"}, env: "unix:///a.sock", wantErr: `--spiffe-id "cp"`},
		{name: "no timeout", opts: serverTLSOptions{xdsTLS: true}, env: "unix:///a.sock", wantErr: "--workload-api-timeout 0s: must be positive"},
		{
			name:    "no agent",
			opts:    serverTLSOptions{xdsTLS: true, workloadAPIAddr: missing, svidTimeout: 2 * time.Second},
			wantErr: "no X.509 SVID for the control plane from the Workload API at " + missing + " within 2s (--workload-api-timeout)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			if tt.opts.svidTimeout == 0 && !strings.Contains(tt.wantErr, "workload-api-timeout") {
				tt.opts.svidTimeout = time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := newServerTLS(ctx, tt.opts, slog.New(slog.DiscardHandler))
			if err == nil {
				s.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("newServerTLS error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("disabled", func(t *testing.T) {
		s, err := newServerTLS(context.Background(), serverTLSOptions{svidTimeout: time.Second}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.xdsServerOptions() != nil || s.policyAuthenticators() != nil {
			t.Error("TLS options or authenticators without any TLS flag")
		}
		if err := s.serveAPI(context.Background(), nil); err != nil {
			t.Errorf("serveAPI without a listener: %v", err)
		}
		var b strings.Builder
		s.readyDetail(&b)
		if b.Len() != 0 {
			t.Errorf("ready detail without TLS: %q", b.String())
		}
	})
}

// TestServerTLSIdentity takes the control plane's SVID from a real SPIRE.
func TestServerTLSIdentity(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	cp := spiffeid.RequireFromPath(spire.TrustDomain(), "/trellis/control-plane")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: cp.String()})
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: spiffeid.RequireFromPath(spire.TrustDomain(), "/other").String()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := newServerTLS(ctx, serverTLSOptions{
		xdsTLS:          true,
		workloadAPIAddr: spire.WorkloadAPIAddr(),
		spiffeID:        cp.String(),
		apiTLSListen:    "127.0.0.1:0",
		apiAllowedIDs:   []string{"spiffe://trellis.test/admin"},
		svidTimeout:     30 * time.Second,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.self != cp {
		t.Errorf("control plane identity %s, want %s", s.self, cp)
	}
	if got := s.acceptedTrustDomains(); len(got) != 1 || got[0] != spire.TrustDomain().Name() {
		t.Errorf("accepted trust domains %v, want the control plane's own", got)
	}
	if len(s.xdsServerOptions()) != 1 || len(s.policyAuthenticators()) != 1 {
		t.Errorf("want one xDS server option and one policy authenticator")
	}
	var b strings.Builder
	s.readyDetail(&b)
	if !strings.Contains(b.String(), "control plane SVID: "+cp.String()) || !strings.Contains(b.String(), "(valid)") {
		t.Errorf("ready detail %q does not show the SVID", b.String())
	}
}

func TestSPIFFEAuthenticator(t *testing.T) {
	auth := spiffeAuthenticator([]spiffeid.ID{spiffeid.RequireFromString("spiffe://trellis.test/admin")})
	withPeer := func(info credentials.AuthInfo) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
	}
	tlsPeer := func(id string) credentials.AuthInfo {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		return credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}}
	}
	tests := []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{name: "allowed", ctx: withPeer(tlsPeer("spiffe://trellis.test/admin")), want: codes.OK},
		{name: "other ID", ctx: withPeer(tlsPeer("spiffe://trellis.test/echo")), want: codes.PermissionDenied},
		{name: "plaintext", ctx: withPeer(nil), want: codes.Unauthenticated},
		{name: "no peer", ctx: context.Background(), want: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(auth(tt.ctx)); got != tt.want {
				t.Errorf("code %s, want %s (%v)", got, tt.want, auth(tt.ctx))
			}
		})
	}
}
