// Package store keeps service policies in Consul's key/value store, so that
// every stateless Trellis replica applies the same policy.
//
// Each policy is one key, <prefix><service>, whose value is the protojson
// encoding of a trellis.policy.v1.ServicePolicy. A policy's revision is its
// key's ModifyIndex. Every write is a check-and-set on that index: a write
// that names the revision it read fails with a *ConflictError when someone
// else wrote in between, and an unconditional write is a check-and-set loop
// on the current index, so concurrent writers never lose an update unnoticed.
//
// The Watcher follows the prefix with blocking queries and publishes
// immutable snapshots of the valid policies; a value that cannot be decoded
// or fails validation is reported and ignored, and the service keeps its
// last good policy.
//
// This package knows Consul and the policy model. It must not import the
// catalog, translation, the xDS server or anything under cmd/.
package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/protobuf/encoding/protojson"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// DefaultPrefix is the key prefix policies are stored under.
const DefaultPrefix = "trellis/policies/"

// maxPutAttempts bounds the check-and-set loop of an unconditional write.
// Each failed attempt means another writer succeeded, so progress is made
// even when this write gives up.
const maxPutAttempts = 32

// ErrNotFound is returned (wrapped) when a service has no stored policy.
var ErrNotFound = errors.New("policy not found")

// ErrInvalidValue is matched (errors.Is) by the error of Get and List when a
// stored value is not a policy.
var ErrInvalidValue = errors.New("stored value is not a valid policy")

// ErrConflict is matched (errors.Is) by every *ConflictError.
var ErrConflict = errors.New("revision conflict")

// ConflictError reports a conditional write refused because the stored
// policy is not at the expected revision.
type ConflictError struct {
	// Service is the policy's service.
	Service string
	// Expected is the revision the writer expected (0: no policy).
	Expected uint64
	// Current is the stored revision (0: no policy is stored).
	Current uint64
}

func (e *ConflictError) Error() string {
	want := fmt.Sprintf("revision %d", e.Expected)
	if e.Expected == 0 {
		want = "no policy"
	}
	have := fmt.Sprintf("is at revision %d", e.Current)
	if e.Current == 0 {
		have = "does not exist"
	}
	return fmt.Sprintf("store: policy %q %s, expected %s", e.Service, have, want)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Config configures a Store.
type Config struct {
	// Client is the Consul API client. Required.
	Client *consulapi.Client
	// Prefix is the key prefix policies are stored under; a trailing "/"
	// is added when missing and a leading "/" removed.
	// Default: "trellis/policies/".
	Prefix string
}

// Stored is a policy with its revision.
type Stored struct {
	Policy *policyv1.ServicePolicy
	// Revision is the ModifyIndex of the policy's key.
	Revision uint64
}

// Store reads and writes policies. It is safe for concurrent use.
type Store struct {
	client *consulapi.Client
	prefix string
}

// New returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil {
		return nil, errors.New("store: Config.Client is required")
	}
	prefix, err := normalizePrefix(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	return &Store{client: cfg.Client, prefix: prefix}, nil
}

func normalizePrefix(p string) (string, error) {
	if p == "" {
		return DefaultPrefix, nil
	}
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return "", errors.New("store: the policy prefix must not be the root of the key/value store")
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, nil
}

// Prefix returns the key prefix, ending in "/".
func (s *Store) Prefix() string { return s.prefix }

// Key returns the key of a service's policy.
func (s *Store) Key(service string) string { return s.prefix + service }

// checkService refuses service names that cannot be a single key under the
// prefix. Which names are valid services is the policy validation's
// business; this only keeps keys inside the prefix.
func checkService(service string) error {
	switch {
	case service == "":
		return errors.New("store: the service name is empty")
	case strings.Contains(service, "/"):
		return fmt.Errorf("store: service name %q contains '/'", service)
	}
	return nil
}

// Encode returns the stored form of a policy.
func Encode(p *policyv1.ServicePolicy) ([]byte, error) {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("store: encode policy %q: %w", p.GetService(), err)
	}
	return b, nil
}

// Decode parses a stored value. Unknown fields are refused, so that a typo
// in a value written by hand is not silently dropped.
// The error matches ErrInvalidValue.
func Decode(b []byte) (*policyv1.ServicePolicy, error) {
	p, err := decode(b)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return p, nil
}

// decode is Decode with an error that is not prefixed.
func decode(b []byte) (*policyv1.ServicePolicy, error) {
	p := &policyv1.ServicePolicy{}
	if err := protojson.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	return p, nil
}

// Put stores p under its service's key and returns the new revision.
//
// With expected set, the write only happens when the stored policy is at
// *expected (0: when no policy exists); otherwise it returns a
// *ConflictError carrying the current revision. With expected nil, the write
// replaces whatever is stored, still as a check-and-set on the index it read
// last, retried when another writer got in between.
func (s *Store) Put(ctx context.Context, p *policyv1.ServicePolicy, expected *uint64) (uint64, error) {
	if p == nil {
		return 0, errors.New("store: put: nil policy")
	}
	service := p.GetService()
	if err := checkService(service); err != nil {
		return 0, err
	}
	value, err := Encode(p)
	if err != nil {
		return 0, err
	}
	if expected != nil {
		return s.cas(ctx, service, value, *expected)
	}
	for attempt := 0; attempt < maxPutAttempts; attempt++ {
		current, err := s.revision(ctx, service)
		if err != nil {
			return 0, err
		}
		rev, err := s.cas(ctx, service, value, current)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return rev, err
	}
	return 0, fmt.Errorf("store: put %q: gave up after %d concurrent writes got in first", service, maxPutAttempts)
}

// cas writes value if the key's ModifyIndex is index (0: if it does not
// exist) and returns the new ModifyIndex.
func (s *Store) cas(ctx context.Context, service string, value []byte, index uint64) (uint64, error) {
	key := s.Key(service)
	ops := consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: value, Index: index}}}
	ok, resp, _, err := s.client.Txn().Txn(ops, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("store: put %q: %w", key, err)
	}
	if !ok {
		return 0, s.conflict(ctx, service, index, resp)
	}
	if len(resp.Results) != 1 || resp.Results[0].KV == nil {
		return 0, fmt.Errorf("store: put %q: Consul returned %d results, want 1", key, len(resp.Results))
	}
	return resp.Results[0].KV.ModifyIndex, nil
}

// conflict builds the error for a refused check-and-set on service.
func (s *Store) conflict(ctx context.Context, service string, expected uint64, resp *consulapi.TxnResponse) error {
	current, err := s.revision(ctx, service)
	if err != nil {
		return fmt.Errorf("store: %q: write refused (%s), then: %w", service, txnErrors(resp), err)
	}
	if current == expected {
		// Refused for another reason than the index.
		return fmt.Errorf("store: %q: write refused: %s", service, txnErrors(resp))
	}
	return &ConflictError{Service: service, Expected: expected, Current: current}
}

func txnErrors(resp *consulapi.TxnResponse) string {
	if resp == nil || len(resp.Errors) == 0 {
		return "no reason given"
	}
	msgs := make([]string, 0, len(resp.Errors))
	for _, e := range resp.Errors {
		msgs = append(msgs, e.What)
	}
	return strings.Join(msgs, "; ")
}

// revision returns the ModifyIndex of service's key, 0 when it does not
// exist.
func (s *Store) revision(ctx context.Context, service string) (uint64, error) {
	key := s.Key(service)
	pair, _, err := s.client.KV().Get(key, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("store: get %q: %w", key, err)
	}
	if pair == nil {
		return 0, nil
	}
	return pair.ModifyIndex, nil
}

// Get returns a service's policy. A missing policy is an error matching
// ErrNotFound.
func (s *Store) Get(ctx context.Context, service string) (*Stored, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	key := s.Key(service)
	pair, _, err := s.client.KV().Get(key, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("store: get %q: %w", key, err)
	}
	if pair == nil {
		return nil, fmt.Errorf("store: %q: %w", service, ErrNotFound)
	}
	p, err := decode(pair.Value)
	if err != nil {
		return nil, fmt.Errorf("store: key %q: %w", key, err)
	}
	return &Stored{Policy: p, Revision: pair.ModifyIndex}, nil
}

// List returns every stored policy, sorted by service. It fails when a
// value cannot be decoded; the Watcher is the tolerant reader.
func (s *Store) List(ctx context.Context) ([]*Stored, error) {
	pairs, _, err := s.client.KV().List(s.prefix, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("store: list %q: %w", s.prefix, err)
	}
	out := make([]*Stored, 0, len(pairs))
	for _, pair := range pairs {
		p, err := decode(pair.Value)
		if err != nil {
			return nil, fmt.Errorf("store: key %q: %w", pair.Key, err)
		}
		out = append(out, &Stored{Policy: p, Revision: pair.ModifyIndex})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Policy.GetService() < out[j].Policy.GetService() })
	return out, nil
}

// Delete removes a service's policy. With expected set, it only does so when
// the policy is at revision *expected, and returns a *ConflictError
// otherwise. Deleting a missing policy is an error matching ErrNotFound.
func (s *Store) Delete(ctx context.Context, service string, expected *uint64) error {
	if err := checkService(service); err != nil {
		return err
	}
	for attempt := 0; attempt < maxPutAttempts; attempt++ {
		current, err := s.revision(ctx, service)
		if err != nil {
			return err
		}
		if current == 0 {
			return fmt.Errorf("store: %q: %w", service, ErrNotFound)
		}
		index := current
		if expected != nil {
			if *expected != current {
				return &ConflictError{Service: service, Expected: *expected, Current: current}
			}
			index = *expected
		}
		key := s.Key(service)
		ops := consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDeleteCAS, Key: key, Index: index}}}
		ok, _, _, err := s.client.Txn().Txn(ops, (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("store: delete %q: %w", key, err)
		}
		if ok {
			return nil
		}
		// Another writer got in between: look again.
	}
	return fmt.Errorf("store: delete %q: gave up after %d concurrent writes got in first", service, maxPutAttempts)
}
