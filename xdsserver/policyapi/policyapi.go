// Package policyapi serves trellis.policy.v1.PolicyService: the gRPC API
// through which operators create, read, replace and delete service
// policies.
//
// Every write is validated whole with policy.Validate before it reaches the
// store; a refused write changes nothing and fails with InvalidArgument,
// carrying a google.rpc.BadRequest detail with one FieldViolation per
// problem (field paths relative to the request, e.g.
// "policy.routes[0].settings.retry.num_retries"); the status message lists
// the same violations as "field: description; ...". Policies are stored in
// canonical form (policy.Normalize). A write naming a stale revision fails
// with Aborted and a google.rpc.ErrorInfo carrying the current revision.
//
// Every call is authenticated by the Authenticators of the Config (bearer
// tokens today, others such as SPIFFE mTLS identities can be added): without
// any, the API refuses every call with PermissionDenied.
//
// This package owns the API surface only. It reaches storage through the
// Store interface (implemented by internal/policy/store, whose types and
// errors it uses) and must not import Consul's API directly, the catalog,
// the translator, the xDS cache or the xDS server.
package policyapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/policy"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo details this API
// returns.
const ErrorDomain = "policy.trellis.dev"

// ReasonRevisionConflict is the ErrorInfo reason of a write refused because
// the stored policy is not at the expected revision. Its metadata holds
// "service", "expected_revision" and "current_revision" (0: no policy).
const ReasonRevisionConflict = "REVISION_CONFLICT"

// Store is the policy storage the API needs.
type Store interface {
	Put(ctx context.Context, p *policyv1.ServicePolicy, expected *uint64) (uint64, error)
	Get(ctx context.Context, service string) (*store.Stored, error)
	List(ctx context.Context) ([]*store.Stored, error)
	Delete(ctx context.Context, service string, expected *uint64) error
}

var _ Store = (*store.Store)(nil)

// Config configures a Server.
type Config struct {
	// Store keeps the policies. Required.
	Store Store
	// Authenticators decide who may call the API; the first that accepts
	// a call lets it through. Default: none, and every call is refused
	// with PermissionDenied (DisabledMessage).
	Authenticators []Authenticator
	// KnownService tells whether a service is in the catalog; a policy
	// naming an unknown service is accepted with a warning. Default: nil
	// (not checked).
	KnownService func(service string) bool
	// Logger receives a line for every stored or deleted policy and every
	// refused call. Default: discard.
	Logger *slog.Logger
}

// Server implements policyv1.PolicyServiceServer.
type Server struct {
	policyv1.UnimplementedPolicyServiceServer
	store  Store
	auths  []Authenticator
	known  func(string) bool
	logger *slog.Logger
}

var _ policyv1.PolicyServiceServer = (*Server)(nil)

// New returns a Server. Register it on a *grpc.Server built with its
// interceptors, or use NewGRPCServer.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("policyapi: Config.Store is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		store:  cfg.Store,
		auths:  append([]Authenticator(nil), cfg.Authenticators...),
		known:  cfg.KnownService,
		logger: logger,
	}, nil
}

// NewGRPCServer returns a *grpc.Server serving the PolicyService and server
// reflection, every call authenticated. Serve it on a listener, or through
// its ServeHTTP method on an HTTP/2 server (the admin listener does that).
// The caller stops it.
func NewGRPCServer(cfg Config, opts ...grpc.ServerOption) (*grpc.Server, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		grpc.ChainUnaryInterceptor(s.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(s.StreamInterceptor()),
	)
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	reflection.Register(gs)
	return gs, nil
}

// Register registers the PolicyService on gs. gs must authenticate calls
// with the Server's interceptors.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	policyv1.RegisterPolicyServiceServer(gs, s)
}

// PutPolicy validates and stores a policy.
func (s *Server) PutPolicy(ctx context.Context, req *policyv1.PutPolicyRequest) (*policyv1.PutPolicyResponse, error) {
	p, warnings, err := s.validate(ctx, req.GetPolicy())
	if err != nil {
		return nil, err
	}
	rev, err := s.store.Put(ctx, p, req.ExpectedRevision)
	if err != nil {
		return nil, s.storeError(ctx, "put", p.GetService(), err)
	}
	s.logger.Info("policy stored", "service", p.GetService(), "revision", rev, "warnings", len(warnings), "peer", peerAddr(ctx))
	return &policyv1.PutPolicyResponse{Policy: p, Revision: rev, Warnings: warnings}, nil
}

// GetPolicy returns a stored policy.
func (s *Server) GetPolicy(ctx context.Context, req *policyv1.GetPolicyRequest) (*policyv1.GetPolicyResponse, error) {
	if err := requireService(req.GetService()); err != nil {
		return nil, err
	}
	st, err := s.store.Get(ctx, req.GetService())
	if err != nil {
		return nil, s.storeError(ctx, "get", req.GetService(), err)
	}
	return &policyv1.GetPolicyResponse{Policy: st.Policy, Revision: st.Revision}, nil
}

// ListPolicies returns every stored policy, sorted by service.
func (s *Server) ListPolicies(ctx context.Context, _ *policyv1.ListPoliciesRequest) (*policyv1.ListPoliciesResponse, error) {
	list, err := s.store.List(ctx)
	if err != nil {
		return nil, s.storeError(ctx, "list", "", err)
	}
	resp := &policyv1.ListPoliciesResponse{Policies: make([]*policyv1.StoredPolicy, 0, len(list))}
	for _, st := range list {
		resp.Policies = append(resp.Policies, &policyv1.StoredPolicy{Policy: st.Policy, Revision: st.Revision})
	}
	return resp, nil
}

// DeletePolicy removes a stored policy.
func (s *Server) DeletePolicy(ctx context.Context, req *policyv1.DeletePolicyRequest) (*policyv1.DeletePolicyResponse, error) {
	if err := requireService(req.GetService()); err != nil {
		return nil, err
	}
	if err := s.store.Delete(ctx, req.GetService(), req.ExpectedRevision); err != nil {
		return nil, s.storeError(ctx, "delete", req.GetService(), err)
	}
	s.logger.Info("policy deleted", "service", req.GetService(), "peer", peerAddr(ctx))
	return &policyv1.DeletePolicyResponse{}, nil
}

// ValidatePolicy validates a policy as PutPolicy does, without storing it.
func (s *Server) ValidatePolicy(ctx context.Context, req *policyv1.ValidatePolicyRequest) (*policyv1.ValidatePolicyResponse, error) {
	_, warnings, err := s.validate(ctx, req.GetPolicy())
	if err != nil {
		return nil, err
	}
	return &policyv1.ValidatePolicyResponse{Warnings: warnings}, nil
}

// validate normalises p and validates it against the stored policies of
// the services it routes to. It returns the canonical policy, or a status
// error.
func (s *Server) validate(ctx context.Context, p *policyv1.ServicePolicy) (*policyv1.ServicePolicy, []string, error) {
	if p == nil {
		return nil, nil, invalidArgument("", []policy.Violation{{Description: "required: a ServicePolicy with at least a service"}})
	}
	p = policy.Normalize(p)
	others := map[string]*policyv1.ServicePolicy{}
	for _, service := range policy.ReferencedServices(p) {
		st, err := s.store.Get(ctx, service)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, nil, s.storeError(ctx, "validate: read the policy of destination", service, err)
		default:
			others[service] = st.Policy
		}
	}
	env := policy.Env{
		KnownService: s.known,
		PolicyOf:     func(service string) *policyv1.ServicePolicy { return others[service] },
	}
	warnings, err := policy.Validate(p, env)
	if err != nil {
		var ve *policy.ValidationError
		if errors.As(err, &ve) {
			return nil, nil, invalidArgument(p.GetService(), ve.Violations)
		}
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return p, warnings, nil
}

// requestField turns a policy field path into one relative to the
// request.
func requestField(field string) string {
	switch {
	case field == "":
		return "policy"
	case strings.HasPrefix(field, "["):
		return "policy" + field
	default:
		return "policy." + field
	}
}

// invalidArgument is the status of a refused policy.
func invalidArgument(service string, violations []policy.Violation) error {
	br := &errdetails.BadRequest{}
	texts := make([]string, 0, len(violations))
	for _, v := range violations {
		field := requestField(v.Field)
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: field, Description: v.Description})
		texts = append(texts, field+": "+v.Description)
	}
	what := "policy refused"
	if service != "" {
		what = fmt.Sprintf("policy for service %q refused", service)
	}
	st := status.New(codes.InvalidArgument, what+": "+strings.Join(texts, "; "))
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

func requireService(service string) error {
	if service != "" {
		return nil
	}
	st := status.New(codes.InvalidArgument, "service: required")
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: "service", Description: "required"},
	}}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// storeError maps a store error to a status error.
func (s *Server) storeError(ctx context.Context, op, service string, err error) error {
	var conflict *store.ConflictError
	switch {
	case errors.As(err, &conflict):
		msg := fmt.Sprintf("policy for service %q is at revision %d, not %d: read it again and retry", conflict.Service, conflict.Current, conflict.Expected)
		switch {
		case conflict.Current == 0:
			msg = fmt.Sprintf("service %q has no policy (expected revision %d)", conflict.Service, conflict.Expected)
		case conflict.Expected == 0:
			msg = fmt.Sprintf("policy for service %q already exists at revision %d", conflict.Service, conflict.Current)
		}
		st := status.New(codes.Aborted, msg)
		if withDetails, derr := st.WithDetails(&errdetails.ErrorInfo{
			Reason: ReasonRevisionConflict,
			Domain: ErrorDomain,
			Metadata: map[string]string{
				"service":           conflict.Service,
				"expected_revision": strconv.FormatUint(conflict.Expected, 10),
				"current_revision":  strconv.FormatUint(conflict.Current, 10),
			},
		}); derr == nil {
			st = withDetails
		}
		return st.Err()
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "service %q has no policy", service)
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, store.ErrInvalidValue):
		s.logger.Error("stored policy cannot be read", "op", op, "service", service, "error", err)
		return status.Errorf(codes.Internal, "policyapi: %s: %v", op, err)
	default:
		s.logger.Warn("policy store failed", "op", op, "service", service, "error", err)
		return status.Errorf(codes.Unavailable, "policyapi: %s: %v", op, err)
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
