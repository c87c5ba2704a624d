package statusapi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/internal/clients"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// MaxResources bounds the resources of one GetResources request.
const MaxResources = 1000

// Served is what the server serves each client profile: one xDS cache per
// profile. *xdsserver.ProfileCaches implements it.
type Served interface {
	// Profiles are the profiles served, the fallback first.
	Profiles() []clients.Profile
	// ProfileOf returns the profile whose cache serves node.
	ProfileOf(node *corev3.Node) clients.Profile
	// Cache returns the cache of a profile, nil when it is not served.
	Cache(profile string) *xdscache.Cache
	// Prepare makes sure the profile's translation is served (a profile
	// is translated once a client of it connects), waiting for it.
	Prepare(ctx context.Context, profile string) error
}

// prepareTimeout bounds the wait for a profile's first translation.
const prepareTimeout = 20 * time.Second

// prepare waits for profile's translation to be served, unless the
// server has not synced with Consul yet (nothing is served then).
func (s *Server) prepare(ctx context.Context, profile string) error {
	if s.inputs != nil && !s.inputs.Synced() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, prepareTimeout)
	defer cancel()
	if err := s.served.Prepare(ctx, profile); err != nil {
		return status.Errorf(codes.Unavailable, "%v; try again", err)
	}
	return nil
}

var _ Served = (*xdsserver.ProfileCaches)(nil)

// Profile sources, as GetResources and Explain report them.
const (
	profileFromStream    = "stream"
	profileFromUserAgent = "user agent"
	profileRequested     = "requested"
	profileFallback      = "fallback"
)

// knownTypes are the type URLs the server serves.
var knownTypes = map[string]bool{
	resource.ListenerType: true, resource.RouteType: true, resource.ClusterType: true, resource.EndpointType: true,
}

// GetResources implements statusv1.StatusServiceServer.
func (s *Server) GetResources(ctx context.Context, req *statusv1.GetResourcesRequest) (*statusv1.GetResourcesResponse, error) {
	if s.served == nil {
		return nil, status.Error(codes.Unimplemented, "GetResources: this server was started without its resource caches")
	}
	refs := req.GetResources()
	switch {
	case len(refs) == 0:
		return nil, status.Error(codes.InvalidArgument, "resources: empty: name at least one (type_url and name)")
	case len(refs) > MaxResources:
		return nil, status.Errorf(codes.InvalidArgument, "resources: %d: at most %d per request", len(refs), MaxResources)
	}
	for i, r := range refs {
		if !knownTypes[r.GetTypeUrl()] {
			return nil, status.Errorf(codes.InvalidArgument, "resources[%d].type_url: %q: accepted: %s, %s, %s, %s", i, r.GetTypeUrl(),
				resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType)
		}
		if r.GetName() == "" {
			return nil, status.Errorf(codes.InvalidArgument, "resources[%d].name: empty", i)
		}
	}
	node := &corev3.Node{Id: req.GetNodeId(), UserAgentName: req.GetUserAgentName(),
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: req.GetUserAgentVersion()}}
	if req.GetRbacDeclared() || req.GetOwnTrustDomainRootsDeclared() {
		node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	if req.GetRbacDeclared() {
		node.Metadata.Fields[clients.RBACMetadataKey] = structpb.NewStringValue("true")
	}
	if req.GetOwnTrustDomainRootsDeclared() {
		node.Metadata.Fields[clients.OwnTrustDomainRootsMetadataKey] = structpb.NewStringValue("true")
	}
	profile, source, err := s.profileFor(req.GetProfile(), req.GetNodeId(), node)
	if err != nil {
		return nil, err
	}
	if err := s.prepare(ctx, profile); err != nil {
		return nil, err
	}
	c := s.served.Cache(profile)
	resp := &statusv1.GetResourcesResponse{Profile: profile, ProfileSource: source, Replica: s.replica}
	for _, r := range refs {
		out := &statusv1.ServedResource{TypeUrl: r.GetTypeUrl(), Name: r.GetName()}
		if c != nil {
			if res, version, ok := c.Resource(r.GetTypeUrl(), r.GetName()); ok {
				a, err := anypb.New(res)
				if err != nil {
					return nil, status.Errorf(codes.Internal, "encode %s %q: %v", r.GetTypeUrl(), r.GetName(), err)
				}
				out.Served, out.ContentVersion, out.Resource = true, version, a
			}
		}
		resp.Resources = append(resp.Resources, out)
	}
	return resp, nil
}

// profileFor picks the profile to answer for: the requested one, the one
// of nodeID's open stream, the one node's user agent maps to, or the
// fallback.
func (s *Server) profileFor(requested, nodeID string, node *corev3.Node) (string, string, error) {
	profiles := s.served.Profiles()
	if requested != "" {
		for _, p := range profiles {
			if p.Name == requested {
				return requested, profileRequested, nil
			}
		}
		names := make([]string, len(profiles))
		for i, p := range profiles {
			names[i] = p.Name
		}
		return "", "", status.Errorf(codes.InvalidArgument, "profile: %q: not served; accepted: %v", requested, names)
	}
	if nodeID != "" {
		for _, st := range s.streams() {
			if st.NodeID == nodeID && st.Profile != "" {
				return st.Profile, profileFromStream, nil
			}
		}
	}
	if node.GetUserAgentName() != "" {
		return s.served.ProfileOf(node).Name, profileFromUserAgent, nil
	}
	return profiles[0].Name, profileFallback, nil
}
