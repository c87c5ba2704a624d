package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

func TestCheckXDSListen(t *testing.T) {
	tests := []struct {
		name     string
		listen   string
		tls      bool
		insecure bool
		wantErr  string
		wantWarn bool
	}{
		{name: "loopback v4", listen: "127.0.0.1:18000"},
		{name: "other loopback v4", listen: "127.0.0.3:18000"},
		{name: "loopback v6", listen: "[::1]:18000"},
		{name: "localhost", listen: "localhost:18000"},
		{name: "every address", listen: ":18000", wantErr: "plaintext xDS listens on a loopback address only"},
		{name: "unspecified v4", listen: "0.0.0.0:18000", wantErr: "--xds-tls (mTLS with SPIFFE identities), or accept unauthenticated plaintext explicitly with --xds-insecure"},
		{name: "public address", listen: "192.0.2.1:18000", wantErr: `--xds-listen "192.0.2.1:18000"`},
		{name: "host name", listen: "trellis.example:18000", wantErr: "loopback address only"},
		{name: "insecure on every address", listen: ":18000", insecure: true, wantWarn: true},
		{name: "insecure on loopback", listen: "127.0.0.1:18000", insecure: true, wantWarn: true},
		{name: "mTLS on every address", listen: ":18000", tls: true},
		{name: "mTLS and insecure", listen: ":18000", tls: true, insecure: true, wantErr: "--xds-insecure and --xds-tls: choose one"},
		{name: "no port", listen: "127.0.0.1", wantErr: "want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			err := checkXDSListen(tt.listen, tt.tls, haOptions{xdsInsecure: tt.insecure}, slog.New(slog.NewTextHandler(&log, nil)))
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error %v, want none", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			warned := strings.Contains(log.String(), "level=WARN") && strings.Contains(log.String(), "--xds-insecure")
			if warned != tt.wantWarn {
				t.Errorf("warned %t, want %t; log:\n%s", warned, tt.wantWarn, log.String())
			}
		})
	}
}

// TestDebugAuth checks the admin listener's /debug/* authenticator with
// the policy API's real authenticators: its bearer token and the SPIFFE IDs
// allowed over mTLS.
func TestDebugAuth(t *testing.T) {
	t.Setenv(envAPIToken, "s3cret-token")
	allowed := spiffeid.RequireFromString("spiffe://trellis.test/admin")
	auth := debugAuth(policyOptions{authenticators: []policyapi.Authenticator{spiffeAuthenticator([]spiffeid.ID{allowed})}})
	svid := func(id string) *tls.ConnectionState {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}
	}
	tests := []struct {
		name       string
		header     string
		tls        *tls.ConnectionState
		wantErr    string
		wantNoCred bool
	}{
		{name: "token", header: "Bearer s3cret-token"},
		{name: "allowed SPIFFE ID", tls: svid("spiffe://trellis.test/admin")},
		{name: "nothing", wantErr: "authorization: Bearer <token>", wantNoCred: true},
		{name: "wrong token", header: "Bearer guess", wantErr: "invalid bearer token"},
		{name: "other SPIFFE ID", tls: svid("spiffe://trellis.test/echo"), wantErr: "not allowed to call the policy API"},
		{name: "other SPIFFE ID and token", tls: svid("spiffe://trellis.test/echo"), header: "Bearer s3cret-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/debug/xds/streams", nil)
			req.RemoteAddr = "192.0.2.7:4000"
			req.TLS = tt.tls
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			err := auth(req)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if got := errors.Is(err, admin.ErrNoCredentials); got != tt.wantNoCred {
				t.Errorf("ErrNoCredentials %t, want %t", got, tt.wantNoCred)
			}
		})
	}

	t.Run("no credentials configured", func(t *testing.T) {
		t.Setenv(envAPIToken, "")
		req := httptest.NewRequest(http.MethodGet, "/debug/xds/streams", nil)
		req.Header.Set("Authorization", "Bearer s3cret-token")
		if err := debugAuth(policyOptions{})(req); err == nil || !strings.Contains(err.Error(), "loopback callers only") {
			t.Fatalf("error %v, want loopback callers only", err)
		}
	})
}

// TestReplicaRegistration registers a replica in a real Consul agent:
// its address, port and readiness check, registration again after the
// agent lost it, and deregistration when the server stops.
func TestReplicaRegistration(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	ready := true
	readyz := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer readyz.Close()
	adminAddr := readyz.Listener.Addr()
	xdsAddr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 18000}

	if _, err := newReplicaRegistration(haOptions{service: "x", deregisterAfter: 30 * time.Second}, client, xdsAddr, adminAddr, false, slog.New(slog.DiscardHandler)); err == nil ||
		!strings.Contains(err.Error(), "--register-deregister-after 30s: at least 1m") {
		t.Errorf("short deregister-after: error %v", err)
	}
	if r, err := newReplicaRegistration(haOptions{}, client, xdsAddr, adminAddr, false, slog.New(slog.DiscardHandler)); r != nil || err != nil {
		t.Errorf("empty --register-service: %v, %v; want no registration", r, err)
	}

	r, err := newReplicaRegistration(haOptions{service: "trellis-xds", deregisterAfter: time.Minute}, client, xdsAddr, adminAddr, true, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.recheck = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.run(runCtx) }()

	healthy := func() ([]*consulapi.ServiceEntry, error) {
		entries, _, err := client.Health().Service("trellis-xds", "", true, (&consulapi.QueryOptions{}).WithContext(ctx))
		return entries, err
	}
	waitRegistration(t, 20*time.Second, "registered and passing", func() error {
		entries, err := healthy()
		if err != nil {
			return err
		}
		if len(entries) != 1 {
			return errors.New("no passing instance")
		}
		s := entries[0].Service
		if s.ID != "trellis-xds-127.0.0.2:18000" || s.Address != "127.0.0.2" || s.Port != 18000 || s.Meta["trellis-xds-tls"] != "true" {
			return errors.New("unexpected registration " + s.ID + " " + s.Address)
		}
		return nil
	})
	checks, err := client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	check := checks["trellis-xds-127.0.0.2:18000-ready"]
	if check == nil || check.Type != "http" || !strings.Contains(check.Output, "GET http://"+adminAddr.String()+"/readyz: 200") {
		t.Fatalf("readiness check %+v", check)
	}
	if got := r.reg.Check.DeregisterCriticalServiceAfter; got != "1m0s" {
		t.Errorf("DeregisterCriticalServiceAfter %q, want 1m0s", got)
	}

	ready = false
	waitRegistration(t, 20*time.Second, "not ready: out of healthy answers", func() error {
		entries, err := healthy()
		if err == nil && len(entries) != 0 {
			err = errors.New("still passing")
		}
		return err
	})
	ready = true

	if err := client.Agent().ServiceDeregister("trellis-xds-127.0.0.2:18000"); err != nil {
		t.Fatal(err)
	}
	waitRegistration(t, 20*time.Second, "registered again after the agent lost it", func() error {
		entries, err := healthy()
		if err == nil && len(entries) != 1 {
			err = errors.New("not registered")
		}
		return err
	})

	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	services, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := services["trellis-xds-127.0.0.2:18000"]; ok {
		t.Error("still registered after the server stopped")
	}
}

// waitRegistration polls check until it returns nil, failing the test after
// timeout.
func waitRegistration(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
