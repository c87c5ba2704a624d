// Package store keeps service policies in Consul's key/value store, so that
// every stateless Trellis replica applies the same policy.
//
// Each policy is one key, <prefix><service>, whose value is the protojson
// encoding of a trellis.policy.v1.ServicePolicy. A policy's revision is its
// key's ModifyIndex. Every write is a check-and-set on that index: a write
// that names the revision it read fails with a *ConflictError when someone
// else wrote in between, and an unconditional write is a check-and-set loop
// on the current index, so concurrent writers never lose an update unnoticed.
// Every write is also a check-and-set on the prefix key itself, so that a
// write checked against the other stored policies (Change.Check) commits
// only if no policy was written since they were read.
//
// Errors are classified for callers: ErrNotFound, ErrInvalidValue (a stored
// value that is not a policy, *CorruptError), ErrConflict
// (*ConflictError), ErrTooLarge (*TooLargeError, or Consul's own refusal),
// ErrPermissionDenied (Consul's ACLs) and ErrUnavailable (Consul did not
// answer); each Consul failure is a *ConsulError.
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

// Put stores p under its service's key and returns the new revision. It is
// Apply without a check.
func (s *Store) Put(ctx context.Context, p *policyv1.ServicePolicy, expected *uint64) (uint64, error) {
	if p == nil {
		return 0, errors.New("store: put: nil policy")
	}
	return s.Apply(ctx, Change{Service: p.GetService(), Policy: p, Expected: expected})
}

// Delete removes a service's policy. It is Apply without a check.
// Deleting a missing policy is an error matching ErrNotFound.
func (s *Store) Delete(ctx context.Context, service string, expected *uint64) error {
	_, err := s.Apply(ctx, Change{Service: service, Expected: expected})
	return err
}

// Change is a write (Policy set) or delete (Policy nil) of one service's
// policy.
type Change struct {
	// Service is the policy's service; for a write, Policy.Service.
	Service string
	// Policy is the new policy; nil deletes the service's policy.
	Policy *policyv1.ServicePolicy
	// Expected, when set, is the revision the stored policy must be at (0:
	// no policy may exist); otherwise Apply returns a *ConflictError.
	// Unset: whatever is stored is replaced (or deleted).
	Expected *uint64
	// Check, when set, decides whether the change may be made, from the
	// stored policies as they are at one Consul index (the changed
	// service's current one included). An error aborts the change and is
	// returned as is. Check may be called more than once, once per attempt,
	// and must not modify the View.
	Check func(*View) error
}

// View is every policy stored under the prefix at one Consul index.
type View struct {
	// Policies are the readable policies, by service.
	Policies map[string]*Stored
	// Unreadable are the keys whose value is not a policy, sorted by key.
	Unreadable []KeyError
	// Index is the Consul index of the read.
	Index uint64

	revisions map[string]uint64 // ModifyIndex by key, unreadable keys included
}

// KeyError is a key under the prefix whose value cannot be read as the
// policy of the service the key names.
type KeyError struct {
	// Key is the full Consul key.
	Key string
	// Revision is the key's ModifyIndex.
	Revision uint64
	// Reason says what is wrong with the value.
	Reason string
}

// Apply makes a change as one Consul transaction, and returns the new
// revision of a written policy (0 for a delete).
//
// Every write through Apply (Put and Delete included) is serialised on the
// prefix key itself (<prefix>, which holds no policy and which the Watcher
// ignores): Apply reads the whole prefix at one index, runs Check on it,
// and commits with a check-and-set on the prefix key's index read then and
// on the changed key's. A write by another Store that got in between makes
// the transaction fail, and Apply starts over with a fresh read and a new
// Check. So what Check accepted is what the change is applied to: a check
// that no other stored policy depends on what the change removes cannot
// be defeated by a concurrent write of a dependent policy.
//
// A policy whose stored form is larger than MaxValueBytes is refused
// before Consul is called, with a *TooLargeError. Consul's failures are
// returned as a *ConsulError carrying their class.
func (s *Store) Apply(ctx context.Context, c Change) (uint64, error) {
	service := c.Service
	if c.Policy != nil && c.Policy.GetService() != service {
		return 0, fmt.Errorf("store: change of %q carries the policy of service %q", service, c.Policy.GetService())
	}
	if err := checkService(service); err != nil {
		return 0, err
	}
	var value []byte
	if c.Policy != nil {
		var err error
		if value, err = Encode(c.Policy); err != nil {
			return 0, err
		}
		if len(value) > MaxValueBytes {
			return 0, &TooLargeError{Service: service, Size: len(value), Limit: MaxValueBytes}
		}
	}
	op := "put"
	if c.Policy == nil {
		op = "delete"
	}
	key := s.Key(service)
	for attempt := 0; attempt < maxPutAttempts; attempt++ {
		view, serial, err := s.read(ctx)
		if err != nil {
			return 0, err
		}
		current := view.revision(key)
		if c.Policy == nil && current == 0 {
			return 0, fmt.Errorf("store: %q: %w", service, ErrNotFound)
		}
		if c.Expected != nil && *c.Expected != current {
			return 0, &ConflictError{Service: service, Expected: *c.Expected, Current: current}
		}
		if c.Check != nil {
			if err := c.Check(view); err != nil {
				return 0, err
			}
		}
		ops := consulapi.TxnOps{{KV: &consulapi.KVTxnOp{
			Verb: consulapi.KVCAS, Key: s.prefix, Index: serial,
			Value: []byte("Trellis policy writes: last " + op + " " + service),
		}}}
		if c.Policy != nil {
			ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: value, Index: current}})
		} else {
			ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDeleteCAS, Key: key, Index: current}})
		}
		ok, resp, _, err := s.client.Txn().Txn(ops, (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return 0, consulError(op, key, err)
		}
		if !ok {
			if terr := txnError(op, key, resp); terr != nil {
				return 0, terr
			}
			continue // another write got in between: read again
		}
		if c.Policy == nil {
			return 0, nil
		}
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.Key == key {
				return r.KV.ModifyIndex, nil
			}
		}
		return 0, fmt.Errorf("store: %s %q: Consul's answer lacks the written key", op, key)
	}
	return 0, fmt.Errorf("store: %s %q: gave up after %d concurrent writes got in first", op, key, maxPutAttempts)
}

// read lists the prefix at one index and returns the view and the prefix
// key's ModifyIndex (0: it does not exist).
func (s *Store) read(ctx context.Context) (*View, uint64, error) {
	pairs, meta, err := s.client.KV().List(s.prefix, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, 0, consulError("list", s.prefix, err)
	}
	view := &View{Policies: map[string]*Stored{}, Index: meta.LastIndex, revisions: map[string]uint64{}}
	var serial uint64
	for _, pair := range pairs {
		if pair.Key == s.prefix {
			serial = pair.ModifyIndex
			continue
		}
		service := strings.TrimPrefix(pair.Key, s.prefix)
		if strings.HasSuffix(service, "/") {
			continue // a "folder", as Consul's UI creates them
		}
		view.revisions[pair.Key] = pair.ModifyIndex
		p, err := s.decodePair(pair)
		if err != nil {
			view.Unreadable = append(view.Unreadable, KeyError{Key: pair.Key, Revision: pair.ModifyIndex, Reason: err.Error()})
			continue
		}
		view.Policies[service] = &Stored{Policy: p, Revision: pair.ModifyIndex}
	}
	sort.Slice(view.Unreadable, func(i, j int) bool { return view.Unreadable[i].Key < view.Unreadable[j].Key })
	return view, serial, nil
}

// decodePair decodes the policy stored under pair.Key, which must be the
// key of the policy's service. The error matches ErrInvalidValue.
func (s *Store) decodePair(pair *consulapi.KVPair) (*policyv1.ServicePolicy, error) {
	service := strings.TrimPrefix(pair.Key, s.prefix)
	if strings.Contains(service, "/") {
		return nil, fmt.Errorf("%w: nested key: a policy is stored as %s<service>", ErrInvalidValue, s.prefix)
	}
	p, err := decode(pair.Value)
	if err != nil {
		return nil, err
	}
	if p.GetService() != service {
		return nil, fmt.Errorf("%w: the key names service %q but the policy is for service %q", ErrInvalidValue, service, p.GetService())
	}
	return p, nil
}

// revision returns the ModifyIndex of key in the view, 0 when it does not
// exist.
func (v *View) revision(key string) uint64 { return v.revisions[key] }

// Get returns a service's policy. A missing policy is an error matching
// ErrNotFound; a stored value that is not the service's policy is a
// *CorruptError.
func (s *Store) Get(ctx context.Context, service string) (*Stored, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	key := s.Key(service)
	pair, _, err := s.client.KV().Get(key, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, consulError("get", key, err)
	}
	if pair == nil {
		return nil, fmt.Errorf("store: %q: %w", service, ErrNotFound)
	}
	p, err := s.decodePair(pair)
	if err != nil {
		return nil, &CorruptError{KeyError: KeyError{Key: key, Revision: pair.ModifyIndex, Reason: err.Error()}}
	}
	return &Stored{Policy: p, Revision: pair.ModifyIndex}, nil
}

// CorruptError is a stored value that cannot be read as the policy of the
// service its key names. It matches ErrInvalidValue.
type CorruptError struct {
	KeyError
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("store: key %q (revision %d): %s", e.Key, e.Revision, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidValue) true.
func (e *CorruptError) Is(target error) bool { return target == ErrInvalidValue }

// Listing is the content of the prefix.
type Listing struct {
	// Policies are the readable policies, sorted by service.
	Policies []*Stored
	// Unreadable are the keys whose value is not a policy, sorted by key.
	Unreadable []KeyError
}

// List returns every readable stored policy, and the keys whose value
// cannot be read.
func (s *Store) List(ctx context.Context) (*Listing, error) {
	view, _, err := s.read(ctx)
	if err != nil {
		return nil, err
	}
	out := &Listing{Policies: make([]*Stored, 0, len(view.Policies)), Unreadable: view.Unreadable}
	for _, st := range view.Policies {
		out.Policies = append(out.Policies, st)
	}
	sort.Slice(out.Policies, func(i, j int) bool { return out.Policies[i].Policy.GetService() < out.Policies[j].Policy.GetService() })
	return out, nil
}
