package consulwatch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestIndexProberMatchesConsul: against a real Consul, the pipelined
// indexes are the ones the api client reads one by one, for services
// written at different indexes, a service written again, and one that
// does not exist; over the connections it was given, counted as requests.
func TestIndexProberMatchesConsul(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	direct := consul.Client(t)
	const services = 300
	var names []string
	for i := range services {
		name := fmt.Sprintf("probe-%03d", i)
		names = append(names, name)
		if err := direct.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: name, Name: name, Port: 1000 + i}); err != nil {
			t.Fatal(err)
		}
	}
	// Written again: its index moves past the others'.
	if err := direct.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: names[7], Name: names[7], Port: 9999}); err != nil {
		t.Fatal(err)
	}
	names = append(names, "probe-none")

	cfg := api.DefaultConfig()
	cfg.Address = consul.HTTPAddr()
	reg := prometheus.NewRegistry()
	client, prober, err := NewClientAndProber(ClientConfig{API: cfg, MaxConns: 4, ProbeConns: 2, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if prober.Conns() != 2 {
		t.Errorf("Conns() = %d, want 2", prober.Conns())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	got := make([][]uint64, 4)
	for k := range got {
		// More calls than connections: the others wait.
		wg.Go(func() {
			idx, err := prober.ServiceIndexes(ctx, names, "trellis.none")
			if err != nil {
				t.Error(err)
			}
			got[k] = idx
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[uint64]bool{}
	for i, name := range names {
		_, meta, err := client.Health().Service(name, "trellis.none", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k := range got {
			if got[k][i] != meta.LastIndex {
				t.Errorf("call %d: %s: index %d, the api client reads %d", k, name, got[k][i], meta.LastIndex)
			}
		}
		seen[meta.LastIndex] = true
	}
	if len(seen) < services/2 {
		t.Errorf("only %d distinct indexes among %d services: the comparison shows little", len(seen), len(names))
	}
	if got[0][7] <= got[0][8] {
		t.Errorf("the service written again has index %d, not above its neighbour's %d", got[0][7], got[0][8])
	}
	if n := testutil.ToFloat64(requestsCounter(t, reg, "200")); n < float64(4*len(names)) {
		t.Errorf("trellis_consul_requests_total{code=200} = %v, want at least %d", n, 4*len(names))
	}
}

func requestsCounter(t *testing.T, reg *prometheus.Registry, code string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "trellis_consul_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == code {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
}

// TestIndexProberErrors: a refusal in the middle of a batch is an
// api.StatusError that Classify reads as what it is, the connection is
// dropped and the next batch works on a new one; a connection closed by
// the server and a cancelled context are errors too, and a new batch
// after each works. what went wrong.
func TestIndexProberErrors(t *testing.T) {
	var refuse atomic.Int32 // the n-th request (1-based) gets a 429
	var served atomic.Int32
	var stall atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		if stall.Load() {
			<-r.Context().Done()
			return
		}
		if n == refuse.Load() {
			http.Error(w, "Your IP is issuing too many concurrent connections, please rate limit your calls", http.StatusTooManyRequests)
			return
		}
		if r.URL.Query().Get("tag") != "t" || !strings.HasPrefix(r.URL.Path, "/v1/health/service/") || r.Header.Get("X-Consul-Token") != "secret" {
			http.Error(w, "bad request "+r.URL.String(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Consul-Index", strconv.Itoa(100+len(r.URL.Path)))
		w.Header().Set("X-Consul-KnownLeader", "true")
		fmt.Fprint(w, "[]")
	}))
	srv.Start()
	defer srv.Close()

	cfg := api.DefaultConfig()
	cfg.Address = srv.Listener.Addr().String()
	cfg.Token = "secret"
	reg := prometheus.NewRegistry()
	_, prober, err := NewClientAndProber(ClientConfig{API: cfg, MaxConns: 3, ProbeConns: 1, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	names := []string{"a", "bb", "ccc", "dddd", "a b/c"}
	idx, err := prober.ServiceIndexes(ctx, names, "t")
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		if want := uint64(100 + len("/v1/health/service/"+name)); idx[i] != want {
			t.Errorf("%q: index %d, want %d", name, idx[i], want)
		}
	}

	refuse.Store(served.Load() + 3)
	_, err = prober.ServiceIndexes(ctx, names, "t")
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests || Classify(err) != KindRateLimited {
		t.Fatalf("a 429 in the batch: error %v (kind %s), want an api.StatusError 429, rate limited", err, Classify(err))
	}
	if _, err := prober.ServiceIndexes(ctx, names, "t"); err != nil {
		t.Fatalf("the batch after a refusal: %v", err)
	}

	stall.Store(true)
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	start := time.Now()
	_, err = prober.ServiceIndexes(cctx, names, "t")
	cancel()
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a stalled Consul: error %v after %s, want an error soon after the deadline", err, time.Since(start))
	}
	stall.Store(false)
	if _, err := prober.ServiceIndexes(ctx, names, "t"); err != nil {
		t.Fatalf("the batch after a stall: %v", err)
	}
	if _, err := prober.ServiceIndexes(ctx, make([]string, MaxProbeBatch+1), "t"); err == nil {
		t.Error("a batch above MaxProbeBatch accepted")
	}
	if testutil.ToFloat64(requestsCounter(t, reg, "429")) != 1 {
		t.Error("the 429 is not counted")
	}
	if _, _, err := NewClientAndProber(ClientConfig{API: cfg, MaxConns: 3, ProbeConns: 3}); err == nil {
		t.Error("ProbeConns = MaxConns accepted")
	}
}

// TestIndexProberBoundsConnections: however many batches run at once, the
// prober holds at most its connections, and reuses them.
func TestIndexProberBoundsConnections(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		w.Header().Set("X-Consul-Index", "7")
		fmt.Fprint(w, "[]")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	cfg := api.DefaultConfig()
	cfg.Address = srv.Listener.Addr().String()
	_, prober, err := NewClientAndProber(ClientConfig{API: cfg, MaxConns: 5, ProbeConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 3 {
				if _, err := prober.ServiceIndexes(context.Background(), []string{"a", "b", "c", "d"}, "t"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if p, o := conns.peak.Load(), conns.opened.Load(); p > 2 || o > 2 {
		t.Errorf("peak connections %d, opened %d, want at most 2 of each", p, o)
	}
}

// TestReadIndex: the probe's response reader takes what Consul sends and
// refuses what it cannot read whole.
func TestReadIndex(t *testing.T) {
	for _, tc := range []struct {
		name, resp string
		want       uint64
		closes     bool
		err        string
	}{
		{"ok", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 42\r\nX-Consul-Knownleader: true\r\nContent-Length: 2\r\n\r\n[]", 42, false, ""},
		{"lower-case headers, connection close", "HTTP/1.1 200 OK\r\nx-consul-index: 7\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 7, true, ""},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nX-Consul-Index: 9\r\nContent-Length: 0\r\n\r\n", 9, true, ""},
		{"refused", "HTTP/1.1 403 Forbidden\r\nContent-Length: 17\r\n\r\nPermission denied", 0, false, "Unexpected response code: 403 (Permission denied)"},
		{"chunked", "HTTP/1.1 200 OK\r\nX-Consul-Index: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n", 0, false, `unexpected Transfer-Encoding "chunked"`},
		{"no length", "HTTP/1.1 200 OK\r\nX-Consul-Index: 7\r\n\r\n[]", 0, false, `Content-Length "": accepted: 0 to 1 MiB`},
		{"no index", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", 0, false, `X-Consul-Index ""`},
		{"starting", "HTTP/1.1 200 OK\r\nX-Consul-Index: 1\r\nX-Consul-Knownleader: false\r\nContent-Length: 2\r\n\r\n[]", 0, false, "no leader"},
		{"garbage", "SSH-2.0-OpenSSH\r\n", 0, false, "malformed status line"},
		{"cut short", "HTTP/1.1 200 OK\r\nX-Consul-Index: 7\r\nContent-Length: 20\r\n\r\n[]", 0, false, "EOF"},
	} {
		got, closes, err := readIndex(bufio.NewReader(strings.NewReader(tc.resp)))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err == "" && (got != tc.want || closes != tc.closes):
			t.Errorf("%s: index %d closes %v, want %d %v", tc.name, got, closes, tc.want, tc.closes)
		}
	}
}
