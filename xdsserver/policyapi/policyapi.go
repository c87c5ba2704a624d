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
// A write or delete that removes a subset another stored policy routes to
// fails with FailedPrecondition, a google.rpc.PreconditionFailure naming
// each dependent service and route, unless the request sets force; a forced
// change is logged at WARN and its response lists what it broke. The check
// and the change are one check-and-set in the store, so a concurrent write
// of a dependent policy cannot slip between them.
//
// Other errors: a stored value that is not a policy is DataLoss naming its
// key (ListPolicies returns the readable policies and one KeyError per
// unreadable key instead); a policy larger than store.MaxValueBytes is
// InvalidArgument with the limit; a request holding a string that is not
// UTF-8 is InvalidArgument naming the field; Consul's ACLs refusing the
// server's token is PermissionDenied; Consul not answering is Unavailable;
// anything else from Consul is Internal.
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

// PreconditionDependents is the google.rpc.PreconditionFailure violation
// type of a write or delete refused because it removes the destination of
// another stored policy's route. Its subject is the dependent service and
// route ("src routes[0] (canary)").
const PreconditionDependents = "DEPENDENT_ROUTE"

// Store is the policy storage the API needs.
type Store interface {
	Apply(ctx context.Context, c store.Change) (uint64, error)
	Get(ctx context.Context, service string) (*store.Stored, error)
	List(ctx context.Context) (*store.Listing, error)
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
	gs.RegisterService(&serviceDesc, s)
}

// PutPolicy validates and stores a policy. It is refused with
// FailedPrecondition when it removes a subset another stored policy routes
// to, unless req.Force.
func (s *Server) PutPolicy(ctx context.Context, req *policyv1.PutPolicyRequest) (*policyv1.PutPolicyResponse, error) {
	p, err := s.normalize(req.GetPolicy())
	if err != nil {
		return nil, err
	}
	// The policy on its own first; against the other policies in the
	// store's check.
	if _, err := s.validateWith(p, nil); err != nil {
		return nil, err
	}
	if err := checkSize(p); err != nil {
		return nil, err
	}
	var (
		warnings []string
		broken   []policy.BrokenRoute
	)
	rev, err := s.store.Apply(ctx, store.Change{Service: p.GetService(), Policy: p, Expected: req.ExpectedRevision, Check: func(v *store.View) error {
		var err error
		if warnings, err = s.validateIn(p, v); err != nil {
			return err
		}
		broken = policy.BrokenBy(viewPolicies(v), p.GetService(), p)
		return s.dependents("write", p.GetService(), broken, req.GetForce())
	}})
	if err != nil {
		return nil, s.storeError(ctx, "put", p.GetService(), err)
	}
	s.logForced("policy stored", p.GetService(), rev, broken, ctx)
	s.logger.Info("policy stored", "service", p.GetService(), "revision", rev, "warnings", len(warnings), "peer", peerAddr(ctx))
	return &policyv1.PutPolicyResponse{Policy: p, Revision: rev, Warnings: warnings, BrokenDependents: brokenProto(broken)}, nil
}

// GetPolicy returns a stored policy. A stored value that is not a policy
// is DataLoss naming the key.
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

// ListPolicies returns every readable stored policy, sorted by service, and
// an error for each key whose value is not a policy.
func (s *Server) ListPolicies(ctx context.Context, _ *policyv1.ListPoliciesRequest) (*policyv1.ListPoliciesResponse, error) {
	list, err := s.store.List(ctx)
	if err != nil {
		return nil, s.storeError(ctx, "list", "", err)
	}
	resp := &policyv1.ListPoliciesResponse{Policies: make([]*policyv1.StoredPolicy, 0, len(list.Policies))}
	for _, st := range list.Policies {
		resp.Policies = append(resp.Policies, &policyv1.StoredPolicy{Policy: st.Policy, Revision: st.Revision})
	}
	for _, ke := range list.Unreadable {
		resp.Errors = append(resp.Errors, &policyv1.KeyError{Key: ke.Key, Revision: ke.Revision, Reason: ke.Reason})
	}
	return resp, nil
}

// DeletePolicy removes a stored policy. It is refused with
// FailedPrecondition when another stored policy routes to one of its
// subsets, unless req.Force.
func (s *Server) DeletePolicy(ctx context.Context, req *policyv1.DeletePolicyRequest) (*policyv1.DeletePolicyResponse, error) {
	service := req.GetService()
	if err := requireService(service); err != nil {
		return nil, err
	}
	var broken []policy.BrokenRoute
	_, err := s.store.Apply(ctx, store.Change{Service: service, Expected: req.ExpectedRevision, Check: func(v *store.View) error {
		broken = policy.BrokenBy(viewPolicies(v), service, nil)
		return s.dependents("delete", service, broken, req.GetForce())
	}})
	if err != nil {
		return nil, s.storeError(ctx, "delete", service, err)
	}
	s.logForced("policy deleted", service, 0, broken, ctx)
	s.logger.Info("policy deleted", "service", service, "peer", peerAddr(ctx))
	return &policyv1.DeletePolicyResponse{BrokenDependents: brokenProto(broken)}, nil
}

// dependents refuses a change that breaks routes of other policies, unless
// forced.
func (s *Server) dependents(op, service string, broken []policy.BrokenRoute, force bool) error {
	if len(broken) == 0 || force {
		return nil
	}
	pf := &errdetails.PreconditionFailure{}
	texts := make([]string, 0, len(broken))
	for _, b := range broken {
		pf.Violations = append(pf.Violations, &errdetails.PreconditionFailure_Violation{
			Type:        PreconditionDependents,
			Subject:     b.Service + " " + b.Route,
			Description: b.String(),
		})
		texts = append(texts, b.String())
	}
	st := status.New(codes.FailedPrecondition, fmt.Sprintf(
		"%s of the policy of service %q refused: other policies route to what it removes: %s; change them first, or force the %s",
		op, service, strings.Join(texts, "; "), op))
	if withDetails, err := st.WithDetails(pf); err == nil {
		st = withDetails
	}
	return st.Err()
}

// logForced logs a forced change that broke routes of other policies.
func (s *Server) logForced(what, service string, rev uint64, broken []policy.BrokenRoute, ctx context.Context) {
	if len(broken) == 0 {
		return
	}
	texts := make([]string, 0, len(broken))
	for _, b := range broken {
		texts = append(texts, b.String())
	}
	s.logger.Warn(what+" by force, breaking routes of other policies: their calls go elsewhere until they are fixed",
		"service", service, "revision", rev, "broken", texts, "peer", peerAddr(ctx))
}

func brokenProto(broken []policy.BrokenRoute) []*policyv1.BrokenDependency {
	var out []*policyv1.BrokenDependency
	for _, b := range broken {
		out = append(out, &policyv1.BrokenDependency{Service: b.Service, Route: b.Route, DestinationService: b.DestinationService, DestinationSubset: b.DestinationSubset})
	}
	return out
}

func viewPolicies(v *store.View) map[string]*policyv1.ServicePolicy {
	out := make(map[string]*policyv1.ServicePolicy, len(v.Policies))
	for service, st := range v.Policies {
		out[service] = st.Policy
	}
	return out
}

// checkSize refuses a policy whose stored form exceeds the store's limit,
// before Consul is called.
func checkSize(p *policyv1.ServicePolicy) error {
	value, err := store.Encode(p)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "policy: %v", err)
	}
	if len(value) > store.MaxValueBytes {
		return tooLarge(p.GetService(), len(value))
	}
	return nil
}

func tooLarge(service string, size int) error {
	msg := fmt.Sprintf("policy for service %q is %d bytes once stored; the limit is %d bytes (%d KiB)", service, size, store.MaxValueBytes, store.MaxValueBytes>>10)
	if size <= 0 {
		msg = fmt.Sprintf("policy for service %q refused by Consul as too large; the limit is %d bytes (%d KiB)", service, store.MaxValueBytes, store.MaxValueBytes>>10)
	}
	st := status.New(codes.InvalidArgument, msg)
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: "policy", Description: msg},
	}}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// ValidatePolicy validates a policy as PutPolicy does, without storing it.
func (s *Server) ValidatePolicy(ctx context.Context, req *policyv1.ValidatePolicyRequest) (*policyv1.ValidatePolicyResponse, error) {
	_, warnings, err := s.validate(ctx, req.GetPolicy())
	if err != nil {
		return nil, err
	}
	return &policyv1.ValidatePolicyResponse{Warnings: warnings}, nil
}

// normalize returns the canonical form of p, or InvalidArgument when
// there is none.
func (s *Server) normalize(p *policyv1.ServicePolicy) (*policyv1.ServicePolicy, error) {
	if p == nil {
		return nil, invalidArgument("", []policy.Violation{{Description: "required: a ServicePolicy with at least a service"}})
	}
	return policy.Normalize(p), nil
}

// validate normalises p and validates it against the stored policies of
// the services it routes to. It returns the canonical policy, or a status
// error.
func (s *Server) validate(ctx context.Context, p *policyv1.ServicePolicy) (*policyv1.ServicePolicy, []string, error) {
	p, err := s.normalize(p)
	if err != nil {
		return nil, nil, err
	}
	others := map[string]*policyv1.ServicePolicy{}
	for _, service := range policy.ReferencedServices(p) {
		st, err := s.store.Get(ctx, service)
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalidValue):
			// An unreadable policy defines nothing.
		case err != nil:
			return nil, nil, s.storeError(ctx, "validate: read the policy of destination", service, err)
		default:
			others[service] = st.Policy
		}
	}
	warnings, err := s.validateWith(p, others)
	return p, warnings, err
}

// validateIn validates p against the policies of a store view.
func (s *Server) validateIn(p *policyv1.ServicePolicy, v *store.View) ([]string, error) {
	return s.validateWith(p, viewPolicies(v))
}

// validateWith validates p against others, the policies of other services
// by service; with others nil, p alone (nothing is checked that needs
// another policy or the catalog).
func (s *Server) validateWith(p *policyv1.ServicePolicy, others map[string]*policyv1.ServicePolicy) ([]string, error) {
	env := policy.Env{}
	if others != nil {
		env = policy.Env{
			KnownService: s.known,
			PolicyOf: func(service string) *policyv1.ServicePolicy {
				if service == p.GetService() {
					return nil
				}
				return others[service]
			},
		}
	}
	warnings, err := policy.Validate(p, env)
	if err != nil {
		var ve *policy.ValidationError
		if errors.As(err, &ve) {
			return nil, invalidArgument(p.GetService(), ve.Violations)
		}
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return warnings, nil
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
	var (
		conflict *store.ConflictError
		corrupt  *store.CorruptError
		large    *store.TooLargeError
	)
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
	case status.Code(err) != codes.Unknown:
		return err // a refusal of the write's check
	case errors.As(err, &corrupt):
		s.logger.Error("stored policy cannot be read", "op", op, "key", corrupt.Key, "revision", corrupt.Revision, "reason", corrupt.Reason)
		return status.Errorf(codes.DataLoss, "key %q (revision %d) does not hold the policy of service %q: %s; fix it by putting a policy for the service, or delete it",
			corrupt.Key, corrupt.Revision, service, corrupt.Reason)
	case errors.As(err, &large):
		return tooLarge(large.Service, large.Size)
	case errors.Is(err, store.ErrTooLarge):
		return tooLarge(service, 0)
	case errors.Is(err, store.ErrPermissionDenied):
		s.logger.Error("Consul's ACLs deny the policy store; the server's Consul token needs key:read and key:write on the policy prefix", "op", op, "service", service, "error", err)
		return status.Errorf(codes.PermissionDenied, "policyapi: %s: the trellis server's Consul token may not do this (it needs key:read and key:write on the policy prefix): %v", op, err)
	case errors.Is(err, store.ErrUnavailable):
		s.logger.Warn("policy store unavailable", "op", op, "service", service, "error", err)
		return status.Errorf(codes.Unavailable, "policyapi: %s: %v", op, err)
	default:
		s.logger.Error("policy store failed", "op", op, "service", service, "error", err)
		return status.Errorf(codes.Internal, "policyapi: %s: %v", op, err)
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
