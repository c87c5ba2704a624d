package lrs

import (
	"context"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is an LRS server on a real gRPC server on loopback.
type harness struct {
	srv   *Server
	reg   *prometheus.Registry
	clock *fakeClock
	conn  *grpc.ClientConn
	stop  context.CancelFunc
}

func start(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), clock: &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	cfg.Registerer, cfg.Now = h.reg, h.clock.Now
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = gs.Serve(lis) }()
	go func() { defer wg.Done(); _ = srv.Run(ctx) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.conn = conn
	t.Cleanup(func() {
		conn.Close()
		cancel()
		gs.Stop()
		wg.Wait()
	})
	return h
}

// open opens a stream for a node of the given cluster and checks the
// server's answer.
func (h *harness) open(t *testing.T, cluster string) lrsv3.LoadReportingService_StreamLoadStatsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := lrsv3.NewLoadReportingServiceClient(h.conn).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&lrsv3.LoadStatsRequest{Node: &corev3.Node{Id: cluster + "-1", Cluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("first LoadStatsResponse: %v", err)
	}
	if !resp.GetSendAllClusters() || !resp.GetReportEndpointGranularity() || resp.GetLoadReportingInterval().AsDuration() != h.srv.Interval() {
		t.Fatalf("first LoadStatsResponse %v: want send_all_clusters, report_endpoint_granularity and interval %s", resp, h.srv.Interval())
	}
	return st
}

// send sends a report and waits until the server has recorded it.
func (h *harness) send(t *testing.T, st lrsv3.LoadReportingService_StreamLoadStatsClient, stats ...*endpointv3.ClusterStats) {
	t.Helper()
	before := testutil.ToFloat64(h.srv.m.reports)
	if err := st.Send(&lrsv3.LoadStatsRequest{ClusterStats: stats}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(h.srv.m.reports) == before {
		if time.Now().After(deadline) {
			t.Fatal("the server did not record the report")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func locality(region, zone string, succeeded, errored, inProgress uint64, endpoints ...*endpointv3.UpstreamEndpointStats) *endpointv3.UpstreamLocalityStats {
	return &endpointv3.UpstreamLocalityStats{
		Locality:                &corev3.Locality{Region: region, Zone: zone},
		TotalSuccessfulRequests: succeeded,
		TotalErrorRequests:      errored,
		TotalIssuedRequests:     succeeded + errored + inProgress,
		TotalRequestsInProgress: inProgress,
		UpstreamEndpointStats:   endpoints,
	}
}

func endpointStats(ip string, port uint32, succeeded, errored uint64) *endpointv3.UpstreamEndpointStats {
	return &endpointv3.UpstreamEndpointStats{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}},
		TotalSuccessfulRequests: succeeded,
		TotalErrorRequests:      errored,
		TotalIssuedRequests:     succeeded + errored,
	}
}

func requests(t *testing.T, h *harness, source, dest, loc, ep, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(h.srv.m.requests.WithLabelValues(source, dest, loc, ep, result))
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStreamAggregates runs real LRS streams over gRPC and checks what the
// reports add up to: per series, in the metrics and in the service graph.
func TestStreamAggregates(t *testing.T) {
	h := start(t, Config{Interval: time.Second, RateWindow: time.Minute})
	web := h.open(t, "web")
	h.send(t, web,
		&endpointv3.ClusterStats{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 10, 2, 3)}},
		// A subset cluster counts for its service.
		&endpointv3.ClusterStats{ClusterName: "echo/blue", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 5, 0, 0)}},
		// Calls reported per endpoint count per endpoint, the rest of
		// the locality's under endpoint "".
		&endpointv3.ClusterStats{ClusterName: "billing", TotalDroppedRequests: 1, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{
			locality("", "", 6, 1, 0, endpointStats("127.0.0.1", 9000, 4, 1)),
		}},
	)
	h.clock.Advance(time.Second)
	h.send(t, web, &endpointv3.ClusterStats{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 20, 0, 1)}})
	// A second client of another service, with no cluster in its node.
	anon := h.open(t, "")
	h.send(t, anon, &endpointv3.ClusterStats{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 7, 0, 2)}})

	want := []Series{
		{Source: "unknown", Destination: "echo", Locality: "dc1/a", Counts: Counts{Succeeded: 7, Issued: 9}, InProgress: 2},
		{Source: "web", Destination: "billing", Counts: Counts{Succeeded: 2, Dropped: 1, Issued: 2}},
		{Source: "web", Destination: "billing", Endpoint: "127.0.0.1:9000", Counts: Counts{Succeeded: 4, Errored: 1, Issued: 5}},
		{Source: "web", Destination: "echo", Locality: "dc1/a", Counts: Counts{Succeeded: 35, Errored: 2, Issued: 41}, InProgress: 1},
	}
	got := h.srv.Series()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}

	for _, c := range []struct {
		source, dest, loc, ep, result string
		want                          float64
	}{
		{"web", "echo", "dc1/a", "", "success", 35},
		{"web", "echo", "dc1/a", "", "error", 2},
		{"web", "billing", "", "127.0.0.1:9000", "success", 4},
		{"web", "billing", "", "127.0.0.1:9000", "error", 1},
		{"web", "billing", "", "", "success", 2},
		{"web", "billing", "", "", "dropped", 1},
		{"unknown", "echo", "dc1/a", "", "success", 7},
	} {
		if got := requests(t, h, c.source, c.dest, c.loc, c.ep, c.result); got != c.want {
			t.Errorf("trellis_lrs_requests_total{%s,%s,%q,%q,%s} = %v, want %v", c.source, c.dest, c.loc, c.ep, c.result, got, c.want)
		}
	}
	if got := testutil.ToFloat64(h.srv.m.inProgress.WithLabelValues("web", "echo", "dc1/a", "")); got != 1 {
		t.Errorf("in progress web->echo = %v, want 1 (the last report replaces the one before)", got)
	}
	if got := testutil.ToFloat64(h.srv.m.streams); got != 2 {
		t.Errorf("trellis_lrs_streams = %v, want 2", got)
	}

	// The graph: web -> echo finished 37 calls, 2 errors, in two reports
	// a second apart, each holding a second of calls.
	edges := h.srv.Edges()
	if len(edges) != 3 {
		t.Fatalf("edges %+v, want unknown->echo, web->billing, web->echo", edges)
	}
	e := edges[2]
	if e.Source != "web" || e.Destination != "echo" || e.Totals.Succeeded != 35 || e.InProgress != 1 {
		t.Errorf("edge %+v, want web->echo with 35 succeeded, 1 in progress", e)
	}
	if e.RatePerSecond != 18.5 || e.ErrorRatio != 2.0/37 {
		t.Errorf("web->echo rate %v/s error ratio %v, want 18.5/s and %v", e.RatePerSecond, e.ErrorRatio, 2.0/37)
	}
	if b := edges[1]; b.ErrorRatio != 2.0/8 {
		t.Errorf("web->billing error ratio %v, want 2/8 (errors and drops of 8 calls)", b.ErrorRatio)
	}
	// Two minutes later the window is empty: no rate, totals stay.
	h.clock.Advance(2 * time.Minute)
	if e := h.srv.Edges()[2]; e.RatePerSecond != 0 || e.Totals.Succeeded != 35 {
		t.Errorf("edge after the window %+v, want rate 0 and the totals", e)
	}

	// A stream that ends takes its calls in progress with it.
	if err := web.CloseSend(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(h.srv.m.streams) == 1 })
	if got := testutil.ToFloat64(h.srv.m.inProgress.WithLabelValues("web", "echo", "dc1/a", "")); got != 0 {
		t.Errorf("in progress web->echo after its stream ended = %v, want 0", got)
	}
	if got := testutil.ToFloat64(h.srv.m.inProgress.WithLabelValues("unknown", "echo", "dc1/a", "")); got != 2 {
		t.Errorf("in progress unknown->echo = %v, want 2 (its stream is open)", got)
	}
}

// TestInProgressFollowsLastReport: a series a later report does not name
// has nothing in progress any more.
func TestInProgressFollowsLastReport(t *testing.T) {
	h := start(t, Config{Interval: time.Second})
	st := h.open(t, "web")
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 0, 0, 4)}})
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "other", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 1, 0, 0)}})
	if got := testutil.ToFloat64(h.srv.m.inProgress.WithLabelValues("web", "echo", "dc1/a", "")); got != 0 {
		t.Errorf("in progress = %v, want 0", got)
	}
}

// TestMaxSeries: beyond the cap, new series are not kept and their calls
// are counted as unrecorded; known series still count.
func TestMaxSeries(t *testing.T) {
	h := start(t, Config{Interval: time.Second, MaxSeries: 2})
	st := h.open(t, "web")
	for _, name := range []string{"a", "b", "c", "d"} {
		h.send(t, st, &endpointv3.ClusterStats{ClusterName: name, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 3, 1, 0)}})
	}
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "a", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 1, 0, 0)}})
	if n := len(h.srv.Series()); n != 2 {
		t.Errorf("%d series, want 2 (the cap)", n)
	}
	if got := testutil.ToFloat64(h.srv.m.unrecorded); got != 8 {
		t.Errorf("unrecorded = %v, want 8 (4 calls of c and d each)", got)
	}
	if got := requests(t, h, "web", "a", "", "", "success"); got != 4 {
		t.Errorf("web->a successes = %v, want 4", got)
	}
	if n := testutil.CollectAndCount(h.srv.m.requests); n != 4 {
		t.Errorf("%d trellis_lrs_requests_total series, want 4 (success and error of a and b)", n)
	}
}

// TestIdleSeriesRemoved: a series without reports for IdleAfter goes, and
// its time series with it.
func TestIdleSeriesRemoved(t *testing.T) {
	h := start(t, Config{Interval: time.Second, IdleAfter: 10 * time.Second})
	st := h.open(t, "web")
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "old", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 1, 0, 0)}})
	h.clock.Advance(11 * time.Second)
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "new", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 1, 0, 0)}})
	h.srv.mu.Lock()
	h.srv.sweep(h.clock.Now())
	h.srv.mu.Unlock()
	got := h.srv.Series()
	if len(got) != 1 || got[0].Destination != "new" {
		t.Errorf("series after the sweep %+v, want only web->new", got)
	}
	if n := testutil.CollectAndCount(h.srv.m.requests); n != 1 {
		t.Errorf("%d trellis_lrs_requests_total series, want 1", n)
	}
	if edges := h.srv.Edges(); len(edges) != 1 || edges[0].Destination != "new" {
		t.Errorf("edges after the sweep %+v, want only web->new", edges)
	}
}

// TestUntrustedLabels: names too long for a label are cut, and names that
// are not valid UTF-8 (which gRPC's proto decoding refuses already) are
// mended rather than breaking the metrics.
func TestUntrustedLabels(t *testing.T) {
	h := start(t, Config{Interval: time.Second})
	long := strings.Repeat("x", 500)
	st := h.open(t, long)
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: long, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("r", "", 1, 0, 0)}})
	got := h.srv.Series()
	if len(got) != 1 || got[0].Source != long[:maxLabelBytes] || got[0].Destination != long[:maxLabelBytes] || got[0].Locality != "r/" {
		t.Errorf("series %+v, want source and destination cut to %d bytes, locality r/", got, maxLabelBytes)
	}
	if n := testutil.CollectAndCount(h.srv.m.requests); n != 1 {
		t.Errorf("%d trellis_lrs_requests_total series, want 1", n)
	}
	if got := label("web\xff"); got != "web?" {
		t.Errorf("label(invalid UTF-8) = %q, want web?", got)
	}
	if got := SourceOf(&corev3.Node{}); got != UnknownSource {
		t.Errorf("SourceOf(node without cluster) = %q, want %q", got, UnknownSource)
	}
}

// TestRunEndsStreams: once Run returns, open streams end.
func TestRunEndsStreams(t *testing.T) {
	h := start(t, Config{Interval: time.Second})
	st := h.open(t, "web")
	h.stop()
	_, err := st.Recv()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Recv after Run returned: %v, want Unavailable", err)
	}
}

// TestFirstRequestNeedsNode: a stream that does not say who it is gets
// InvalidArgument.
func TestFirstRequestNeedsNode(t *testing.T) {
	h := start(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := lrsv3.NewLoadReportingServiceClient(h.conn).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&lrsv3.LoadStatsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "node") {
		t.Fatalf("Recv: %v, want InvalidArgument about the node", err)
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{}},
		{name: "short interval", cfg: Config{Interval: 500 * time.Millisecond}, wantErr: "Config.Interval 500ms: accepted: 1s or more"},
		{name: "negative series", cfg: Config{MaxSeries: -1}, wantErr: "Config.MaxSeries -1"},
		{name: "short window", cfg: Config{Interval: 10 * time.Second, RateWindow: 15 * time.Second}, wantErr: "Config.RateWindow 15s: accepted: at least twice Config.Interval (20s)"},
		{name: "short idle", cfg: Config{Interval: 10 * time.Second, IdleAfter: 15 * time.Second}, wantErr: "Config.IdleAfter 15s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := New(c.cfg)
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.Interval() != DefaultInterval {
					t.Errorf("interval %s, want %s", s.Interval(), DefaultInterval)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("New: %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}

func TestDestinationOf(t *testing.T) {
	for in, want := range map[string]string{"echo": "echo", "echo/blue": "echo", "": "", "/x": ""} {
		if got := DestinationOf(in); got != want {
			t.Errorf("DestinationOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRateWindow: a steady 2 calls a second, reported every 5s, reads as
// 2/s within 5 % once the window is full, whenever it is read and
// whether the reports fall at the start of a rate bucket or not.
func TestRateWindow(t *testing.T) {
	for _, offset := range []time.Duration{0, 2500 * time.Millisecond, 4900 * time.Millisecond} {
		t.Run(offset.String(), func(t *testing.T) { testRateWindow(t, offset) })
	}
}

func testRateWindow(t *testing.T, offset time.Duration) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(offset)}
	s, err := New(Config{Interval: 5 * time.Second, RateWindow: time.Minute, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	str := &stream{source: "web", inProgress: map[seriesKey]uint64{}}
	report := []*endpointv3.ClusterStats{{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 9, 1, 0)}}}
	for i := range 40 {
		s.record(str, report)
		for _, after := range []time.Duration{0, time.Second, 2500 * time.Millisecond, 4900 * time.Millisecond} {
			if i < 13 {
				continue
			}
			clock.Advance(after)
			e := s.Edges()[0]
			if math.Abs(e.RatePerSecond-2) > 0.1 || e.ErrorRatio != 0.1 {
				t.Fatalf("report %d, %s after: rate %v/s, error ratio %v; want 2/s within 5 %% and 0.1", i, after, e.RatePerSecond, e.ErrorRatio)
			}
			clock.Advance(-after)
		}
		clock.Advance(5 * time.Second)
	}
	// Once the calls stop, the rate falls.
	clock.Advance(30 * time.Second)
	if e := s.Edges()[0]; e.RatePerSecond > 1.2 {
		t.Errorf("rate 35s after the last report %v/s, want it falling (about 1/s)", e.RatePerSecond)
	}
	// Early on, the rate covers the time since the edge appeared.
	s2, err := New(Config{Interval: 5 * time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	s2.record(str, report)
	if e := s2.Edges()[0]; e.RatePerSecond != 2 {
		t.Errorf("rate after the first report %v/s, want 2/s (10 calls in one 5s interval)", e.RatePerSecond)
	}
}

// TestSourceHook: Config.Source names the source of a stream from its
// context and node.
func TestSourceHook(t *testing.T) {
	var sawPeer bool
	h := start(t, Config{Interval: time.Second, Source: func(ctx context.Context, node *corev3.Node) string {
		_, sawPeer = peer.FromContext(ctx)
		return "verified-" + node.GetCluster()
	}})
	st := h.open(t, "web")
	h.send(t, st, &endpointv3.ClusterStats{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("", "", 1, 0, 0)}})
	if got := h.srv.Series(); len(got) != 1 || got[0].Source != "verified-web" {
		t.Errorf("series %+v, want source verified-web", got)
	}
	if !sawPeer {
		t.Error("Config.Source got a context without the stream's peer")
	}
}
