package admin_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/xdsserver/admin"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTimeout = 30 * time.Second

// serve runs an admin server for cfg on 127.0.0.1 until the test ends and
// returns its base URL and address.
func serve(t *testing.T, cfg admin.Config) (string, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- admin.New(cfg).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("Serve did not return after its context was cancelled")
		}
	})
	return "http://" + lis.Addr().String(), lis.Addr().String()
}

// get fetches url with client and returns status, content type and body.
func get(t *testing.T, client *http.Client, url string) (int, string, string) {
	t.Helper()
	code, ctype, body, _ := getProto(t, client, url)
	return code, ctype, body
}

// getProto is get that also returns the HTTP major version used.
func getProto(t *testing.T, client *http.Client, url string) (int, string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(body), resp.ProtoMajor
}

func httpClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestReadyz(t *testing.T) {
	var ready atomic.Bool
	base, _ := serve(t, admin.Config{Ready: func() (bool, string) {
		if ready.Load() {
			return true, "catalog synced: true"
		}
		return false, "catalog synced: false"
	}})
	client := httpClient(t)

	tests := []struct {
		name     string
		ready    bool
		wantCode int
		wantBody string
	}{
		{name: "not ready", ready: false, wantCode: http.StatusServiceUnavailable, wantBody: "catalog synced: false\n"},
		{name: "ready", ready: true, wantCode: http.StatusOK, wantBody: "catalog synced: true\n"},
		{name: "not ready again", ready: false, wantCode: http.StatusServiceUnavailable, wantBody: "catalog synced: false\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready.Store(tt.ready)
			code, _, body := get(t, client, base+"/readyz")
			if code != tt.wantCode || body != tt.wantBody {
				t.Errorf("GET /readyz = %d %q, want %d %q", code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_test_events_total", Help: "Test events."})
	reg.MustRegister(counter)
	counter.Add(3)

	type stream struct {
		ID     int64  `json:"id"`
		NodeID string `json:"node_id"`
	}
	base, _ := serve(t, admin.Config{
		Gatherer:  reg,
		Streams:   func() any { return []stream{{ID: 1, NodeID: "n1"}} },
		Resources: func() any { return map[string]map[string]string{"type.googleapis.com/x": {"a": "v1"}} },
	})
	client := httpClient(t)

	tests := []struct {
		path     string
		wantCode int
		wantType string
		wantBody string // substring
	}{
		{path: "/healthz", wantCode: 200, wantType: "text/plain; charset=utf-8", wantBody: "ok\n"},
		{path: "/readyz", wantCode: 200, wantType: "text/plain; charset=utf-8", wantBody: "ready\n"},
		{path: "/metrics", wantCode: 200, wantType: "text/plain", wantBody: "trellis_test_events_total 3"},
		{path: "/debug/xds/streams", wantCode: 200, wantType: "application/json", wantBody: `"node_id": "n1"`},
		{path: "/debug/xds/resources", wantCode: 200, wantType: "application/json", wantBody: `"a": "v1"`},
		{path: "/", wantCode: 200, wantType: "text/plain; charset=utf-8", wantBody: "/debug/xds/resources\n"},
		{path: "/nope", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, ctype, body := get(t, client, base+tt.path)
			if code != tt.wantCode {
				t.Fatalf("GET %s = %d, want %d (%s)", tt.path, code, tt.wantCode, body)
			}
			if !strings.HasPrefix(ctype, tt.wantType) {
				t.Errorf("GET %s content type %q, want %q", tt.path, ctype, tt.wantType)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s body %q lacks %q", tt.path, body, tt.wantBody)
			}
		})
	}

	_, _, body := get(t, client, base+"/debug/xds/streams")
	var got []stream
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("streams JSON: %v", err)
	}
	if diff := cmp.Diff([]stream{{ID: 1, NodeID: "n1"}}, got); diff != "" {
		t.Errorf("streams (-want +got):\n%s", diff)
	}
}

func TestOptionalEndpointsAbsent(t *testing.T) {
	base, _ := serve(t, admin.Config{})
	client := httpClient(t)
	for _, path := range []string{"/metrics", "/debug/xds/streams", "/debug/xds/resources"} {
		if code, _, _ := get(t, client, base+path); code != http.StatusNotFound {
			t.Errorf("GET %s without its source = %d, want 404", path, code)
		}
	}
}

// TestGRPCOverH2C calls a gRPC health server mounted on the admin listener,
// and the HTTP endpoints over both HTTP/1.1 and h2c on the same port.
func TestGRPCOverH2C(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	gs := grpc.NewServer()
	t.Cleanup(gs.Stop)
	hs := health.NewServer()
	hs.SetServingStatus("trellis.test", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	base, addr := serve(t, admin.Config{GRPC: gs})

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Error(err)
		}
	})
	hc := healthpb.NewHealthClient(conn)
	tests := []struct {
		service string
		want    healthpb.HealthCheckResponse_ServingStatus
	}{
		{service: "", want: healthpb.HealthCheckResponse_SERVING},
		{service: "trellis.test", want: healthpb.HealthCheckResponse_NOT_SERVING},
	}
	for _, tt := range tests {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: tt.service})
		if err != nil {
			t.Fatalf("Check(%q) through the admin port: %v", tt.service, err)
		}
		if resp.GetStatus() != tt.want {
			t.Errorf("Check(%q) = %v, want %v", tt.service, resp.GetStatus(), tt.want)
		}
	}
	// Server streaming works too.
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "trellis.test"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch first = %v, %v", resp, err)
	}
	hs.SetServingStatus("trellis.test", healthpb.HealthCheckResponse_SERVING)
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch second = %v, %v", resp, err)
	}

	// Plain HTTP over h2c (prior knowledge) and HTTP/1.1 on the same port.
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	h2Transport := &http.Transport{Protocols: &h2c, TLSClientConfig: &tls.Config{}}
	t.Cleanup(h2Transport.CloseIdleConnections)
	clients := []struct {
		name      string
		client    *http.Client
		wantMajor int
	}{
		{name: "h2c", client: &http.Client{Transport: h2Transport}, wantMajor: 2},
		{name: "http/1.1", client: httpClient(t), wantMajor: 1},
	}
	for _, c := range clients {
		code, _, body, major := getProto(t, c.client, base+"/healthz")
		if code != http.StatusOK || body != "ok\n" || major != c.wantMajor {
			t.Errorf("%s GET /healthz = HTTP/%d %d %q, want HTTP/%d 200 \"ok\\n\"", c.name, major, code, body, c.wantMajor)
		}
	}
}

func TestServeReturnsListenerError(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	err = admin.New(admin.Config{}).Serve(ctx, lis)
	if err == nil || !strings.HasPrefix(err.Error(), "admin: ") {
		t.Fatalf("Serve on a closed listener = %v, want an admin error", err)
	}
}

// TestShutdownWithOpenGRPCStream checks that a long-lived gRPC stream on the
// admin port delays shutdown by ShutdownTimeout at most.
func TestShutdownWithOpenGRPCStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	gs := grpc.NewServer()
	defer gs.Stop()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	const shutdownTimeout = 500 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		done <- admin.New(admin.Config{GRPC: gs, ShutdownTimeout: shutdownTimeout}).Serve(serveCtx, lis)
	}()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("Watch: %v", err)
	}

	start := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return with a gRPC stream open")
	}
	if d := time.Since(start); d < shutdownTimeout/2 || d > 10*time.Second {
		t.Errorf("Serve returned after %v; want about the shutdown timeout %v", d, shutdownTimeout)
	}
	if _, err := watch.Recv(); err == nil {
		t.Error("the gRPC stream survived the shutdown")
	}
}

// TestDebugAuth shows who /debug/* answers: loopback callers always, other
// callers only with credentials DebugAuth accepts, while /healthz, /readyz
// and /metrics answer everyone. Remote callers are played by setting the
// request's remote address, since a test cannot dial from a non-loopback
// address on every machine.
func TestDebugAuth(t *testing.T) {
	auth := func(r *http.Request) error {
		switch r.Header.Get("Authorization") {
		case "":
			return fmt.Errorf("send a bearer token: %w", admin.ErrNoCredentials)
		case "Bearer good":
			return nil
		default:
			return errors.New("invalid bearer token")
		}
	}
	views := func() any { return map[string]string{"secret": "node list"} }
	cfg := admin.Config{Gatherer: prometheus.NewRegistry(), Streams: views, Resources: views, DebugAuth: auth}
	noAuth := cfg
	noAuth.DebugAuth = nil
	tests := []struct {
		name     string
		cfg      admin.Config
		remote   string
		path     string
		token    string
		wantCode int
		wantBody string
	}{
		{name: "loopback v4 without credentials", cfg: cfg, remote: "127.0.0.1:4000", path: "/debug/xds/streams", wantCode: http.StatusOK, wantBody: "node list"},
		{name: "loopback v6 without credentials", cfg: cfg, remote: "[::1]:4000", path: "/debug/xds/resources", wantCode: http.StatusOK, wantBody: "node list"},
		{name: "remote without credentials", cfg: cfg, remote: "192.0.2.7:4000", path: "/debug/xds/streams", wantCode: http.StatusUnauthorized, wantBody: "send a bearer token"},
		{name: "remote with a bad token", cfg: cfg, remote: "192.0.2.7:4000", path: "/debug/xds/resources", token: "Bearer bad", wantCode: http.StatusForbidden, wantBody: "invalid bearer token"},
		{name: "remote with a good token", cfg: cfg, remote: "192.0.2.7:4000", path: "/debug/xds/streams", token: "Bearer good", wantCode: http.StatusOK, wantBody: "node list"},
		{name: "remote and no DebugAuth", cfg: noAuth, remote: "192.0.2.7:4000", path: "/debug/xds/streams", token: "Bearer good", wantCode: http.StatusForbidden, wantBody: "loopback callers only"},
		{name: "remote healthz", cfg: cfg, remote: "192.0.2.7:4000", path: "/healthz", wantCode: http.StatusOK, wantBody: "ok"},
		{name: "remote readyz", cfg: cfg, remote: "192.0.2.7:4000", path: "/readyz", wantCode: http.StatusOK, wantBody: "ready"},
		{name: "remote metrics", cfg: cfg, remote: "192.0.2.7:4000", path: "/metrics", wantCode: http.StatusOK},
		{name: "loopback profiles", cfg: cfg, remote: "127.0.0.1:4000", path: "/debug/pprof/", wantCode: http.StatusOK, wantBody: "goroutine"},
		{name: "loopback heap profile", cfg: cfg, remote: "127.0.0.1:4000", path: "/debug/pprof/heap?debug=1", wantCode: http.StatusOK, wantBody: "heap profile"},
		{name: "remote profiles without credentials", cfg: cfg, remote: "192.0.2.7:4000", path: "/debug/pprof/goroutine", wantCode: http.StatusUnauthorized, wantBody: "send a bearer token"},
		{name: "remote profiles and no DebugAuth", cfg: noAuth, remote: "192.0.2.7:4000", path: "/debug/pprof/", token: "Bearer good", wantCode: http.StatusForbidden, wantBody: "loopback callers only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.path, nil)
			req.RemoteAddr = tt.remote
			if tt.token != "" {
				req.Header.Set("Authorization", tt.token)
			}
			rec := httptest.NewRecorder()
			admin.New(tt.cfg).ServeHTTP(rec, req)
			if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("GET %s from %s: %d %q, want %d containing %q", tt.path, tt.remote, rec.Code, rec.Body.String(), tt.wantCode, tt.wantBody)
			}
			if tt.wantCode != http.StatusOK && strings.Contains(rec.Body.String(), "node list") {
				t.Errorf("refused request shows the debug view: %q", rec.Body.String())
			}
		})
	}
}
