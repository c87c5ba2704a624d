package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// withSubset is a policy of service defining subset.
func withSubset(service, subset string) *policyv1.ServicePolicy {
	p := testPolicy(service)
	p.Subsets = []*policyv1.Subset{{Name: subset, Tags: []string{subset}}}
	return p
}

// routingTo is a policy of service with one route to dest's subset.
func routingTo(service, dest, subset string) *policyv1.ServicePolicy {
	p := testPolicy(service, "canary")
	p.Routes[0].Action = &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: dest, Subset: subset}}
	return p
}

func TestListAndGetReportUnreadableKeys(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	ctx := testContext(t)
	s := newStore(t, client, "test/unreadable")

	if _, err := s.Put(ctx, testPolicy("echo"), nil); err != nil {
		t.Fatal(err)
	}
	billing, err := store.Encode(testPolicy("billing"))
	if err != nil {
		t.Fatal(err)
	}
	for key, value := range map[string]string{
		"test/unreadable/broken":        "{not json",
		"test/unreadable/wrong":         string(billing),
		"test/unreadable/nested/policy": string(billing),
		"test/unreadable/folder/":       "",
	} {
		if _, err := client.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
			t.Fatal(err)
		}
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list.Policies) != 1 || list.Policies[0].Policy.GetService() != "echo" {
		t.Errorf("List policies = %v, want only echo", list.Policies)
	}
	want := map[string]string{
		"test/unreadable/broken":        "stored value is not a valid policy",
		"test/unreadable/nested/policy": "nested key",
		"test/unreadable/wrong":         `the key names service "wrong" but the policy is for service "billing"`,
	}
	if len(list.Unreadable) != len(want) {
		t.Errorf("List unreadable = %+v, want the keys %v", list.Unreadable, want)
	}
	for i, ke := range list.Unreadable {
		if i > 0 && list.Unreadable[i-1].Key >= ke.Key {
			t.Errorf("unreadable keys not sorted: %q before %q", list.Unreadable[i-1].Key, ke.Key)
		}
		if !strings.Contains(ke.Reason, want[ke.Key]) || ke.Revision == 0 {
			t.Errorf("unreadable %q: reason %q revision %d, want a reason containing %q and a revision", ke.Key, ke.Reason, ke.Revision, want[ke.Key])
		}
	}

	_, err = s.Get(ctx, "broken")
	var corrupt *store.CorruptError
	if !errors.As(err, &corrupt) || !errors.Is(err, store.ErrInvalidValue) {
		t.Fatalf("Get of a corrupt key: err = %v, want a *CorruptError", err)
	}
	if corrupt.Key != "test/unreadable/broken" || corrupt.Revision == 0 || !strings.Contains(err.Error(), "test/unreadable/broken") {
		t.Errorf("CorruptError = %+v (%v), want the key and its revision", corrupt, err)
	}
	if _, err := s.Get(ctx, "wrong"); !errors.As(err, &corrupt) {
		t.Errorf("Get of a key holding another service's policy: err = %v, want a *CorruptError", err)
	}

	// A corrupt key can be replaced and deleted.
	if _, err := s.Put(ctx, testPolicy("broken"), nil); err != nil {
		t.Errorf("Put over a corrupt key: %v", err)
	}
	if err := s.Delete(ctx, "wrong", nil); err != nil {
		t.Errorf("Delete of a corrupt key: %v", err)
	}
}

func TestApplyCheckSeesEveryPolicy(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")

	if _, err := s.Put(ctx, withSubset("dep", "s1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, routingTo("src", "dep", "s1"), nil); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("refused by the check")
	var seen *store.View
	_, err := s.Apply(ctx, store.Change{Service: "dep", Check: func(v *store.View) error {
		seen = v
		return refused
	}})
	if !errors.Is(err, refused) {
		t.Fatalf("Apply with a refusing check: err = %v, want the check's error", err)
	}
	if seen == nil || len(seen.Policies) != 2 || seen.Policies["src"] == nil || seen.Policies["dep"] == nil || seen.Index == 0 {
		t.Fatalf("the check saw %+v, want dep and src at an index", seen)
	}
	if _, err := s.Get(ctx, "dep"); err != nil {
		t.Errorf("a refused delete deleted: Get(dep) = %v", err)
	}
}

// TestApplyCheckIsNotRacy makes a dependent policy land between the check
// of a delete and its commit: the delete must be checked again, against
// the new dependent, instead of committing what was checked without it.
func TestApplyCheckIsNotRacy(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	ctx := testContext(t)
	s := newStore(t, agent.Client(t), "")
	other := newStore(t, agent.Client(t), "") // a second writer, e.g. another replica

	if _, err := s.Put(ctx, withSubset("dep", "s1"), nil); err != nil {
		t.Fatal(err)
	}
	// dependents is the check: refuse when a stored policy routes to dep.
	dependents := func(v *store.View) error {
		for service, st := range v.Policies {
			for _, r := range st.Policy.GetRoutes() {
				if r.GetDestination().GetService() == "dep" {
					return errors.New(service + " routes to dep")
				}
			}
		}
		return nil
	}
	checks := 0
	_, err := s.Apply(ctx, store.Change{Service: "dep", Check: func(v *store.View) error {
		checks++
		if checks == 1 {
			// The first check passes; before the delete commits, another
			// writer stores a policy routing to dep (itself checked that
			// dep defines s1).
			if err := dependents(v); err != nil {
				t.Errorf("first check: %v, want no dependent yet", err)
			}
			_, err := other.Apply(ctx, store.Change{Service: "src", Policy: routingTo("src", "dep", "s1"), Check: func(v *store.View) error {
				if v.Policies["dep"] == nil {
					return errors.New("dep has no policy")
				}
				return nil
			}})
			if err != nil {
				t.Errorf("concurrent write of src: %v", err)
			}
			return nil
		}
		return dependents(v)
	}})
	if err == nil || err.Error() != "src routes to dep" {
		t.Fatalf("delete of dep with src written between check and commit: err = %v, want the check's refusal naming src", err)
	}
	if checks != 2 {
		t.Errorf("the check ran %d times, want 2 (once more after the concurrent write)", checks)
	}
	if _, err := s.Get(ctx, "dep"); err != nil {
		t.Errorf("dep was deleted although src depends on it: Get(dep) = %v", err)
	}
}

func TestTooLargeIsRefusedBeforeConsul(t *testing.T) {
	// Nothing listens there: a request would fail as unavailable.
	client, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, client, "")
	p := testPolicy("echo")
	for len(p.Routes) < 3000 {
		p.Routes = append(p.Routes, route(strings.Repeat("m", 100)))
	}
	_, err = s.Put(context.Background(), p, nil)
	var tooLarge *store.TooLargeError
	if !errors.As(err, &tooLarge) || !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("Put of a large policy: err = %v, want a *TooLargeError", err)
	}
	if tooLarge.Limit != store.MaxValueBytes || tooLarge.Size <= store.MaxValueBytes || !strings.Contains(err.Error(), "262144") {
		t.Errorf("TooLargeError = %+v (%v), want the size and the limit", tooLarge, err)
	}
}

func TestUnreachableConsulIsUnavailable(t *testing.T) {
	client, err := consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, client, "")
	ctx := testContext(t)
	_, getErr := s.Get(ctx, "echo")
	_, listErr := s.List(ctx)
	_, putErr := s.Put(ctx, testPolicy("echo"), nil)
	for name, err := range map[string]error{"Get": getErr, "List": listErr, "Put": putErr, "Delete": s.Delete(ctx, "echo", nil)} {
		var ce *store.ConsulError
		if !errors.Is(err, store.ErrUnavailable) || !errors.As(err, &ce) {
			t.Errorf("%s with Consul unreachable: err = %v, want a *ConsulError matching ErrUnavailable", name, err)
		}
		if errors.Is(err, store.ErrPermissionDenied) || errors.Is(err, store.ErrTooLarge) {
			t.Errorf("%s with Consul unreachable: err = %v matches another class", name, err)
		}
	}
}

// aclHCL enables ACLs in default-deny mode with "root" as the management
// token.
const aclHCL = `acl { enabled = true, default_policy = "deny", tokens { initial_management = "root" } }`

// tokenWith creates a token holding one policy with rules.
func tokenWith(t *testing.T, root *consulapi.Client, name, rules string) string {
	t.Helper()
	pol, _, err := root.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("create ACL policy %s: %v", name, err)
	}
	tok, _, err := root.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	return tok.SecretID
}

func clientWithToken(t *testing.T, agent *consultest.Agent, token string) *consulapi.Client {
	t.Helper()
	c, err := consulapi.NewClient(&consulapi.Config{Address: agent.HTTPAddr(), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestACLDenialIsPermissionDenied(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{HCL: []string{aclHCL}, Token: "root"})
	root := agent.Client(t)
	ctx := testContext(t)
	if _, err := newStore(t, root, "").Put(ctx, withSubset("dep", "s1"), nil); err != nil {
		t.Fatalf("Put with the management token: %v", err)
	}

	readOnly := newStore(t, clientWithToken(t, agent, tokenWith(t, root, "read", `key_prefix "trellis/policies/" { policy = "read" }`)), "")
	if _, err := readOnly.Get(ctx, "dep"); err != nil {
		t.Errorf("Get with key:read: %v", err)
	}
	if list, err := readOnly.List(ctx); err != nil || len(list.Policies) != 1 {
		t.Errorf("List with key:read = %v, %v; want dep", list, err)
	}
	_, putErr := readOnly.Put(ctx, testPolicy("echo"), nil)
	for name, err := range map[string]error{"Put": putErr, "Delete": readOnly.Delete(ctx, "dep", nil)} {
		if !errors.Is(err, store.ErrPermissionDenied) {
			t.Errorf("%s without key:write: err = %v, want ErrPermissionDenied", name, err)
		}
		if errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s without key:write: err = %v matches ErrUnavailable", name, err)
		}
	}

	none := newStore(t, clientWithToken(t, agent, tokenWith(t, root, "other", `key_prefix "elsewhere/" { policy = "write" }`)), "")
	if _, err := none.Get(ctx, "dep"); !errors.Is(err, store.ErrPermissionDenied) {
		t.Errorf("Get without key:read: err = %v, want ErrPermissionDenied", err)
	}
	unknown := newStore(t, clientWithToken(t, agent, "00000000-0000-0000-0000-000000000001"), "")
	if _, err := unknown.Get(ctx, "dep"); !errors.Is(err, store.ErrPermissionDenied) {
		t.Errorf("Get with an unknown token: err = %v, want ErrPermissionDenied", err)
	}
	if _, err := newStore(t, root, "").Get(ctx, "dep"); err != nil {
		t.Errorf("the refused writes changed dep: %v", err)
	}
}
