package policyapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DisabledMessage is the error message of every call when no authenticator
// is configured.
const DisabledMessage = "policy API disabled: configure --api-token-file or TRELLIS_API_TOKEN"

// Authenticator decides whether a call may proceed, from its context
// (metadata, peer). It returns nil to accept the call, a status error with
// codes.Unauthenticated when the call carries no credentials of its kind, or
// one with codes.PermissionDenied when it carries credentials of its kind
// that are not accepted.
type Authenticator func(ctx context.Context) error

// BearerToken returns an Authenticator that accepts calls whose
// "authorization" metadata is "Bearer <token>". Tokens are compared in
// constant time. An empty token is refused: the API never opens with one.
func BearerToken(token string) (Authenticator, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("policyapi: empty API token")
	}
	want := sha256.Sum256([]byte(token))
	return func(ctx context.Context) error {
		values := metadata.ValueFromIncomingContext(ctx, "authorization")
		var presented []string
		for _, v := range values {
			// "Bearer" alone is a bearer token left empty.
			scheme, cred, _ := strings.Cut(strings.TrimSpace(v), " ")
			if strings.EqualFold(scheme, "bearer") {
				presented = append(presented, strings.TrimSpace(cred))
			}
		}
		switch len(presented) {
		case 0:
			return status.Error(codes.Unauthenticated, "missing credentials: send the metadata \"authorization: Bearer <token>\"")
		case 1:
		default:
			return status.Error(codes.PermissionDenied, "several bearer tokens sent: send one")
		}
		got := sha256.Sum256([]byte(presented[0]))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			return status.Error(codes.PermissionDenied, "invalid bearer token")
		}
		return nil
	}, nil
}

// ReadTokenFile reads an API token from a file, ignoring surrounding
// whitespace. A file holding no token is an error.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("policyapi: read API token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("policyapi: API token file %s is empty", path)
	}
	return token, nil
}

// authenticate runs the authenticators: the first to accept the call lets
// it through. Otherwise the call is refused with PermissionDenied when some
// authenticator saw credentials it did not accept, and Unauthenticated when
// none saw any. Without authenticators every call is refused.
func authenticate(ctx context.Context, auths []Authenticator) error {
	if len(auths) == 0 {
		return status.Error(codes.PermissionDenied, DisabledMessage)
	}
	var denied, unauthenticated error
	for _, auth := range auths {
		err := auth(ctx)
		if err == nil {
			return nil
		}
		switch status.Code(err) {
		case codes.Unauthenticated:
			if unauthenticated == nil {
				unauthenticated = err
			}
		case codes.PermissionDenied:
			if denied == nil {
				denied = err
			}
		default:
			if denied == nil {
				denied = status.Error(codes.PermissionDenied, err.Error())
			}
		}
	}
	if denied != nil {
		return denied
	}
	return unauthenticated
}

// UnaryInterceptor authenticates every unary call.
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := s.authenticate(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor authenticates every streaming call (server reflection
// among them).
func (s *Server) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := s.authenticate(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

func (s *Server) authenticate(ctx context.Context, method string) error {
	err := authenticate(ctx, s.auths)
	if err != nil {
		s.logger.Info("policy API call refused", "method", method, "peer", peerAddr(ctx), "code", status.Code(err).String(), "reason", status.Convert(err).Message())
	}
	return err
}
