package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// step is one scripted answer of the fake query.
type step struct {
	index  uint64
	leader bool
	data   int
	err    error
}

// TestRunIndexHandling scripts a sequence of answers and checks which
// results are handed on, which WaitIndex each query carried, and that
// failures are reported with a backoff and a kind.
func TestRunIndexHandling(t *testing.T) {
	script := []step{
		{index: 1, leader: false},                           // restarting Consul: an error, not a result
		{index: 0, leader: true, data: 1},                   // 0 is treated as 1: changed
		{index: 1, leader: true, data: 1},                   // unchanged index
		{index: 5, leader: true, data: 2},                   // changed
		{err: api.StatusError{Code: 429, Body: "too many"}}, // rate limited: backoff
		{index: 5, leader: true, data: 2},                   // unchanged
		{index: 6, leader: true, data: 2},                   // index moved, equal data: not handed on
		{index: 3, leader: true, data: 3},                   // backwards: start over, not handed on
		{index: 3, leader: true, data: 3},                   // from 0: changed
		{index: 4, leader: true, data: 4},                   // changed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		waitIndexes []uint64
		changed     []int
		kinds       []Kind
		successes   int
		call        int
	)
	tr, err := NewTracker(TrackerConfig{Component: "test"})
	if err != nil {
		t.Fatal(err)
	}
	Run(ctx, tr, Query[int]{
		Name: "scripted",
		Fetch: func(opts *api.QueryOptions) (int, *api.QueryMeta, error) {
			waitIndexes = append(waitIndexes, opts.WaitIndex)
			if _, ok := opts.Context().Deadline(); !ok {
				t.Error("query context has no deadline")
			}
			s := script[call]
			call++
			if call == len(script) {
				cancel()
			}
			if s.err != nil {
				return 0, nil, s.err
			}
			return s.data, &api.QueryMeta{LastIndex: s.index, KnownLeader: s.leader}, nil
		},
		Equal:   func(a, b int) bool { return a == b },
		Changed: func(v int, _ *api.QueryMeta) bool { changed = append(changed, v); return true },
		Failed: func(err *Error, retryIn time.Duration) {
			kinds = append(kinds, err.Kind)
			if retryIn <= 0 || retryIn > 20*time.Millisecond {
				t.Errorf("retry in %s, want within (0, MaxBackoff]", retryIn)
			}
		},
		Succeeded:   func(*api.QueryMeta) { successes++ },
		MinInterval: time.Millisecond,
		MaxBackoff:  20 * time.Millisecond,
	})
	if diff := cmp.Diff([]int{1, 2, 3, 4}, changed); diff != "" {
		t.Errorf("results handed on (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{0, 0, 1, 1, 5, 5, 5, 6, 0, 3}, waitIndexes); diff != "" {
		t.Errorf("WaitIndex of each query (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Kind{KindNotReady, KindRateLimited}, kinds); diff != "" {
		t.Errorf("failure kinds (-want +got):\n%s", diff)
	}
	if successes != len(script)-2 {
		t.Errorf("successes %d, want %d", successes, len(script)-2)
	}
}

func TestNextBackoff(t *testing.T) {
	max := 2 * time.Second
	var b time.Duration
	for i := 0; i < 10; i++ {
		prev := b
		b = nextBackoff(b, 0, max)
		if b <= 0 || b > max {
			t.Fatalf("backoff %s after %s, want within (0, %s]", b, prev, max)
		}
	}
	if b < max*3/4 {
		t.Errorf("backoff settled at %s, want near the cap %s", b, max)
	}
	if b := nextBackoff(0, time.Second, max); b < 750*time.Millisecond || b > time.Second {
		t.Errorf("first backoff %s, want FirstBackoff (1s) less up to 25%%", b)
	}
	if b := nextBackoff(0, 0, max); b > firstBackoff {
		t.Errorf("first backoff %s by default, want at most %s", b, firstBackoff)
	}
}

// TestSecondaryWatchLeavesReachability: a secondary watch's failures are
// counted, but Consul stays reachable while the probe answers, and it
// waits FirstBackoff before trying again.
func TestSecondaryWatchLeavesReachability(t *testing.T) {
	errs := prometheus.NewCounter(prometheus.CounterOpts{Name: "e"})
	tr, ctx, cancel := runTracker(t, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `"127.0.0.1:8300"`)
	}, TrackerConfig{Errors: errs})
	var wg sync.WaitGroup
	defer wg.Wait()
	waitFor(t, func() bool { return tr.Status().Reachable })

	const first = 300 * time.Millisecond
	calls := make(chan time.Time, 4)
	wg.Go(func() {
		Run(ctx, tr, Query[int]{
			Name: "service x",
			Fetch: func(*api.QueryOptions) (int, *api.QueryMeta, error) {
				calls <- time.Now()
				return 0, nil, api.StatusError{Code: 403, Body: "Permission denied"}
			},
			Changed:      func(int, *api.QueryMeta) bool { return false },
			FirstBackoff: first,
			MaxBackoff:   time.Hour,
			Secondary:    true,
		})
	})
	t0 := <-calls
	var t1 time.Time
	select {
	case t1 = <-calls:
	case <-ctx.Done():
		t.Fatal("no second try")
	}
	cancel()
	if gap := t1.Sub(t0); gap < first*3/4 {
		t.Errorf("second try after %s, want FirstBackoff (%s) less up to 25%%", gap, first)
	}
	if st := tr.Status(); !st.Reachable {
		t.Errorf("a secondary watch's failure made Consul unreachable: %+v", st)
	}
	if got := testutil.ToFloat64(errs); got < 1 {
		t.Errorf("errors counted %v, want the secondary watch's", got)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want Kind
	}{
		{"429", api.StatusError{Code: 429, Body: "Your IP is issuing too many concurrent connections, please rate limit your calls"}, KindRateLimited},
		{"acl not found", api.StatusError{Code: 403, Body: "ACL not found"}, KindACLNotFound},
		{"permission", api.StatusError{Code: 403, Body: "Permission denied: token lacks permission 'key:write'"}, KindPermissionDenied},
		{"wrapped plain 403", fmt.Errorf("read: %w", errors.New("Unexpected response code: 403 (ACL not found)")), KindACLNotFound},
		{"500 no leader", api.StatusError{Code: 500, Body: "No cluster leader"}, KindNotReady},
		{"503", api.StatusError{Code: 503, Body: "unavailable"}, KindServer},
		{"400", api.StatusError{Code: 400, Body: "bad filter"}, KindOther},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}, KindUnreachable},
		{"deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), KindUnreachable},
		{"not ready", errNotReady, KindNotReady},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.err); got != tc.want {
				t.Errorf("Classify(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

func TestErrorMessageHasNoFormattingGarbage(t *testing.T) {
	for _, e := range []*Error{
		{Watch: "w", Kind: KindRateLimited},
		newError("w", api.StatusError{Code: 429, Body: "x"}),
	} {
		if msg := e.Error(); msg == "" || containsAny(msg, "%!", "<nil>") {
			t.Errorf("Error() = %q", msg)
		}
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
	}
	return false
}

// runTracker runs a Tracker of cfg (Client and Component filled in)
// against a fake Consul answering with handler, until the test ends or
// the returned cancel is called.
func runTracker(t *testing.T, handler http.HandlerFunc, cfg TrackerConfig) (*Tracker, context.Context, context.CancelFunc) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String(), HttpClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Client, cfg.Component, cfg.ProbeInterval = client, "test", 20*time.Millisecond
	tr, err := NewTracker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { tr.Run(ctx) })
	return tr, ctx, cancel
}

// TestTrackerWakesWatchesWhenConsulReturns: a watch backing off after a
// failure is retried as soon as the probe sees Consul again, without
// waiting for its backoff.
func TestTrackerWakesWatchesWhenConsulReturns(t *testing.T) {
	var leaderOK atomic.Bool
	reachable := prometheus.NewGauge(prometheus.GaugeOpts{Name: "r"})
	tr, ctx, cancel := runTracker(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status/leader" && leaderOK.Load() {
			fmt.Fprint(w, `"127.0.0.1:8300"`)
			return
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
	}, TrackerConfig{Reachable: reachable})
	var wg sync.WaitGroup
	defer wg.Wait()

	var calls atomic.Int32
	got := make(chan struct{})
	wg.Go(func() {
		Run(ctx, tr, Query[int]{
			Name: "w",
			Fetch: func(opts *api.QueryOptions) (int, *api.QueryMeta, error) {
				if calls.Add(1) == 1 {
					return 0, nil, api.StatusError{Code: 503, Body: "down"}
				}
				return 1, &api.QueryMeta{LastIndex: 2, KnownLeader: true}, nil
			},
			Changed:    func(int, *api.QueryMeta) bool { close(got); return false },
			MaxBackoff: time.Hour, // only a wake-up can end the backoff in time
		})
	})
	waitFor(t, func() bool { return calls.Load() == 1 && !tr.Status().Reachable && tr.Status().LastErrorKind != "" })
	if v := testutil.ToFloat64(reachable); v != 0 {
		t.Errorf("reachable gauge %v while failing, want 0", v)
	}
	leaderOK.Store(true)
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("the watch was not woken when the probe saw Consul again")
	}
	waitFor(t, func() bool { return tr.Status().Reachable })
	cancel()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connCounts counts a test server's connections: open now, the most open
// at once, and opened in all.
type connCounts struct{ open, peak, opened atomic.Int32 }

// countConns counts the connections of srv, which must not be started.
func countConns(srv *httptest.Server) *connCounts {
	c := &connCounts{}
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			c.opened.Add(1)
			if n := c.open.Add(1); n > c.peak.Load() {
				c.peak.Store(n)
			}
		case http.StateClosed, http.StateHijacked:
			c.open.Add(-1)
		}
	}
	return c
}

// TestNewClientBoundsConnections: however many requests run at once, the
// client never holds more than MaxConns connections, and it counts them.
func TestNewClientBoundsConnections(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Header().Set("X-Consul-Index", "1")
		fmt.Fprint(w, `{}`)
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	cfg := api.DefaultConfig()
	cfg.Address = srv.Listener.Addr().String()
	reg := prometheus.NewRegistry()
	client, err := NewClient(ClientConfig{API: cfg, MaxConns: 3, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if _, _, err := client.Catalog().Services(nil); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, func() bool { return conns.open.Load() == 3 })
	time.Sleep(50 * time.Millisecond) // would let a 4th connection appear
	close(release)
	wg.Wait()
	if p := conns.peak.Load(); p > 3 {
		t.Errorf("peak connections %d, want at most 3", p)
	}
	if n := testutil.CollectAndCount(reg, "trellis_consul_requests_total"); n != 1 {
		t.Errorf("trellis_consul_requests_total series = %d, want 1 (code 200)", n)
	}
	if _, err := NewClient(ClientConfig{API: cfg, MaxConns: -1}); err == nil {
		t.Error("MaxConns -1 accepted")
	}
}

func TestLatest(t *testing.T) {
	l := NewLatest[int]()
	if _, ok := l.Load(); ok {
		t.Fatal("Load of an empty Latest reports a value")
	}
	l.Publish(1)
	l.Publish(2)
	if v := <-l.C(); v != 2 {
		t.Errorf("received %d, want only the newest value 2", v)
	}
	select {
	case v := <-l.C():
		t.Errorf("received %d again", v)
	default:
	}
	if v, ok := l.Load(); !ok || v != 2 {
		t.Errorf("Load = %d %t, want 2 true", v, ok)
	}
}
