package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Kind classifies what a failed Consul request means.
type Kind string

// Kinds of failure, as counted by trellis_consul_errors_total{kind}.
const (
	// KindUnreachable: no answer (connection refused or reset, timeout,
	// DNS failure, a paused Consul).
	KindUnreachable Kind = "unreachable"
	// KindRateLimited: Consul answered 429, for too many concurrent
	// connections from this address (limits.http_max_conns_per_client) or
	// too many requests (rate limiting).
	KindRateLimited Kind = "rate_limited"
	// KindACLNotFound: the token is missing, unknown or expired (403 "ACL
	// not found").
	KindACLNotFound Kind = "acl_not_found"
	// KindPermissionDenied: the token lacks a permission (403).
	KindPermissionDenied Kind = "permission_denied"
	// KindNotReady: Consul answered without a leader or from an empty
	// state while restoring it.
	KindNotReady Kind = "not_ready"
	// KindServer: Consul answered 5xx.
	KindServer Kind = "server_error"
	// KindOther: any other unexpected answer (4xx, malformed body).
	KindOther Kind = "other"
)

// Kinds lists every Kind, for metrics initialisation.
func Kinds() []Kind {
	return []Kind{KindUnreachable, KindRateLimited, KindACLNotFound, KindPermissionDenied, KindNotReady, KindServer, KindOther}
}

// Describe returns a short human explanation of the kind.
func (k Kind) Describe() string {
	switch k {
	case KindUnreachable:
		return "Consul does not answer"
	case KindRateLimited:
		return "Consul refuses requests from this address (HTTP 429: too many connections or requests)"
	case KindACLNotFound:
		return "Consul does not know the ACL token (HTTP 403: missing, unknown or expired token)"
	case KindPermissionDenied:
		return "the ACL token lacks a permission (HTTP 403)"
	case KindNotReady:
		return "Consul is starting (no leader yet)"
	case KindServer:
		return "Consul failed to answer (HTTP 5xx)"
	default:
		return "unexpected answer from Consul"
	}
}

// Error is a classified failure of one watch's query.
type Error struct {
	// Watch names the watch.
	Watch string
	// Kind says what the failure means.
	Kind Kind
	// Err is the underlying error.
	Err error
}

func newError(watch string, err error) *Error {
	return &Error{Watch: watch, Kind: Classify(err), Err: err}
}

// Error renders "watch W: <kind description>: <underlying error>".
func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("watch %s: %s", e.Watch, e.Kind.Describe())
	}
	return fmt.Sprintf("watch %s: %s: %v", e.Watch, e.Kind.Describe(), e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Classify tells what a failed Consul request means.
func Classify(err error) Kind {
	if err == nil {
		return ""
	}
	if errors.Is(err, errNotReady) {
		return KindNotReady
	}
	var se api.StatusError
	if errors.As(err, &se) {
		return classifyStatus(se.Code, se.Body)
	}
	// consul/api reports some answers as plain errors carrying the status
	// line ("Unexpected response code: 403 (ACL not found)").
	msg := err.Error()
	if i := strings.Index(msg, "Unexpected response code: "); i >= 0 {
		var code int
		if _, serr := fmt.Sscanf(msg[i:], "Unexpected response code: %d", &code); serr == nil {
			return classifyStatus(code, msg)
		}
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.As(err, &ne):
		return KindUnreachable
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "connection reset"),
		strings.Contains(msg, "EOF"), strings.Contains(msg, "no such host"), strings.Contains(msg, "broken pipe"):
		return KindUnreachable
	case strings.Contains(msg, "No cluster leader"), strings.Contains(msg, "no cluster leader"):
		return KindNotReady
	}
	return KindOther
}

func classifyStatus(code int, body string) Kind {
	switch {
	case code == 429:
		return KindRateLimited
	case code == 403 && strings.Contains(body, "ACL not found"):
		return KindACLNotFound
	case code == 403:
		return KindPermissionDenied
	case code == 500 && strings.Contains(strings.ToLower(body), "no cluster leader"):
		return KindNotReady
	case code >= 500:
		return KindServer
	default:
		return KindOther
	}
}
