// Package statusapi serves trellis.status.v1.StatusService: the sync status
// of the ADS streams of one server (what each client was sent, whether it
// ACKed or NACKed it, and what differs from what is served now), the
// resources served to each client profile (GetResources, which `trellis
// status --csds` compares with what a client's own CSDS reports), and
// Explain, which says in words why a client gets what it gets for one
// target.
//
// It owns the SYNCED / STALE / NACKED classification and the paging of
// clients; the per-stream facts come from xdsserver's tracker through the
// injected Config.Streams, and the current content versions from the
// injected Config.Versions. Explain reads what is served (Config.Served,
// the profile caches) and explains it with what was translated
// (Config.Inputs: the catalog snapshot, policies, security settings and
// the translation's skips, handed over in this package's own terms): it
// follows the target's Listener to its routes, clusters and endpoints as
// the client would, and matches the endpoints to the Consul instances, so
// that it describes what the client really gets rather than what a second
// copy of the translation rules would predict.
//
// It does not authenticate: register it on a *grpc.Server whose
// interceptors do (the policy API's, on the admin listener). It must not
// import the translation, the catalog or Consul.
package statusapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver"
)

// Defaults of the requests' optional fields.
const (
	DefaultStaleAfter = 10 * time.Second
	DefaultPageSize   = 100
	MaxPageSize       = 1000
)

// Config configures a Server.
type Config struct {
	// Streams returns the open ADS streams sorted by ID, e.g.
	// (*xdsserver.Server).Streams. Required.
	Streams func() []xdsserver.StreamStatus
	// Versions gives the content versions served now, to find what differs
	// from what a client was sent. Default: nil, and only a stream's own
	// ACK state decides it (no resource is reported out of date).
	Versions xdsserver.ContentVersioner
	// Served gives the resources served to each profile, for
	// GetResources and Explain. Default: nil, and both answer
	// Unimplemented.
	Served Served
	// Inputs are what the server translates, for Explain. Default: nil,
	// and Explain answers Unimplemented.
	Inputs Inputs
	// Replica names this server in every answer, e.g. its xDS address.
	// Default: empty.
	Replica string
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// Server implements statusv1.StatusServiceServer.
type Server struct {
	statusv1.UnimplementedStatusServiceServer
	streams  func() []xdsserver.StreamStatus
	versions xdsserver.ContentVersioner
	served   Served
	inputs   Inputs
	replica  string
	now      func() time.Time
}

var _ statusv1.StatusServiceServer = (*Server)(nil)

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Streams == nil {
		return nil, errors.New("statusapi: Config.Streams is required")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Server{streams: cfg.Streams, versions: cfg.Versions, served: cfg.Served, inputs: cfg.Inputs, replica: cfg.Replica, now: now}, nil
}

// Register registers the StatusService on gs, whose interceptors must
// authenticate every call.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	statusv1.RegisterStatusServiceServer(gs, s)
}

func staleAfter(d interface{ AsDuration() time.Duration }, set bool) (time.Duration, error) {
	if !set {
		return DefaultStaleAfter, nil
	}
	v := d.AsDuration()
	if v <= 0 {
		return 0, status.Errorf(codes.InvalidArgument, "stale_after: %s: must be positive (default %s)", v, DefaultStaleAfter)
	}
	return v, nil
}

// ListClients implements statusv1.StatusServiceServer.
func (s *Server) ListClients(_ context.Context, req *statusv1.ListClientsRequest) (*statusv1.ListClientsResponse, error) {
	stale, err := staleAfter(req.GetStaleAfter(), req.GetStaleAfter() != nil)
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = DefaultPageSize
	case size < 0 || size > MaxPageSize:
		return nil, status.Errorf(codes.InvalidArgument, "page_size: %d: must be 1 to %d (default %d)", size, MaxPageSize, DefaultPageSize)
	}
	var after int64
	if tok := req.GetPageToken(); tok != "" {
		if after, err = strconv.ParseInt(tok, 10, 64); err != nil || after < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "page_token: %q: not a token this API returned", tok)
		}
	}
	if _, ok := statusv1.SyncState_name[int32(req.GetState())]; !ok {
		return nil, status.Errorf(codes.InvalidArgument, "state: %d: must be SYNC_STATE_SYNCED, SYNC_STATE_STALE, SYNC_STATE_NACKED or unspecified", req.GetState())
	}
	now := s.now()
	resp := &statusv1.ListClientsResponse{Summary: &statusv1.Summary{}, Replica: s.replica}
	for _, st := range s.streams() {
		if svc := req.GetService(); svc != "" && !subscribedTo(st, svc) {
			continue
		}
		state := s.streamState(st, now, stale)
		if want := req.GetState(); want != statusv1.SyncState_SYNC_STATE_UNSPECIFIED && state != want {
			continue
		}
		count(resp.Summary, state)
		if st.ID <= after {
			continue
		}
		if len(resp.Clients) == size {
			if resp.NextPageToken == "" {
				resp.NextPageToken = strconv.FormatInt(resp.Clients[size-1].StreamId, 10)
			}
			continue
		}
		resp.Clients = append(resp.Clients, s.client(st, now, stale, false))
	}
	return resp, nil
}

// GetClient implements statusv1.StatusServiceServer.
func (s *Server) GetClient(_ context.Context, req *statusv1.GetClientRequest) (*statusv1.GetClientResponse, error) {
	stale, err := staleAfter(req.GetStaleAfter(), req.GetStaleAfter() != nil)
	if err != nil {
		return nil, err
	}
	client := strings.TrimSpace(req.GetClient())
	if client == "" {
		return nil, status.Error(codes.InvalidArgument, "client: empty: give a node id or a stream id")
	}
	id, idErr := strconv.ParseInt(client, 10, 64)
	now := s.now()
	resp := &statusv1.GetClientResponse{Replica: s.replica}
	for _, st := range s.streams() {
		if st.NodeID == client || (idErr == nil && st.ID == id) {
			resp.Clients = append(resp.Clients, s.client(st, now, stale, true))
		}
	}
	if len(resp.Clients) == 0 {
		return nil, status.Errorf(codes.NotFound, "client %q: no open stream with that node id or stream id on %s", client, s.replicaName())
	}
	return resp, nil
}

func (s *Server) replicaName() string {
	if s.replica == "" {
		return "this server"
	}
	return s.replica
}

func count(sum *statusv1.Summary, state statusv1.SyncState) {
	sum.Clients++
	switch state {
	case statusv1.SyncState_SYNC_STATE_SYNCED:
		sum.Synced++
	case statusv1.SyncState_SYNC_STATE_STALE:
		sum.Stale++
	case statusv1.SyncState_SYNC_STATE_NACKED:
		sum.Nacked++
	}
}

// subscribedTo tells whether the stream subscribes to a resource of
// service: named after it (the listener "svc" or "svc:port", the route,
// cluster and endpoints "svc" or a subset's "svc/subset").
func subscribedTo(st xdsserver.StreamStatus, service string) bool {
	for _, ts := range st.Types {
		for _, name := range ts.ResourceNames {
			name = strings.TrimPrefix(name, "xds:///")
			if name == service || strings.HasPrefix(name, service+"/") || strings.HasPrefix(name, service+":") {
				return true
			}
		}
	}
	return false
}

// rank orders states from best to worst.
func rank(s statusv1.SyncState) int {
	switch s {
	case statusv1.SyncState_SYNC_STATE_NACKED:
		return 3
	case statusv1.SyncState_SYNC_STATE_STALE:
		return 2
	case statusv1.SyncState_SYNC_STATE_SYNCED:
		return 1
	}
	return 0
}

func (s *Server) client(st xdsserver.StreamStatus, now time.Time, stale time.Duration, detail bool) *statusv1.ClientStatus {
	c := &statusv1.ClientStatus{
		StreamId:    st.ID,
		NodeId:      st.NodeID,
		SpiffeId:    st.PeerSPIFFEID,
		UserAgent:   st.UserAgent,
		Profile:     st.Profile,
		Peer:        st.Peer,
		ConnectedAt: timestamppb.New(st.OpenedAt),
		Replica:     s.replica,
		State:       statusv1.SyncState_SYNC_STATE_SYNCED,
	}
	if l := st.Locality; l != nil {
		c.Locality = &statusv1.Locality{Region: l.Region, Zone: l.Zone, SubZone: l.SubZone}
	}
	for _, ts := range st.Types {
		t := s.typeStatus(st.Profile, ts, now, stale, detail)
		if rank(t.State) > rank(c.State) {
			c.State = t.State
		}
		c.Types = append(c.Types, t)
	}
	return c
}

func (s *Server) typeStatus(profile string, ts xdsserver.TypeStatus, now time.Time, stale time.Duration, detail bool) *statusv1.TypeStatus {
	state, reason, diffs := s.classify(profile, ts, now, stale, detail)
	t := &statusv1.TypeStatus{
		TypeUrl:       ts.TypeURL,
		State:         state,
		Reason:        reason,
		ResourceCount: int32(len(ts.ResourceNames)),
		SentVersion:   ts.SentVersion,
		SentNonce:     ts.SentNonce,
		Pending:       ts.Pending,
		AckedVersion:  ts.AckedVersion,
		Acks:          int64(ts.ACKs),
		Nacks:         int64(ts.NACKs),
	}
	if !ts.SentAt.IsZero() {
		t.SentAt = timestamppb.New(ts.SentAt)
	}
	if !ts.AckedAt.IsZero() {
		t.AckedAt = timestamppb.New(ts.AckedAt)
	}
	if detail {
		t.ResourceNames = slices.Clone(ts.ResourceNames)
		for _, n := range ts.NACKHistory {
			t.NackHistory = append(t.NackHistory, &statusv1.Nack{Version: n.Version, Error: n.Error, At: timestamppb.New(n.At)})
		}
		t.OutOfDate = diffs
	}
	return t
}

// streamState is the state of a stream, its worst type's, without building
// its status.
func (s *Server) streamState(st xdsserver.StreamStatus, now time.Time, stale time.Duration) statusv1.SyncState {
	worst := statusv1.SyncState_SYNC_STATE_SYNCED
	for _, ts := range st.Types {
		if state, _, _ := s.classify(st.Profile, ts, now, stale, false); rank(state) > rank(worst) {
			worst = state
		}
	}
	return worst
}

// classify returns the state of one type of a stream and why it is not
// SYNCED; with detail, the resources that differ from what is served now.
func (s *Server) classify(profile string, ts xdsserver.TypeStatus, now time.Time, stale time.Duration, detail bool) (statusv1.SyncState, string, []*statusv1.ResourceDiff) {
	acked := !ts.Pending && ts.SentVersion != "" && ts.AckedVersion == ts.SentVersion
	switch {
	case !ts.Pending && ts.NACKs > 0 && ts.LastNACKVersion == ts.SentVersion && !acked:
		return statusv1.SyncState_SYNC_STATE_NACKED, fmt.Sprintf("version %s rejected: %s", ts.LastNACKVersion, ts.LastNACKError), nil
	case ts.SentVersion == "":
		// Nothing sent: none of the names is served, and the client
		// waits for them as it should.
		return statusv1.SyncState_SYNC_STATE_SYNCED, "", nil
	case ts.Pending && now.Sub(ts.SentAt) > stale:
		return statusv1.SyncState_SYNC_STATE_STALE, fmt.Sprintf("version %s sent %s ago, neither ACKed nor NACKed", ts.SentVersion, now.Sub(ts.SentAt).Round(time.Second)), nil
	}
	if s.versions == nil || ts.SentContent == nil {
		return statusv1.SyncState_SYNC_STATE_SYNCED, "", nil
	}
	var (
		diffs   []*statusv1.ResourceDiff
		differs int
	)
	current := s.versions.ContentVersions(profile, ts.TypeURL, ts.ResourceNames)
	for _, name := range ts.ResourceNames {
		sent, wasSent := ts.SentContent[name]
		if !wasSent {
			// Subscribed after the last response: the server answers a
			// new subscription with a response of its own.
			continue
		}
		if cur := current[name]; cur != sent {
			differs++
			if detail {
				diffs = append(diffs, &statusv1.ResourceDiff{Name: name, SentContentVersion: sent, CurrentContentVersion: cur})
			}
		}
	}
	if differs == 0 {
		return statusv1.SyncState_SYNC_STATE_SYNCED, "", nil
	}
	return statusv1.SyncState_SYNC_STATE_STALE, fmt.Sprintf("%d of %d resources differ from what is served now", differs, len(ts.ResourceNames)), diffs
}
