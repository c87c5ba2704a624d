package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	csdsv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRunRegistersServesAndDeregisters runs the server against a real Consul
// agent: it must register with a gRPC check that Consul finds passing, answer
// with its instance ID, and leave the catalog and stop serving on shutdown.
func TestRunRegistersServesAndDeregisters(t *testing.T) {
	for _, tt := range []struct{ name, healthListen string }{
		{"health on the main port", ""},
		{"health on its own port", "127.0.0.1:0"},
	} {
		t.Run(tt.name, func(t *testing.T) { testRunRegistersServesAndDeregisters(t, tt.healthListen) })
	}
}

func testRunRegistersServesAndDeregisters(t *testing.T, healthListen string) {
	agent := consultest.Start(t, consultest.Options{})
	consul := agent.Client(t)

	cfg := config{
		Listen:          "127.0.0.1:0",
		InstanceID:      "echo-test-1",
		Service:         "echo-test",
		ConsulRegister:  true,
		ConsulAddr:      agent.HTTPAddr(),
		CheckInterval:   500 * time.Millisecond,
		Zone:            "zone-a",
		Meta:            map[string]string{"version": "v2"},
		HealthListen:    healthListen,
		ShutdownTimeout: 5 * time.Second,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- run(runCtx, cfg, slogForTest(t)) }()

	// The Consul check calls the health service: passing proves the
	// listener, the health service and the registered address.
	var svc *api.AgentService
	consultest.WaitFor(t, 30*time.Second, func() error {
		entries, _, err := consul.Health().Service(cfg.Service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		if len(entries) != 1 {
			return fmt.Errorf("%d passing instances of %s, want 1", len(entries), cfg.Service)
		}
		svc = entries[0].Service
		return nil
	})
	if svc.ID != cfg.InstanceID || svc.Address != "127.0.0.1" || svc.Port == 0 || svc.Meta["zone"] != "zone-a" || svc.Meta["version"] != "v2" {
		t.Fatalf("registered service = id %q address %q port %d meta %v, want id %q on 127.0.0.1 with zone-a",
			svc.ID, svc.Address, svc.Port, svc.Meta, cfg.InstanceID)
	}
	checks, _, err := consul.Health().Checks(cfg.Service, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 1 || checks[0].Type != "grpc" {
		t.Fatalf("checks = %v, want one grpc check", checks)
	}
	// With --health-listen the check calls a port of its own.
	mainPort := ":" + strconv.Itoa(svc.Port)
	if onMain := strings.HasSuffix(checks[0].Name, mainPort); onMain != (healthListen == "") {
		t.Fatalf("check %q: on the main port %t, want %t", checks[0].Name, onMain, healthListen == "")
	}

	addr := net.JoinHostPort(svc.Address, strconv.Itoa(svc.Port))
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := echov1.NewEchoClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hi"})
	if err != nil {
		t.Fatalf("Echo: %v", err)
	}
	want := &echov1.EchoResponse{Message: "hi", InstanceId: cfg.InstanceID, Service: cfg.Service}
	if resp.GetMessage() != want.Message || resp.GetInstanceId() != want.InstanceId ||
		resp.GetService() != want.Service || resp.GetPeerIdentity() != "" {
		t.Fatalf("Echo = %v, want %v", resp, want)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("run did not return after its context was cancelled")
	}
	services, err := consul.Agent().ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := services[cfg.InstanceID]; ok {
		t.Fatalf("%s still registered with the agent after shutdown", cfg.InstanceID)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after shutdown", addr)
	}
}

func TestRunFailsWhenConsulIsUnreachable(t *testing.T) {
	// A port nothing listens on: take one and close it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := lis.Addr().String()
	lis.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config{
		Listen: "127.0.0.1:0", InstanceID: "echo-x", Service: "echo", ConsulRegister: true,
		ConsulAddr: deadAddr, CheckInterval: time.Second, ShutdownTimeout: time.Second,
	}
	if err := run(ctx, cfg, slogForTest(t)); err == nil {
		t.Fatal("run succeeded with Consul unreachable, want an error")
	}
}

func TestAdvertiseAddress(t *testing.T) {
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
	any4 := &net.TCPAddr{IP: net.IPv4zero, Port: 5000}
	tests := []struct {
		name    string
		flag    string
		lis     *net.TCPAddr
		want    string
		wantErr bool
	}{
		{name: "listen address", lis: loopback, want: "127.0.0.1:5000"},
		{name: "ipv6 listen address", lis: &net.TCPAddr{IP: net.IPv6loopback, Port: 7}, want: "[::1]:7"},
		{name: "unspecified listen address", lis: any4, wantErr: true},
		{name: "flag", flag: "10.1.2.3:6000", lis: any4, want: "10.1.2.3:6000"},
		{name: "flag host name", flag: "echo.local:6000", lis: loopback, wantErr: true},
		{name: "flag without port", flag: "10.1.2.3", lis: loopback, wantErr: true},
		{name: "flag port zero", flag: "10.1.2.3:0", lis: loopback, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := advertiseAddress(tt.flag, tt.lis)
			if (err != nil) != tt.wantErr {
				t.Fatalf("advertiseAddress(%q, %v) error = %v, wantErr %v", tt.flag, tt.lis, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("advertiseAddress(%q, %v) = %q, want %q", tt.flag, tt.lis, got, tt.want)
			}
		})
	}
}

func TestPeerIdentity(t *testing.T) {
	spiffeID := &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/ns/default/sa/client"}
	otherURI := &url.URL{Scheme: "https", Host: "client.example.org"}
	tlsInfo := func(id *url.URL, uris ...*url.URL) credentials.AuthInfo {
		info := credentials.TLSInfo{State: tls.ConnectionState{}, SPIFFEID: id}
		if len(uris) > 0 {
			info.State.PeerCertificates = []*x509.Certificate{{URIs: uris}}
		}
		return info
	}
	tests := []struct {
		name string
		ctx  context.Context
		want string
	}{
		{name: "no peer", ctx: context.Background(), want: ""},
		{name: "plaintext", ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: plaintextInfo{}}), want: ""},
		{name: "tls without certificate", ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: tlsInfo(nil)}), want: ""},
		{name: "spiffe id", ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: tlsInfo(spiffeID, spiffeID)}), want: spiffeID.String()},
		{name: "uri san", ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: tlsInfo(nil, otherURI)}), want: otherURI.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := peerIdentity(tt.ctx); got != tt.want {
				t.Errorf("peerIdentity() = %q, want %q", got, tt.want)
			}
		})
	}
}

// plaintextInfo is the AuthInfo of a connection without TLS.
type plaintextInfo struct{ credentials.CommonAuthInfo }

func (plaintextInfo) AuthType() string { return "insecure" }

func slogForTest(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// TestRunServesAdmin checks that --admin-addr serves grpc/admin's CSDS
// while the server runs, and stops with it.
func TestRunServesAdmin(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := lis.Addr().String()
	lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	cfg := config{Listen: "127.0.0.1:0", InstanceID: "echo-admin", Service: "echo", ShutdownTimeout: time.Second, AdminAddr: admin}
	go func() { done <- run(runCtx, cfg, slogForTest(t)) }()
	conn, err := grpc.NewClient(admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	consultest.WaitFor(t, 10*time.Second, func() error {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		defer callCancel()
		_, err := csdsv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(callCtx, &csdsv3.ClientStatusRequest{})
		return err
	})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
