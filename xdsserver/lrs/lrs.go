// Package lrs serves the Load Reporting Service
// (envoy.service.load_stats.v3.LoadReportingService) to gRPC xDS clients
// and turns what they report into Prometheus metrics and a service graph:
// the traffic telemetry a sidecar would otherwise see.
//
// # Mechanism
//
// Every EDS Cluster Trellis serves names the control plane itself as its
// load reporting server (lrs_server with a self ConfigSource, see
// translate.Options.DisableLoadReporting), so a client that uses a cluster
// opens a StreamLoadStats stream on the connection of its ADS stream. Its
// first LoadStatsRequest carries its node; the server answers once with
// send_all_clusters (grpc-go, grpc-js-xds and C-core advertise
// envoy.lrs.supports_send_all_clusters, so the server needs no list of the
// client's clusters), report_endpoint_granularity, and the
// load_reporting_interval (Config.Interval). From then on the client sends,
// every interval, the calls it finished since its previous report (succeeded,
// errored, issued, dropped) and the calls in progress now, per cluster and
// locality, and per endpoint when it can (grpc-go 1.85 reports per locality
// only).
//
// Each report is attributed to a series: the source service (by default
// the node's cluster, which Trellis bootstraps set to the workload's
// service, see `trellis bootstrap --cluster`; "unknown" when empty;
// Config.Source may name it from the peer's verified identity), the destination
// service (the cluster name, a subset cluster "svc/subset" counting for svc),
// the locality ("region/zone", "" when the client reports none) and the
// endpoint ("host:port", "" for calls reported per locality only). Finished
// calls are added to counters; calls in progress are a gauge, the sum over
// open streams of what each reported last, so that a stream that ends takes
// its calls in progress with it. Per (source, destination) edge the server
// also keeps the calls of the last RateWindow in buckets, from which the
// dashboard's service graph reads call rates and error ratios.
//
// # Bounds
//
// Report contents are not trusted: label values are cut to 128 bytes and
// made valid UTF-8, and at most Config.MaxSeries series exist at once.
// Calls reported for a new series beyond the cap are counted in
// trellis_lrs_unrecorded_requests_total instead, so that
// trellis_lrs_requests_total has at most 3 x MaxSeries time series (one per
// result), trellis_lrs_requests_in_progress at most MaxSeries, and memory
// stays proportional to MaxSeries. A series nobody reported for during Config.IdleAfter is
// removed (its counters restart from zero if it comes back, which
// Prometheus' rate() handles as a counter reset).
//
// With several replicas each client reports to the replica that serves its
// ADS stream; the series of all replicas add up.
//
// This package must not import Consul's API, the catalog, the model, the
// translator or the xDS cache: it reads only what clients send.
package lrs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
)

// Defaults of Config.
const (
	// DefaultInterval is how often clients report. Five seconds keeps the
	// service graph and the metrics live (a Prometheus scrape every 15s
	// sees three reports; the dashboard's rates follow a change within
	// two reports) at 2,000 small reports a second for 10,000 clients,
	// which the server's two cores absorb; Envoy's usual 10s would halve
	// that at the cost of a graph that lags.
	DefaultInterval = 5 * time.Second
	// DefaultMaxSeries bounds the series kept at once.
	DefaultMaxSeries = 10_000
	// DefaultRateWindow is the window of the edges' call rates.
	DefaultRateWindow = time.Minute
	// DefaultIdleAfter is how long a series without reports is kept.
	DefaultIdleAfter = 10 * time.Minute

	// MinInterval is the shortest Interval accepted: C-core raises any
	// shorter interval to 1s, and shorter ones only cost.
	MinInterval = time.Second
	// maxLabelBytes bounds a label value taken from a report.
	maxLabelBytes = 128
	// rateBuckets is the number of buckets of an edge's rate window.
	rateBuckets = 12
	// UnknownSource is the source of a node without cluster.
	UnknownSource = "unknown"
)

// Config configures a Server.
type Config struct {
	// Interval is the load_reporting_interval sent to clients.
	// Default: DefaultInterval (5s); at least MinInterval.
	Interval time.Duration
	// MaxSeries bounds the (source, destination, locality, endpoint)
	// series kept at once. Default: DefaultMaxSeries (10,000).
	MaxSeries int
	// RateWindow is the window of the edges' call rates (Edges).
	// Default: DefaultRateWindow (1m); at least 2 x Interval.
	RateWindow time.Duration
	// IdleAfter removes series with no report for this long.
	// Default: DefaultIdleAfter (10m).
	IdleAfter time.Duration
	// Registerer receives the trellis_lrs_* metrics. Default: a private
	// registry, so they are not exported.
	Registerer prometheus.Registerer
	// Source names the source service of a stream from its context (e.g.
	// the peer's verified SPIFFE ID) and the node of its first request.
	// Default: SourceOf(node).
	Source func(ctx context.Context, node *corev3.Node) string
	// Logger receives a line per stream opened and closed. Default:
	// discarded.
	Logger *slog.Logger
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// Server is the LRS server. It is safe for concurrent use.
type Server struct {
	lrsv3.UnimplementedLoadReportingServiceServer

	interval  time.Duration
	maxSeries int
	window    time.Duration
	idleAfter time.Duration
	logger    *slog.Logger
	now       func() time.Time
	source    func(context.Context, *corev3.Node) string
	m         *metrics

	// done is closed when Run returns: every stream ends.
	done     chan struct{}
	doneOnce sync.Once

	mu     sync.Mutex
	series map[seriesKey]*series
	edges  map[edgeKey]*edge
}

var _ lrsv3.LoadReportingServiceServer = (*Server)(nil)

// New validates cfg and registers the metrics.
func New(cfg Config) (*Server, error) {
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Interval < MinInterval {
		return nil, fmt.Errorf("lrs: Config.Interval %s: accepted: %s or more", cfg.Interval, MinInterval)
	}
	if cfg.MaxSeries == 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.MaxSeries < 1 {
		return nil, fmt.Errorf("lrs: Config.MaxSeries %d: accepted: 1 or more", cfg.MaxSeries)
	}
	if cfg.RateWindow == 0 {
		cfg.RateWindow = DefaultRateWindow
	}
	if cfg.RateWindow < 2*cfg.Interval {
		return nil, fmt.Errorf("lrs: Config.RateWindow %s: accepted: at least twice Config.Interval (%s)", cfg.RateWindow, 2*cfg.Interval)
	}
	if cfg.IdleAfter == 0 {
		cfg.IdleAfter = DefaultIdleAfter
	}
	if cfg.IdleAfter < 2*cfg.Interval {
		return nil, fmt.Errorf("lrs: Config.IdleAfter %s: accepted: at least twice Config.Interval (%s)", cfg.IdleAfter, 2*cfg.Interval)
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	source := cfg.Source
	if source == nil {
		source = func(_ context.Context, node *corev3.Node) string { return SourceOf(node) }
	}
	s := &Server{
		interval: cfg.Interval, maxSeries: cfg.MaxSeries, window: cfg.RateWindow, idleAfter: cfg.IdleAfter,
		logger: logger, now: now, source: source,
		series: map[seriesKey]*series{}, edges: map[edgeKey]*edge{},
		done: make(chan struct{}),
	}
	m, err := newMetrics(reg, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.series))
	})
	if err != nil {
		return nil, fmt.Errorf("lrs: register metrics: %w", err)
	}
	s.m = m
	return s, nil
}

// Register adds the LoadReportingService to a gRPC server, e.g. the xDS
// server's (xdsserver.Config.Services).
func (s *Server) Register(r grpc.ServiceRegistrar) {
	lrsv3.RegisterLoadReportingServiceServer(r, s)
}

// Interval is the load_reporting_interval sent to clients.
func (s *Server) Interval() time.Duration { return s.interval }

// Run removes idle series every interval until ctx is done, then ends
// every open stream (LRS streams never end by themselves, so a graceful
// stop of the gRPC server would otherwise wait for its whole grace
// period). Streams opened after Run returned end at once. It returns nil.
func (s *Server) Run(ctx context.Context) error {
	defer s.doneOnce.Do(func() { close(s.done) })
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.mu.Lock()
			s.sweep(s.now())
			s.mu.Unlock()
		}
	}
}

// StreamLoadStats serves one client's stream: it answers the first request,
// then records every report until the stream ends.
func (s *Server) StreamLoadStats(st lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	first, err := st.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	node := first.GetNode()
	if node == nil {
		return status.Error(codes.InvalidArgument, "lrs: the first LoadStatsRequest of a stream must carry the node")
	}
	if err := st.Send(&lrsv3.LoadStatsResponse{
		SendAllClusters:           true,
		LoadReportingInterval:     durationpb.New(s.interval),
		ReportEndpointGranularity: true,
	}); err != nil {
		return err
	}
	src := label(s.source(st.Context(), node))
	if src == "" {
		src = UnknownSource
	}
	str := &stream{source: src, inProgress: map[seriesKey]uint64{}}
	s.m.streams.Inc()
	s.logger.Debug("LRS stream opened", "node", node.GetId(), "source", str.source)
	defer func() {
		s.closeStream(str)
		s.m.streams.Dec()
		s.logger.Debug("LRS stream closed", "node", node.GetId(), "source", str.source)
	}()
	if len(first.GetClusterStats()) > 0 {
		s.record(str, first.GetClusterStats())
	}
	// Recv runs in a goroutine of the stream's so that the stream can end
	// when Run returns; it ends with the stream, whose context is
	// cancelled when this handler returns.
	type received struct {
		req *lrsv3.LoadStatsRequest
		err error
	}
	ctx := st.Context()
	reqs := make(chan received)
	go func() {
		for {
			req, err := st.Recv()
			select {
			case reqs <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		select {
		case <-s.done:
			return status.Error(codes.Unavailable, "lrs: server stopping")
		case <-ctx.Done():
			return nil
		case r := <-reqs:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) || status.Code(r.err) == codes.Canceled {
					return nil
				}
				return r.err
			}
			if len(r.req.GetClusterStats()) > 0 {
				s.record(str, r.req.GetClusterStats())
			}
		}
	}
}

// SourceOf is the source service of a node: its cluster, which Trellis
// bootstraps set to the workload's service, or UnknownSource.
func SourceOf(node *corev3.Node) string {
	if c := label(node.GetCluster()); c != "" {
		return c
	}
	return UnknownSource
}

// DestinationOf is the service of a cluster name: the name itself, or,
// for a subset cluster ("svc/subset"), the part before the slash.
func DestinationOf(cluster string) string {
	if i := strings.IndexByte(cluster, '/'); i >= 0 {
		cluster = cluster[:i]
	}
	return label(cluster)
}

// label makes a report's string fit for a label value: valid UTF-8, at
// most maxLabelBytes.
func label(s string) string {
	if len(s) > maxLabelBytes {
		s = s[:maxLabelBytes]
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	return s
}

func localityName(l *corev3.Locality) string {
	if l == nil || (l.GetRegion() == "" && l.GetZone() == "" && l.GetSubZone() == "") {
		return ""
	}
	name := l.GetRegion() + "/" + l.GetZone()
	if l.GetSubZone() != "" {
		name += "/" + l.GetSubZone()
	}
	return label(name)
}

func endpointName(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	if sa == nil {
		if p := a.GetPipe(); p != nil {
			return label(p.GetPath())
		}
		return "?"
	}
	return label(net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)))
}

// Counts are calls.
type Counts struct {
	Succeeded uint64 `json:"succeeded"`
	Errored   uint64 `json:"errored"`
	// Dropped are calls the client dropped without sending them (circuit
	// breaking, drop overloads); they are reported per cluster only.
	Dropped uint64 `json:"dropped,omitempty"`
	Issued  uint64 `json:"issued"`
}

func (c *Counts) add(o Counts) {
	c.Succeeded += o.Succeeded
	c.Errored += o.Errored
	c.Dropped += o.Dropped
	c.Issued += o.Issued
}

// seriesKey identifies a series.
type seriesKey struct{ source, destination, locality, endpoint string }

type edgeKey struct{ source, destination string }

type series struct {
	totals     Counts
	inProgress uint64
	lastReport time.Time
}

// edge aggregates a (source, destination) pair for the service graph.
type edge struct {
	totals     Counts
	inProgress uint64
	last       time.Time
	// buckets hold the calls finished per slot of window/rateBuckets,
	// slot i covering [start(i), start(i)+width).
	buckets [rateBuckets]bucket
}

type bucket struct {
	slot int64
	// first is when the slot's first report arrived.
	first time.Time
	c     Counts
}

// stream is what one open LRS stream contributes to the calls in progress.
type stream struct {
	source     string
	inProgress map[seriesKey]uint64
}

// report is one series' part of a report.
type report struct {
	c          Counts
	inProgress uint64
}

// record adds the cluster stats of one report.
func (s *Server) record(str *stream, stats []*endpointv3.ClusterStats) {
	parts := map[seriesKey]report{}
	for _, cs := range stats {
		dest := DestinationOf(cs.GetClusterName())
		if dest == "" {
			dest = DestinationOf(cs.GetClusterServiceName())
		}
		if dest == "" {
			continue
		}
		for _, ls := range cs.GetUpstreamLocalityStats() {
			loc := localityName(ls.GetLocality())
			// Calls reported per endpoint are counted per endpoint; the
			// rest of the locality's (if any) under endpoint "".
			rest := report{
				c: Counts{
					Succeeded: ls.GetTotalSuccessfulRequests(),
					Errored:   ls.GetTotalErrorRequests(),
					Issued:    ls.GetTotalIssuedRequests(),
				},
				inProgress: ls.GetTotalRequestsInProgress(),
			}
			for _, es := range ls.GetUpstreamEndpointStats() {
				k := seriesKey{str.source, dest, loc, endpointName(es.GetAddress())}
				p := parts[k]
				p.c.add(Counts{Succeeded: es.GetTotalSuccessfulRequests(), Errored: es.GetTotalErrorRequests(), Issued: es.GetTotalIssuedRequests()})
				p.inProgress += es.GetTotalRequestsInProgress()
				parts[k] = p
				rest.c.Succeeded = sub(rest.c.Succeeded, es.GetTotalSuccessfulRequests())
				rest.c.Errored = sub(rest.c.Errored, es.GetTotalErrorRequests())
				rest.c.Issued = sub(rest.c.Issued, es.GetTotalIssuedRequests())
				rest.inProgress = sub(rest.inProgress, es.GetTotalRequestsInProgress())
			}
			if rest != (report{}) {
				k := seriesKey{str.source, dest, loc, ""}
				p := parts[k]
				p.c.add(rest.c)
				p.inProgress += rest.inProgress
				parts[k] = p
			}
		}
		if d := cs.GetTotalDroppedRequests(); d > 0 {
			k := seriesKey{str.source, dest, "", ""}
			p := parts[k]
			p.c.Dropped += d
			parts[k] = p
		}
	}

	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.reports.Inc()
	// Calls in progress: this report replaces what the stream said
	// before; a series it no longer mentions has none.
	for k, was := range str.inProgress {
		if _, ok := parts[k]; !ok {
			s.setInProgress(k, was, 0)
			delete(str.inProgress, k)
		}
	}
	for k, p := range parts {
		se, ok := s.series[k]
		if !ok {
			if len(s.series) >= s.maxSeries {
				s.m.unrecorded.Add(float64(p.c.Succeeded + p.c.Errored + p.c.Dropped))
				continue
			}
			se = &series{}
			s.series[k] = se
		}
		se.lastReport = now
		se.totals.add(p.c)
		s.m.add(k, p.c)
		s.setInProgress(k, str.inProgress[k], p.inProgress)
		if p.inProgress > 0 {
			str.inProgress[k] = p.inProgress
		} else {
			delete(str.inProgress, k)
		}
		s.edgeAdd(edgeKey{k.source, k.destination}, p.c, now)
	}
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// setInProgress replaces a stream's contribution was to the calls in
// progress of series k by now. Called with s.mu held.
func (s *Server) setInProgress(k seriesKey, was, now uint64) {
	se, ok := s.series[k]
	if !ok || was == now {
		return
	}
	se.inProgress = sub(se.inProgress, was) + now
	s.m.setInProgress(k, se.inProgress)
	if e := s.edges[edgeKey{k.source, k.destination}]; e != nil {
		e.inProgress = sub(e.inProgress, was) + now
	}
}

func (s *Server) edgeAdd(k edgeKey, c Counts, now time.Time) {
	e, ok := s.edges[k]
	if !ok {
		e = &edge{}
		for i := range e.buckets {
			e.buckets[i].slot = -1
		}
		s.edges[k] = e
	}
	e.last = now
	e.totals.add(c)
	slot := now.UnixNano() / int64(s.window/rateBuckets)
	b := &e.buckets[slot%rateBuckets]
	if b.slot != slot {
		*b = bucket{slot: slot, first: now}
	}
	b.c.add(c)
}

// closeStream takes a closed stream's calls in progress away.
func (s *Server) closeStream(str *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, was := range str.inProgress {
		s.setInProgress(k, was, 0)
	}
	str.inProgress = nil
}

// sweep removes the series and edges with no report for IdleAfter and no
// call in progress. Called with s.mu held.
func (s *Server) sweep(now time.Time) {
	for k, se := range s.series {
		if se.inProgress == 0 && now.Sub(se.lastReport) > s.idleAfter {
			delete(s.series, k)
			s.m.delete(k)
		}
	}
	for k, e := range s.edges {
		if e.inProgress == 0 && now.Sub(e.last) > s.idleAfter {
			delete(s.edges, k)
		}
	}
}

// Series is one series' totals since it appeared.
type Series struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Locality    string `json:"locality,omitempty"`
	Endpoint    string `json:"endpoint,omitempty"`
	Counts
	InProgress uint64 `json:"in_progress"`
}

// Series returns every series, sorted by source, destination, locality and
// endpoint.
func (s *Server) Series() []Series {
	s.mu.Lock()
	out := make([]Series, 0, len(s.series))
	for k, se := range s.series {
		out = append(out, Series{Source: k.source, Destination: k.destination, Locality: k.locality, Endpoint: k.endpoint, Counts: se.totals, InProgress: se.inProgress})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		if a.Destination != b.Destination {
			return a.Destination < b.Destination
		}
		if a.Locality != b.Locality {
			return a.Locality < b.Locality
		}
		return a.Endpoint < b.Endpoint
	})
	return out
}

// Edge is the traffic from one source service to one destination service.
type Edge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Totals are the calls finished since the edge appeared.
	Totals     Counts `json:"totals"`
	InProgress uint64 `json:"in_progress"`
	// RatePerSecond is the calls finished per second over the rate window,
	// or since the edge appeared when that is shorter (each report
	// counting for the interval before it).
	RatePerSecond float64 `json:"rate_per_second"`
	// ErrorRatio is the part of the calls of the window that failed or
	// were dropped, 0 without calls.
	ErrorRatio float64 `json:"error_ratio"`
	// LastReport is when a client last reported calls of the edge.
	LastReport time.Time `json:"last_report"`
}

// Edges returns the service graph, sorted by source then destination.
func (s *Server) Edges() []Edge {
	now := s.now()
	width := int64(s.window / rateBuckets)
	current := now.UnixNano() / width
	s.mu.Lock()
	out := make([]Edge, 0, len(s.edges))
	for k, e := range s.edges {
		// The buckets counted are the current one and the rateBuckets-1
		// before it; earliest is the first report they hold.
		var w Counts
		var earliest time.Time
		for _, b := range e.buckets {
			if b.slot >= 0 && current-b.slot < rateBuckets {
				w.add(b.c)
				if earliest.IsZero() || b.first.Before(earliest) {
					earliest = b.first
				}
			}
		}
		// Each report holds the calls of the interval before it, so the
		// calls counted were made from an interval before the earliest
		// report; until the next report is due, the calls since the last
		// are not known yet.
		end := now
		if now.Sub(e.last) < s.interval {
			end = e.last
		}
		span := end.Sub(earliest) + s.interval
		ed := Edge{Source: k.source, Destination: k.destination, Totals: e.totals, InProgress: e.inProgress, LastReport: e.last}
		if finished := w.Succeeded + w.Errored + w.Dropped; finished > 0 {
			ed.RatePerSecond = float64(finished) / span.Seconds()
			ed.ErrorRatio = float64(w.Errored+w.Dropped) / float64(finished)
		}
		out = append(out, ed)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].Destination < out[j].Destination
	})
	return out
}
