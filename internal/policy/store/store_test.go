package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every test's context; generous for a small shared
// machine.
const testTimeout = 60 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newStore(t *testing.T, client *consulapi.Client, prefix string) *store.Store {
	t.Helper()
	s, err := store.New(store.Config{Client: client, Prefix: prefix})
	if err != nil {
		t.Fatalf("store.New: %v", err)
	}
	return s
}

func testPolicy(service string, routes ...string) *policyv1.ServicePolicy {
	p := &policyv1.ServicePolicy{
		Service: service,
		Defaults: &policyv1.RouteSettings{
			Timeout: durationpb.New(2 * time.Second),
		},
	}
	for _, name := range routes {
		p.Routes = append(p.Routes, route(name))
	}
	return p
}

func route(name string) *policyv1.Route {
	return &policyv1.Route{
		Name:   name,
		Match:  &policyv1.RouteMatch{Method: &policyv1.RouteMatch_MethodExact{MethodExact: "/echo.v1.Echo/" + name}},
		Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{}},
	}
}

func ptr[T any](v T) *T { return &v }

func TestNewPrefix(t *testing.T) {
	client, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		prefix  string
		want    string
		wantErr bool
	}{
		{name: "default", prefix: "", want: "trellis/policies/"},
		{name: "trailing slash added", prefix: "mesh/p", want: "mesh/p/"},
		{name: "leading slash removed", prefix: "/mesh/p/", want: "mesh/p/"},
		{name: "root refused", prefix: "/", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.New(store.Config{Client: client, Prefix: tt.prefix})
			if tt.wantErr {
				if err == nil {
					t.Fatalf("New(%q) succeeded with prefix %q, want an error", tt.prefix, s.Prefix())
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q): %v", tt.prefix, err)
			}
			if got := s.Prefix(); got != tt.want {
				t.Errorf("Prefix() = %q, want %q", got, tt.want)
			}
			if got, want := s.Key("echo"), tt.want+"echo"; got != want {
				t.Errorf("Key(echo) = %q, want %q", got, want)
			}
		})
	}
	if _, err := store.New(store.Config{}); err == nil {
		t.Error("New without a client succeeded, want an error")
	}
}

func TestRoundTrip(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	ctx := testContext(t)
	s := newStore(t, client, "test/roundtrip")

	if _, err := s.Get(ctx, "echo"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get of a missing policy: err = %v, want ErrNotFound", err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list.Policies) != 0 || len(list.Unreadable) != 0 {
		t.Fatalf("List of an empty prefix = %v, %v; want nothing", list, err)
	}

	policies := []*policyv1.ServicePolicy{testPolicy("echo", "a", "b"), testPolicy("billing"), testPolicy("auth", "x")}
	revs := map[string]uint64{}
	for _, p := range policies {
		rev, err := s.Put(ctx, p, nil)
		if err != nil {
			t.Fatalf("Put(%s): %v", p.Service, err)
		}
		if rev == 0 {
			t.Fatalf("Put(%s) returned revision 0", p.Service)
		}
		revs[p.Service] = rev
	}

	// The revision is the key's ModifyIndex, and the value is protojson.
	pair, _, err := client.KV().Get("test/roundtrip/echo", nil)
	if err != nil || pair == nil {
		t.Fatalf("raw Get: %v, %v", pair, err)
	}
	if pair.ModifyIndex != revs["echo"] {
		t.Errorf("revision %d, key ModifyIndex %d", revs["echo"], pair.ModifyIndex)
	}
	raw, err := store.Decode(pair.Value)
	if err != nil {
		t.Fatalf("stored value is not protojson: %v\n%s", err, pair.Value)
	}
	if !proto.Equal(raw, policies[0]) {
		t.Errorf("stored value = %v, want %v", raw, policies[0])
	}

	for _, p := range policies {
		got, err := s.Get(ctx, p.Service)
		if err != nil {
			t.Fatalf("Get(%s): %v", p.Service, err)
		}
		if !proto.Equal(got.Policy, p) || got.Revision != revs[p.Service] {
			t.Errorf("Get(%s) = %v @%d, want %v @%d", p.Service, got.Policy, got.Revision, p, revs[p.Service])
		}
	}

	list, err = s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var names []string
	for _, st := range list.Policies {
		names = append(names, st.Policy.Service)
		if st.Revision != revs[st.Policy.Service] {
			t.Errorf("List: %s at revision %d, want %d", st.Policy.Service, st.Revision, revs[st.Policy.Service])
		}
	}
	if fmt.Sprint(names) != "[auth billing echo]" {
		t.Errorf("List services = %v, want [auth billing echo] (sorted)", names)
	}

	if err := s.Delete(ctx, "billing", nil); err != nil {
		t.Fatalf("Delete(billing): %v", err)
	}
	if _, err := s.Get(ctx, "billing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "billing", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Delete: err = %v, want ErrNotFound", err)
	}
}

func TestBadServiceNames(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")
	for _, name := range []string{"", "a/b", "../x"} {
		if _, err := s.Put(ctx, testPolicy(name), nil); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", name)
		}
		if _, err := s.Get(ctx, name); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(%q): err = %v, want a refusal", name, err)
		}
		if err := s.Delete(ctx, name, nil); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Delete(%q): err = %v, want a refusal", name, err)
		}
	}
	if _, err := s.Put(ctx, nil, nil); err == nil {
		t.Error("Put(nil) succeeded, want an error")
	}
}

func TestCheckAndSet(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")

	// Create only.
	rev1, err := s.Put(ctx, testPolicy("echo", "v1"), ptr[uint64](0))
	if err != nil {
		t.Fatalf("create-only Put of a new policy: %v", err)
	}
	rev2, err := s.Put(ctx, testPolicy("echo", "v2"), &rev1)
	if err != nil {
		t.Fatalf("Put at the current revision: %v", err)
	}
	if rev2 <= rev1 {
		t.Fatalf("revision went from %d to %d, want it to grow", rev1, rev2)
	}

	tests := []struct {
		name     string
		expected uint64
	}{
		{name: "create-only on an existing policy", expected: 0},
		{name: "stale revision", expected: rev1},
		{name: "future revision", expected: rev2 + 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Put(ctx, testPolicy("echo", "refused"), &tt.expected)
			var conflict *store.ConflictError
			if !errors.As(err, &conflict) {
				t.Fatalf("Put: err = %v, want a *ConflictError", err)
			}
			if !errors.Is(err, store.ErrConflict) {
				t.Errorf("errors.Is(%v, ErrConflict) = false", err)
			}
			if conflict.Current != rev2 || conflict.Expected != tt.expected || conflict.Service != "echo" {
				t.Errorf("conflict = %+v, want current %d, expected %d, service echo", conflict, rev2, tt.expected)
			}
			got, err := s.Get(ctx, "echo")
			if err != nil {
				t.Fatal(err)
			}
			if got.Revision != rev2 || got.Policy.Routes[0].Name != "v2" {
				t.Errorf("after a refused Put: %v @%d, want route v2 @%d", got.Policy, got.Revision, rev2)
			}
		})
	}

	// A conditional write on a missing policy reports revision 0.
	_, err = s.Put(ctx, testPolicy("ghost"), &rev1)
	var conflict *store.ConflictError
	if !errors.As(err, &conflict) || conflict.Current != 0 {
		t.Errorf("Put on a missing policy at revision %d: err = %v, want a conflict with current 0", rev1, err)
	}

	// Delete with a revision.
	if err := s.Delete(ctx, "echo", &rev1); !errors.As(err, &conflict) || conflict.Current != rev2 {
		t.Errorf("Delete at a stale revision: err = %v, want a conflict with current %d", err, rev2)
	}
	if _, err := s.Get(ctx, "echo"); err != nil {
		t.Errorf("policy gone after a refused Delete: %v", err)
	}
	if err := s.Delete(ctx, "echo", &rev2); err != nil {
		t.Errorf("Delete at the current revision: %v", err)
	}
	if err := s.Delete(ctx, "echo", &rev2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete of a deleted policy: err = %v, want ErrNotFound", err)
	}
}

// TestConcurrentReadModifyWrite runs two writers that each add 50 routes to
// the same policy with read-modify-write cycles, retrying on conflicts: no
// update may be lost.
func TestConcurrentReadModifyWrite(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")
	if _, err := s.Put(ctx, testPolicy("echo"), ptr[uint64](0)); err != nil {
		t.Fatal(err)
	}

	const writers, cycles = 2, 50
	var wg sync.WaitGroup
	conflicts := make([]int, writers)
	errs := make([]error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range cycles {
				name := fmt.Sprintf("w%d-%02d", w, i)
				for {
					cur, err := s.Get(ctx, "echo")
					if err != nil {
						errs[w] = err
						return
					}
					p := proto.Clone(cur.Policy).(*policyv1.ServicePolicy)
					p.Routes = append(p.Routes, route(name))
					_, err = s.Put(ctx, p, &cur.Revision)
					if errors.Is(err, store.ErrConflict) {
						conflicts[w]++
						continue
					}
					if err != nil {
						errs[w] = err
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", w, err)
		}
	}
	got, err := s.Get(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range got.Policy.Routes {
		seen[r.Name]++
	}
	for w := range writers {
		for i := range cycles {
			name := fmt.Sprintf("w%d-%02d", w, i)
			if seen[name] != 1 {
				t.Errorf("route %s present %d times, want once", name, seen[name])
			}
		}
	}
	if len(got.Policy.Routes) != writers*cycles {
		t.Errorf("%d routes, want %d", len(got.Policy.Routes), writers*cycles)
	}
	t.Logf("conflicts retried: %v", conflicts)
}

// TestConcurrentUnconditionalPut checks that unconditional writes racing on
// one key all succeed, each with its own revision.
func TestConcurrentUnconditionalPut(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")

	const writers, puts = 4, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	revs := map[uint64]bool{}
	errs := make(chan error, writers*puts)
	for w := range writers {
		wg.Go(func() {
			for i := range puts {
				rev, err := s.Put(ctx, testPolicy("echo", fmt.Sprintf("w%d-%d", w, i)), nil)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				revs[rev] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unconditional Put: %v", err)
	}
	if len(revs) != writers*puts {
		t.Errorf("%d distinct revisions, want %d", len(revs), writers*puts)
	}
}
