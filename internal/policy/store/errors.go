package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
)

// Classes of failed Consul requests, matched (errors.Is) by the errors of
// Store's methods.
var (
	// ErrPermissionDenied: Consul's ACLs refuse the request (HTTP 403, or
	// a transaction operation refused with "Permission denied"): the token
	// lacks a permission, or is unknown ("ACL not found").
	ErrPermissionDenied = errors.New("Consul's ACLs deny the request")
	// ErrTooLarge: the value is larger than MaxValueBytes, or Consul
	// refused it as too large.
	ErrTooLarge = errors.New("policy too large")
	// ErrUnavailable: Consul did not answer (connection refused or reset,
	// timeout), has no leader, limits this client's rate (429) or answered
	// 502, 503 or 504. Retrying later may succeed.
	ErrUnavailable = errors.New("Consul unavailable")
)

// MaxValueBytes bounds the stored form of a policy (Encode). Consul limits
// a value to 512 KiB and a transaction request, in which values travel
// base64-encoded, to 512 KiB as well (txn_max_req_len); 256 KiB leaves room
// for both.
const MaxValueBytes = 256 << 10

// TooLargeError is a write refused because the policy's stored form
// exceeds MaxValueBytes. It matches ErrTooLarge.
type TooLargeError struct {
	Service string
	// Size is the length of the stored form, in bytes.
	Size int
	// Limit is MaxValueBytes.
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("store: the policy of service %q is %d bytes once stored, more than the limit of %d bytes (%d KiB)",
		e.Service, e.Size, e.Limit, e.Limit>>10)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// ConsulError is a failed Consul request. It matches its Class (one of
// ErrPermissionDenied, ErrTooLarge, ErrUnavailable, or nil for any other
// answer) and unwraps to the underlying error.
type ConsulError struct {
	// Op is what was attempted: "get", "list", "put", "delete".
	Op string
	// Key is the key or prefix concerned.
	Key string
	// Class is the failure's class, nil when it is none of the above.
	Class error
	// Err is the underlying error.
	Err error
}

func (e *ConsulError) Error() string {
	if e.Class != nil {
		return fmt.Sprintf("store: %s %q: %v: %v", e.Op, e.Key, e.Class, e.Err)
	}
	return fmt.Sprintf("store: %s %q: %v", e.Op, e.Key, e.Err)
}

// Unwrap returns the class and the underlying error.
func (e *ConsulError) Unwrap() []error {
	if e.Class == nil {
		return []error{e.Err}
	}
	return []error{e.Class, e.Err}
}

// consulError classifies err, the failure of a request to Consul.
func consulError(op, key string, err error) error {
	return &ConsulError{Op: op, Key: key, Class: classify(err), Err: err}
}

// classify returns the class of a failed Consul request, nil when it is
// none of the classes.
func classify(err error) error {
	var se consulapi.StatusError
	if errors.As(err, &se) {
		return classifyAnswer(se.Code, se.Body)
	}
	msg := err.Error()
	// consul/api reports some answers as plain errors: the transaction
	// endpoint as "Failed request: <body>", others as "Unexpected response
	// code: <code> (<body>)".
	var code int
	if i := strings.Index(msg, "Unexpected response code: "); i >= 0 {
		if _, serr := fmt.Sscanf(msg[i:], "Unexpected response code: %d", &code); serr == nil {
			return classifyAnswer(code, msg)
		}
	}
	if strings.Contains(msg, "Failed request: ") {
		return classifyAnswer(0, msg)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne),
		strings.Contains(msg, "connection refused"), strings.Contains(msg, "connection reset"),
		strings.Contains(msg, "EOF"), strings.Contains(msg, "no such host"), strings.Contains(msg, "broken pipe"):
		return ErrUnavailable
	}
	return nil
}

// classifyAnswer classifies an answer of Consul by its status code (0:
// unknown) and body.
func classifyAnswer(code int, body string) error {
	lower := strings.ToLower(body)
	switch {
	case code == 403, strings.Contains(lower, "permission denied"), strings.Contains(lower, "lacks permission"),
		strings.Contains(lower, "acl not found"):
		return ErrPermissionDenied
	case code == 413, strings.Contains(lower, "too large"), strings.Contains(lower, "exceeds"):
		return ErrTooLarge
	case code == 429, code == 502, code == 503, code == 504, strings.Contains(lower, "no cluster leader"),
		strings.Contains(lower, "rate limit"):
		return ErrUnavailable
	}
	return nil
}

// txnError is the error of a transaction Consul refused (HTTP 409) for
// another reason than a check-and-set index, or nil when every operation
// error is about an index.
func txnError(op, key string, resp *consulapi.TxnResponse) error {
	if resp == nil || len(resp.Errors) == 0 {
		return nil
	}
	var msgs []string
	var class error
	for _, e := range resp.Errors {
		lower := strings.ToLower(e.What)
		if strings.Contains(lower, "index") {
			continue // a check-and-set lost to another writer
		}
		msgs = append(msgs, e.What)
		if c := classifyAnswer(0, e.What); c != nil {
			class = c
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return &ConsulError{Op: op, Key: key, Class: class, Err: fmt.Errorf("transaction refused: %s", strings.Join(msgs, "; "))}
}
