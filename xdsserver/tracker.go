package xdsserver

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// StreamStatus is what the server knows of one open ADS stream.
type StreamStatus struct {
	// ID is the stream's number, unique within the server.
	ID int64 `json:"id"`
	// NodeID is the client's node.id from its bootstrap.
	NodeID string `json:"node_id"`
	// UserAgent is the client's user agent name and version, e.g.
	// "gRPC Go 1.85.0".
	UserAgent string `json:"user_agent,omitempty"`
	// Profile is the client profile (package clients) the user agent
	// maps to; with ProfileCaches, the one whose resources the stream gets.
	Profile string `json:"profile,omitempty"`
	// Peer is the client's address.
	Peer string `json:"peer"`
	// PeerSPIFFEID is the SPIFFE ID of the client's certificate when the
	// stream came over TLS with a client certificate carrying one (the
	// server's credentials verified it); empty otherwise.
	PeerSPIFFEID string `json:"peer_spiffe_id,omitempty"`
	// Locality is the client's node.locality from its bootstrap; nil when
	// it has none.
	Locality *Locality `json:"locality,omitempty"`
	// OpenedAt is when the stream opened.
	OpenedAt time.Time `json:"opened_at"`
	// Types holds one entry per type URL requested, sorted by type URL.
	Types []TypeStatus `json:"types"`
}

// TypeStatus is the state of one type URL on one stream.
type TypeStatus struct {
	// TypeURL is the resource type.
	TypeURL string `json:"type_url"`
	// ResourceNames are the names the last request asked for, sorted.
	ResourceNames []string `json:"resource_names"`
	// SentVersion and SentNonce identify the last response sent.
	SentVersion string `json:"sent_version,omitempty"`
	SentNonce   string `json:"sent_nonce,omitempty"`
	// SentResources is the number of resources in the last response.
	SentResources int `json:"sent_resources"`
	// SentAt is when the last response was sent.
	SentAt time.Time `json:"sent_at,omitzero"`
	// Pending reports that the last response is neither ACKed nor NACKed
	// yet.
	Pending bool `json:"pending"`
	// AckedVersion is the last version the client accepted.
	AckedVersion string `json:"acked_version,omitempty"`
	// AckedAt is when AckedVersion was accepted.
	AckedAt time.Time `json:"acked_at,omitzero"`
	// ACKs and NACKs count the responses accepted and rejected.
	ACKs  int `json:"acks"`
	NACKs int `json:"nacks"`
	// LastNACKVersion and LastNACKError describe the last rejected
	// response: its version and the client's error detail.
	LastNACKVersion string    `json:"last_nack_version,omitempty"`
	LastNACKError   string    `json:"last_nack_error,omitempty"`
	LastNACKAt      time.Time `json:"last_nack_at,omitzero"`
	// NACKHistory holds the last MaxNACKHistory rejections, oldest first.
	NACKHistory []NACK `json:"nack_history,omitempty"`
	// SentContent maps each resource name the last response was sent for
	// to the content version the cache held for it when it was sent ("" for
	// a name the cache did not serve). Nil when the server has no
	// ContentVersioner or the request was a wildcard.
	SentContent map[string]string `json:"sent_content,omitempty"`
}

// MaxNACKHistory bounds TypeStatus.NACKHistory.
const MaxNACKHistory = 8

// NACK is one rejected response.
type NACK struct {
	Version string    `json:"version"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// Locality is a client's node.locality.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	SubZone string `json:"sub_zone,omitempty"`
}

// ContentVersioner tells the content versions (package xdscache) of the
// resources a client of a profile is served: for each of names, the version,
// or no entry when the resource is not served, in a new map the caller
// owns. *ProfileCaches implements it,
// and so does CacheVersions for a single cache.
type ContentVersioner interface {
	ContentVersions(profile, typeURL string, names []string) map[string]string
}

// Totals are the server's counters since it was created, across all
// streams.
type Totals struct {
	Streams   int64 `json:"streams"`
	Responses int64 `json:"responses"`
	ACKs      int64 `json:"acks"`
	NACKs     int64 `json:"nacks"`
}

// tracker follows every ADS stream through go-control-plane's callbacks:
// what was requested, what was sent, what was ACKed or NACKed.
type tracker struct {
	logger *slog.Logger
	// versions, when set, gives the content versions recorded for every
	// response.
	versions ContentVersioner

	streamsGauge prometheus.Gauge
	responses    *prometheus.CounterVec
	acks         *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	// ackLatency observes, per type, the time from a response's sending
	// to its ACK.
	ackLatency *prometheus.HistogramVec

	// byType holds the metrics of each known type, resolved once: a
	// label lookup on every response and ACK of 10,000 streams is not
	// free.
	byType map[string]*typeMetrics

	mu      sync.Mutex
	streams map[int64]*streamState
	totals  Totals
	// sent remembers the content versions recorded for recent responses
	// (see sentContent), shared by every stream sent the same response.
	sent map[sentKey]map[string]string
}

// typeMetrics are the metrics of one resource type.
type typeMetrics struct {
	responses, acks, nacks prometheus.Counter
	ackLatency             prometheus.Observer
}

// sentKey identifies a response's content: the cache version it was
// encoded at (go-control-plane's LinearCache names its state, not its
// resources, in VersionInfo), for a profile, of a type, for a set of
// names.
type sentKey struct {
	profile, typeURL, version, names string
}

// maxSentContent bounds tracker.sent; past it the memo starts again.
const maxSentContent = 256

type streamState struct {
	status StreamStatus
	types  map[string]*typeState
}

type typeState struct {
	status TypeStatus
	// answered is the nonce of the last response already ACKed or
	// NACKed: later requests carrying it only change the subscription.
	answered string
}

var _ sotw.Callbacks = (*tracker)(nil)

func newTracker(logger *slog.Logger, reg prometheus.Registerer) (*tracker, error) {
	t := &tracker{
		logger:  logger,
		streams: make(map[int64]*streamState),
		streamsGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_xds_streams",
			Help: "Open ADS streams.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_xds_responses_total",
			Help: "xDS responses sent, by resource type (listener, route, cluster, endpoint, or the type's message name).",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_xds_acks_total",
			Help: "xDS responses accepted by clients, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_xds_nacks_total",
			Help: "xDS responses rejected by clients, by resource type.",
		}, []string{"type"}),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trellis_xds_ack_latency_seconds",
			Help:    "Time from sending an xDS response to the client's ACK of it, by resource type.",
			Buckets: ackLatencyBuckets,
		}, []string{"type"}),
	}
	for _, c := range []prometheus.Collector{t.streamsGauge, t.responses, t.acks, t.nacks, t.ackLatency, newSubscriptions(t)} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Known types start at zero so that rate() works from the first event.
	t.byType = make(map[string]*typeMetrics, 4)
	for _, typeURL := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
		t.byType[typeURL] = t.newTypeMetrics(typeURL)
	}
	return t, nil
}

func (t *tracker) newTypeMetrics(typeURL string) *typeMetrics {
	l := typeLabel(typeURL)
	return &typeMetrics{
		responses:  t.responses.WithLabelValues(l),
		acks:       t.acks.WithLabelValues(l),
		nacks:      t.nacks.WithLabelValues(l),
		ackLatency: t.ackLatency.WithLabelValues(l),
	}
}

// metricsOf returns the metrics of typeURL; t.byType is read-only, so a
// type outside it (a client asking for one the server does not serve) is
// resolved on each call.
func (t *tracker) metricsOf(typeURL string) *typeMetrics {
	if m, ok := t.byType[typeURL]; ok {
		return m
	}
	return t.newTypeMetrics(typeURL)
}

// ackLatencyBuckets span a client on the same host (about a millisecond)
// to one that is overloaded or waits for a dependent resource (seconds).
var ackLatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// scrapeGauges is a GaugeVec refilled by fill at every scrape, for
// gauges computed from state rather than kept up to date as it changes.
type scrapeGauges struct {
	mu   sync.Mutex
	vec  *prometheus.GaugeVec
	fill func(*prometheus.GaugeVec)
}

func (g *scrapeGauges) Describe(ch chan<- *prometheus.Desc) { g.vec.Describe(ch) }

func (g *scrapeGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.vec.Reset()
	g.fill(g.vec)
	g.vec.Collect(ch)
}

// newSubscriptions returns trellis_xds_subscriptions, computed from the
// open streams at scrape time: one pass over the streams under the
// tracker's lock, so that a stream's requests cost nothing more, however
// many streams there are.
func newSubscriptions(t *tracker) *scrapeGauges {
	return &scrapeGauges{
		vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_xds_subscriptions",
			Help: "Open ADS streams subscribed to a resource type, by type and client implementation (the client profile of its user agent; \"unidentified\" before its first request names its node).",
		}, []string{"type", "implementation"}),
		fill: func(vec *prometheus.GaugeVec) {
			type key struct{ typ, impl string }
			counts := make(map[key]int)
			t.mu.Lock()
			for _, st := range t.streams {
				impl := st.status.Profile
				if impl == "" {
					impl = "unidentified"
				}
				for typeURL, ts := range st.types {
					// A type whose last request names nothing is unsubscribed.
					if len(ts.status.ResourceNames) > 0 {
						counts[key{typeLabel(typeURL), impl}]++
					}
				}
			}
			t.mu.Unlock()
			for k, n := range counts {
				vec.WithLabelValues(k.typ, k.impl).Set(float64(n))
			}
		},
	}
}

// newResources returns trellis_xds_resources for the caches behind v,
// computed from them at scrape time so that applying a change costs
// nothing more; nil when v is not one that knows its caches
// (*ProfileCaches, CacheVersions).
func newResources(v ContentVersioner) *scrapeGauges {
	var caches func() map[string]*xdscache.Cache
	switch v := v.(type) {
	case *ProfileCaches:
		caches = func() map[string]*xdscache.Cache {
			out := make(map[string]*xdscache.Cache)
			for _, p := range v.Profiles() {
				if v.Active(p.Name) {
					out[p.Name] = v.Cache(p.Name)
				}
			}
			return out
		}
	case CacheVersions:
		if v.Cache == nil {
			return nil
		}
		caches = func() map[string]*xdscache.Cache { return map[string]*xdscache.Cache{"": v.Cache} }
	default:
		return nil
	}
	return &scrapeGauges{
		vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_xds_resources",
			Help: "Resources the xDS cache serves, by resource type and client profile (Listener aliases included; only the profiles translated for).",
		}, []string{"type", "profile"}),
		fill: func(vec *prometheus.GaugeVec) {
			for profile, cache := range caches() {
				for _, typeURL := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
					vec.WithLabelValues(typeLabel(typeURL), profile).Set(float64(cache.Len(typeURL)))
				}
			}
		},
	}
}

// typeLabel is the metric label of a type URL.
func typeLabel(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// OnStreamOpen implements sotw.Callbacks.
func (t *tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	st := &streamState{
		status: StreamStatus{ID: id, OpenedAt: time.Now()},
		types:  make(map[string]*typeState),
	}
	if p, ok := peer.FromContext(ctx); ok {
		if p.Addr != nil {
			st.status.Peer = p.Addr.String()
		}
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && info.SPIFFEID != nil {
			st.status.PeerSPIFFEID = info.SPIFFEID.String()
		}
	}
	t.mu.Lock()
	t.streams[id] = st
	t.totals.Streams++
	t.mu.Unlock()
	t.streamsGauge.Inc()
	t.logger.Debug("ADS stream opened", "stream", id, "peer", st.status.Peer, "peer_spiffe_id", st.status.PeerSPIFFEID)
	return nil
}

// OnStreamClosed implements sotw.Callbacks.
func (t *tracker) OnStreamClosed(id int64, node *corev3.Node) {
	t.mu.Lock()
	st, ok := t.streams[id]
	delete(t.streams, id)
	t.mu.Unlock()
	if !ok {
		return
	}
	t.streamsGauge.Dec()
	t.logger.Debug("ADS stream closed", "stream", id, "node", node.GetId(), "peer", st.status.Peer,
		"duration", time.Since(st.status.OpenedAt).Round(time.Millisecond))
}

// OnStreamRequest implements sotw.Callbacks. A request carrying the nonce
// of the last response of its type ACKs it, or NACKs it when it has an
// error detail.
func (t *tracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[id]
	if !ok {
		return nil
	}
	if n := req.GetNode(); n != nil && n.GetId() != "" && st.status.NodeID == "" {
		st.status.NodeID = n.GetId()
		st.status.UserAgent = strings.TrimSpace(n.GetUserAgentName() + " " + n.GetUserAgentVersion())
		st.status.Profile = clients.Classify(clients.FromNode(n)).Name
		if l := n.GetLocality(); l != nil && (l.GetRegion() != "" || l.GetZone() != "" || l.GetSubZone() != "") {
			st.status.Locality = &Locality{Region: l.GetRegion(), Zone: l.GetZone(), SubZone: l.GetSubZone()}
		}
		t.logger.Debug("ADS stream identified", "stream", id, "node", st.status.NodeID, "user_agent", st.status.UserAgent, "profile", st.status.Profile)
	}
	typeURL := req.GetTypeUrl()
	ts, ok := st.types[typeURL]
	if !ok {
		ts = &typeState{status: TypeStatus{TypeURL: typeURL}}
		st.types[typeURL] = ts
	}
	nonce := req.GetResponseNonce()
	if ts.status.SentNonce != "" && nonce != ts.status.SentNonce {
		// The server ignores a request answering an older response.
		return nil
	}
	if names := req.GetResourceNames(); !slices.Equal(names, ts.status.ResourceNames) {
		// A new slice: snapshots share the old one. An ACK names what the
		// last request named, so this is rare.
		names = slices.Clone(names)
		slices.Sort(names)
		ts.status.ResourceNames = slices.Compact(names)
	}
	if nonce == "" || nonce == ts.answered {
		return nil
	}
	ts.answered = nonce
	ts.status.Pending = false
	now := time.Now()
	m := t.metricsOf(typeURL)
	if detail := req.GetErrorDetail(); detail != nil {
		ts.status.NACKs++
		ts.status.LastNACKVersion = ts.status.SentVersion
		ts.status.LastNACKError = detail.GetMessage()
		ts.status.LastNACKAt = now
		// A new slice each time: snapshots share the old one.
		history := ts.status.NACKHistory
		if len(history) == MaxNACKHistory {
			history = history[1:]
		}
		ts.status.NACKHistory = append(slices.Clip(slices.Clone(history)), NACK{Version: ts.status.SentVersion, Error: detail.GetMessage(), At: now})
		t.totals.NACKs++
		m.nacks.Inc()
		t.logger.Warn("xDS response rejected by client", "node", st.status.NodeID, "user_agent", st.status.UserAgent, "profile", st.status.Profile, "peer", st.status.Peer,
			"stream", id, "type", typeURL, "version", ts.status.SentVersion, "error", detail.GetMessage())
		return nil
	}
	ts.status.ACKs++
	if !ts.status.SentAt.IsZero() {
		m.ackLatency.Observe(now.Sub(ts.status.SentAt).Seconds())
	}
	ts.status.AckedVersion = req.GetVersionInfo()
	ts.status.AckedAt = now
	t.totals.ACKs++
	m.acks.Inc()
	if t.logger.Enabled(context.Background(), slog.LevelDebug) { // spares every ACK the arguments' allocations
		t.logger.Debug("xDS response accepted", "node", st.status.NodeID, "stream", id, "type", typeURL, "version", req.GetVersionInfo())
	}
	return nil
}

// OnStreamResponse implements sotw.Callbacks.
//
// With a ContentVersioner, the content versions of the requested names are
// looked up as the response is recorded: a change applied between the
// response's encoding and this callback is then recorded as sent, and is
// corrected by the response that change causes. Every stream sent the
// same response (same profile, type, names and cache version) shares the
// first lookup, which is the closest to the encoding of them all: a push
// of one resource to 10,000 streams looks it up once.
func (t *tracker) OnStreamResponse(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	typeURL := resp.GetTypeUrl()
	t.metricsOf(typeURL).responses.Inc()
	now := time.Now()
	t.mu.Lock()
	t.totals.Responses++
	st, ok := t.streams[id]
	if !ok {
		t.mu.Unlock()
		return
	}
	var content map[string]string
	if t.versions != nil && len(req.GetResourceNames()) > 0 {
		key := sentKey{profile: st.status.Profile, typeURL: typeURL, version: resp.GetVersionInfo(), names: strings.Join(req.GetResourceNames(), "\x00")}
		if content, ok = t.sent[key]; !ok {
			// Looked up under the lock: the streams sent the same
			// response all arrive here at once, and each would miss
			// while the first one waited to store its lookup. The
			// caches never call the tracker, so the lock order is one
			// way.
			content = t.sentContent(st.status.Profile, typeURL, req.GetResourceNames())
			if len(t.sent) >= maxSentContent {
				clear(t.sent)
			}
			if t.sent == nil {
				t.sent = make(map[sentKey]map[string]string)
			}
			t.sent[key] = content
		}
	}
	defer t.mu.Unlock()
	ts, ok := st.types[typeURL]
	if !ok {
		ts = &typeState{status: TypeStatus{TypeURL: typeURL}}
		st.types[typeURL] = ts
	}
	ts.status.SentVersion = resp.GetVersionInfo()
	ts.status.SentNonce = resp.GetNonce()
	ts.status.SentResources = len(resp.GetResources())
	ts.status.SentAt = now
	ts.status.Pending = true
	ts.status.SentContent = content
}

// sentContent is the content version of each of names in the caches of
// profile, "" for a name not served. The map is shared between streams:
// nobody may modify it.
func (t *tracker) sentContent(profile, typeURL string, names []string) map[string]string {
	content := t.versions.ContentVersions(profile, typeURL, names)
	for _, name := range names {
		if _, ok := content[name]; !ok {
			content[name] = "" // not served
		}
	}
	return content
}

// snapshot returns the status of every open stream, sorted by ID, each
// stream's types sorted by type URL. The lock is held only to copy the
// structs: the slices and maps they hold are replaced, never modified, by
// the tracker, so the copies share them; sorting happens after.
func (t *tracker) snapshot() []StreamStatus {
	t.mu.Lock()
	out := make([]StreamStatus, 0, len(t.streams))
	for _, st := range t.streams {
		s := st.status
		s.Types = make([]TypeStatus, 0, len(st.types))
		for _, ts := range st.types {
			s.Types = append(s.Types, ts.status)
		}
		out = append(out, s)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b StreamStatus) int { return cmp.Compare(a.ID, b.ID) })
	for i := range out {
		types := out[i].Types
		slices.SortFunc(types, func(a, b TypeStatus) int { return strings.Compare(a.TypeURL, b.TypeURL) })
		for j := range types {
			if types[j].ResourceNames == nil {
				types[j].ResourceNames = []string{}
			}
		}
	}
	return out
}

func (t *tracker) totalsSnapshot() Totals {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.totals
}
