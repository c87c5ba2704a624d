// Package dashboard serves the web dashboard of a Trellis server under /ui/
// on the admin listener: the services with their instances, health, subsets
// and policies, the connected xDS clients with their sync state and NACKs,
// Consul's connectivity, and the service graph: which service calls which,
// at what rate and with what error ratio, from what gRPC clients report
// over LRS (package lrs). The page (embedded, no build step) polls
// /ui/api/state and redraws itself without reloading; a client picked in
// the list is read from /ui/api/client, with every NACK's text and time and
// what differs from what is served now.
//
// A state read stays the same size however many clients and services
// there are: clients come a page at a time (ClientsPerPage) with a
// summary of all of them by sync state, services and graph edges are cut
// at MaxServices and MaxEdges and the rest counted, so that a mesh of
// 10,000 clients costs the page what one of fifty does.
//
// It owns the page and the JSON it reads. What it shows is injected: the
// services, Consul's state and the graph as functions, the clients through
// the status API (package statusapi), so that the page and `trellis status`
// agree. It must not import Consul, the catalog or the translation. It does not
// authenticate: the admin server guards /ui/ as it guards /debug/*.
package dashboard

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
)

//go:embed assets
var assets embed.FS

// Defaults of the page's limits.
const (
	// DefaultClientsPerPage is how many clients one state read returns.
	DefaultClientsPerPage = 50
	// DefaultMaxServices is how many services one state read lists; the
	// rest are counted.
	DefaultMaxServices = 500
	// DefaultMaxEdges is how many edges of the service graph one state
	// read lists, the busiest first; the rest are counted.
	DefaultMaxEdges = 500
)

// Edge is the traffic from one service to another, as its clients
// reported it.
type Edge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Succeeded and Errored count the calls finished since the edge
	// appeared; Errored includes calls the clients dropped.
	Succeeded  uint64 `json:"succeeded"`
	Errored    uint64 `json:"errored"`
	InProgress uint64 `json:"in_progress"`
	// RatePerSecond is the recent call rate, ErrorRatio the part of those
	// calls that failed (0 to 1).
	RatePerSecond float64   `json:"rate_per_second"`
	ErrorRatio    float64   `json:"error_ratio"`
	LastReport    time.Time `json:"last_report"`
}

// Service is one service as the page shows it.
type Service struct {
	Name      string     `json:"name"`
	Instances []Instance `json:"instances"`
	// Subsets are the names of the subsets of the service's policy.
	Subsets []string `json:"subsets,omitempty"`
	// Policy is nil when the service has none.
	Policy *Policy `json:"policy,omitempty"`
}

// Instance is one instance of a service.
type Instance struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	// Health is Consul's name for the aggregated check status: passing,
	// warning, critical or maintenance.
	Health string `json:"health"`
	Zone   string `json:"zone,omitempty"`
}

// Policy summarises the policy of a service.
type Policy struct {
	Revision uint64 `json:"revision"`
	Routes   int    `json:"routes"`
}

// Consul is the server's connection to Consul.
type Consul struct {
	Reachable   bool      `json:"reachable"`
	Synced      bool      `json:"synced"`
	LastContact time.Time `json:"last_contact,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// Problems are ACL and permission problems, in words.
	Problems []string `json:"problems,omitempty"`
}

// ListClients is the status API's ListClients, e.g.
// (*statusapi.Server).ListClients.
type ListClients func(context.Context, *statusv1.ListClientsRequest) (*statusv1.ListClientsResponse, error)

// GetClient is the status API's GetClient, e.g.
// (*statusapi.Server).GetClient.
type GetClient func(context.Context, *statusv1.GetClientRequest) (*statusv1.GetClientResponse, error)

// Config configures a Handler.
type Config struct {
	// Services returns the services, sorted by name. Required.
	Services func() []Service
	// Clients lists the clients. Required.
	Clients ListClients
	// Client reads one client's detail for /ui/api/client. Default: the
	// page offers no detail.
	Client GetClient
	// Consul returns Consul's state. Default: not shown.
	Consul func() Consul
	// Graph returns the service graph. Default: not shown (load
	// reporting off).
	Graph func() []Edge
	// MaxEdges bounds the edges of one read. Default: DefaultMaxEdges.
	MaxEdges int
	// ClientsPerPage is the page size of the clients. Default:
	// DefaultClientsPerPage; at most 1000.
	ClientsPerPage int
	// MaxServices bounds the services of one read. Default:
	// DefaultMaxServices.
	MaxServices int
	// StaleAfter is the status API's stale threshold. Default: the API's.
	StaleAfter time.Duration
	// Logger receives a line for each failed state read. Default: discard.
	Logger *slog.Logger
}

// Handler serves /ui/.
type Handler struct {
	cfg    Config
	static http.Handler
	logger *slog.Logger
}

// New returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Services == nil || cfg.Clients == nil {
		return nil, errors.New("dashboard: Config.Services and Config.Clients are required")
	}
	if cfg.ClientsPerPage <= 0 {
		cfg.ClientsPerPage = DefaultClientsPerPage
	}
	if cfg.ClientsPerPage > 1000 {
		return nil, errors.New("dashboard: Config.ClientsPerPage: at most 1000")
	}
	if cfg.MaxServices <= 0 {
		cfg.MaxServices = DefaultMaxServices
	}
	if cfg.MaxEdges <= 0 {
		cfg.MaxEdges = DefaultMaxEdges
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg, static: http.StripPrefix("/ui/", http.FileServerFS(sub)), logger: logger}, nil
}

// State is what /ui/api/state returns.
type State struct {
	GeneratedAt time.Time `json:"generated_at"`
	Consul      *Consul   `json:"consul,omitempty"`
	Services    []Service `json:"services"`
	// MoreServices counts the services left out after MaxServices.
	MoreServices int `json:"more_services,omitempty"`
	// Clients is the status API's ListClientsResponse, in protojson.
	Clients json.RawMessage `json:"clients"`
	// Graph is the service graph, sorted by source then destination; nil
	// when load reporting is off.
	Graph *Graph `json:"graph,omitempty"`
}

// Graph is the service graph of a state read.
type Graph struct {
	Edges []Edge `json:"edges"`
	// MoreEdges counts the quietest edges left out after MaxEdges.
	MoreEdges int `json:"more_edges,omitempty"`
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case r.URL.Path == "/ui/api/state":
		h.state(w, r)
	case r.URL.Path == "/ui/api/client":
		h.client(w, r)
	case strings.HasPrefix(r.URL.Path, "/ui/"):
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'")
		h.static.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (h *Handler) state(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := &statusv1.ListClientsRequest{
		Service:   q.Get("service"),
		PageSize:  int32(h.cfg.ClientsPerPage),
		PageToken: q.Get("page_token"),
	}
	if h.cfg.StaleAfter > 0 {
		req.StaleAfter = durationpb.New(h.cfg.StaleAfter)
	}
	if s := q.Get("state"); s != "" {
		v, ok := statusv1.SyncState_value["SYNC_STATE_"+strings.ToUpper(s)]
		if !ok {
			http.Error(w, "state "+strconv.Quote(s)+": must be synced, stale or nacked", http.StatusBadRequest)
			return
		}
		req.State = statusv1.SyncState(v)
	}
	clients, err := h.cfg.Clients(r.Context(), req)
	if err != nil {
		h.logger.Info("dashboard state read failed", "error", err)
		http.Error(w, status.Convert(err).Message(), http.StatusBadRequest)
		return
	}
	raw, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(clients)
	if err != nil {
		http.Error(w, "encode clients: "+err.Error(), http.StatusInternalServerError)
		return
	}
	st := State{GeneratedAt: time.Now().UTC(), Services: h.cfg.Services(), Clients: raw}
	if st.Services == nil {
		st.Services = []Service{}
	}
	if len(st.Services) > h.cfg.MaxServices {
		st.MoreServices = len(st.Services) - h.cfg.MaxServices
		st.Services = st.Services[:h.cfg.MaxServices]
	}
	if h.cfg.Consul != nil {
		c := h.cfg.Consul()
		st.Consul = &c
	}
	if h.cfg.Graph != nil {
		st.Graph = graph(h.cfg.Graph(), h.cfg.MaxEdges)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(st); err != nil {
		h.logger.Debug("dashboard state write failed", "error", err)
	}
}

// client serves one client's detail: GetClient's answer in protojson,
// for ?client= a node id or a stream id.
func (h *Handler) client(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Client == nil {
		http.NotFound(w, r)
		return
	}
	req := &statusv1.GetClientRequest{Client: r.URL.Query().Get("client")}
	if h.cfg.StaleAfter > 0 {
		req.StaleAfter = durationpb.New(h.cfg.StaleAfter)
	}
	resp, err := h.cfg.Client(r.Context(), req)
	if err != nil {
		st := status.Convert(err)
		code := http.StatusBadRequest
		if st.Code() == codes.NotFound {
			code = http.StatusNotFound
		}
		http.Error(w, st.Message(), code)
		return
	}
	raw, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		http.Error(w, "encode client: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if _, err := w.Write(raw); err != nil {
		h.logger.Debug("dashboard client write failed", "error", err)
	}
}

// graph keeps the max busiest edges, sorted by source then destination.
func graph(edges []Edge, limit int) *Graph {
	g := &Graph{Edges: edges}
	if g.Edges == nil {
		g.Edges = []Edge{}
	}
	if len(g.Edges) > limit {
		busiest := slices.Clone(g.Edges)
		slices.SortStableFunc(busiest, func(a, b Edge) int { return cmp.Compare(b.RatePerSecond, a.RatePerSecond) })
		g.MoreEdges = len(busiest) - limit
		g.Edges = busiest[:limit]
	}
	slices.SortFunc(g.Edges, func(a, b Edge) int {
		if c := cmp.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return cmp.Compare(a.Destination, b.Destination)
	})
	return g
}
