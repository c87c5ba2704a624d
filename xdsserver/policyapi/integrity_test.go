package policyapi_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newLoggedFixture is newFixture with the server's log in a buffer and the
// store on client.
func newLoggedFixture(t *testing.T, client *consulapi.Client) (*fixture, *syncBuffer) {
	t.Helper()
	st, err := store.New(store.Config{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := policyapi.BearerToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{
		Store:          st,
		Authenticators: []policyapi.Authenticator{auth},
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, gs, "grpc")
	return &fixture{store: st, client: policyv1.NewPolicyServiceClient(conn), conn: conn}, logs
}

// webPolicy routes web's calls to subset v2 of echo.
func webPolicy() *policyv1.ServicePolicy {
	return &policyv1.ServicePolicy{Service: "web", Routes: []*policyv1.Route{{
		Name:   "to-echo-v2",
		Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: "echo", Subset: "v2"}},
	}}}
}

func preconditionSubjects(t *testing.T, err error) []string {
	t.Helper()
	var subjects []string
	for _, d := range status.Convert(err).Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.Violations {
				if v.Type != policyapi.PreconditionDependents {
					t.Errorf("violation type %q, want %q", v.Type, policyapi.PreconditionDependents)
				}
				subjects = append(subjects, v.Subject)
			}
		}
	}
	return subjects
}

func TestChangesBreakingOtherPoliciesAreRefused(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f, logs := newLoggedFixture(t, agent.Client(t))
	ctx := withToken(testContext(t), testToken)

	echo, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: webPolicy()}); err != nil {
		t.Fatal(err)
	}
	withoutV2 := &policyv1.ServicePolicy{Service: "echo", Subsets: []*policyv1.Subset{{Name: "v3", Tags: []string{"v3"}}}}

	_, putErr := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: withoutV2})
	_, delErr := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "echo"})
	for name, err := range map[string]error{"PutPolicy without v2": putErr, "DeletePolicy": delErr} {
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s: %v, want FailedPrecondition", name, err)
		}
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, `service "web" routes[0] (to-echo-v2): subset "v2" of service "echo"`) || !strings.Contains(msg, "force") {
			t.Errorf("%s: message %q does not name the dependent route and --force", name, msg)
		}
		if got := preconditionSubjects(t, err); len(got) != 1 || got[0] != "web routes[0] (to-echo-v2)" {
			t.Errorf("%s: PreconditionFailure subjects %v, want [web routes[0] (to-echo-v2)]", name, got)
		}
	}
	if got, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); err != nil || got.Revision != echo.Revision {
		t.Fatalf("after the refusals echo is %v, %v; want revision %d unchanged", got, err, echo.Revision)
	}
	if strings.Contains(logs.String(), "by force") {
		t.Errorf("refused changes logged as forced:\n%s", logs)
	}

	// A change that keeps v2 is fine.
	keeps := echoPolicy()
	keeps.Subsets = append(keeps.Subsets, &policyv1.Subset{Name: "v3", Tags: []string{"v3"}})
	if resp, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: keeps}); err != nil || len(resp.BrokenDependents) != 0 {
		t.Fatalf("PutPolicy keeping v2: %v, %v", resp, err)
	}

	// Forced: done, reported in the response and at WARN.
	resp, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: withoutV2, Force: true})
	if err != nil {
		t.Fatalf("forced PutPolicy: %v", err)
	}
	want := &policyv1.BrokenDependency{Service: "web", Route: "routes[0] (to-echo-v2)", DestinationService: "echo", DestinationSubset: "v2"}
	if len(resp.BrokenDependents) != 1 || !proto.Equal(resp.BrokenDependents[0], want) {
		t.Errorf("forced PutPolicy broken dependents %v, want [%v]", resp.BrokenDependents, want)
	}
	if log := logs.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "policy stored by force") || !strings.Contains(log, "to-echo-v2") {
		t.Errorf("forced write not logged at WARN with the broken route:\n%s", log)
	}
	del, err := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "echo", Force: true})
	if err != nil || len(del.BrokenDependents) != 1 {
		t.Fatalf("forced DeletePolicy: %v, %v; want web's route reported", del, err)
	}
	if !strings.Contains(logs.String(), "policy deleted by force") {
		t.Errorf("forced delete not logged:\n%s", logs)
	}
}

func TestUnreadableKeys(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := agent.Client(t)
	f, _ := newLoggedFixture(t, client)
	ctx := withToken(testContext(t), testToken)
	if _, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.KV().Put(&consulapi.KVPair{Key: store.DefaultPrefix + "garbage", Value: []byte("\x00not a policy")}, nil); err != nil {
		t.Fatal(err)
	}

	list, err := f.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatalf("ListPolicies with a garbage key: %v", err)
	}
	if len(list.Policies) != 1 || list.Policies[0].Policy.GetService() != "echo" {
		t.Errorf("ListPolicies policies = %v, want echo", list.Policies)
	}
	if len(list.Errors) != 1 || list.Errors[0].Key != store.DefaultPrefix+"garbage" || list.Errors[0].Revision == 0 || list.Errors[0].Reason == "" {
		t.Errorf("ListPolicies errors = %v, want the garbage key with its revision and reason", list.Errors)
	}

	_, err = f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "garbage"})
	if status.Code(err) != codes.DataLoss || !strings.Contains(status.Convert(err).Message(), store.DefaultPrefix+"garbage") {
		t.Errorf("GetPolicy of a garbage key: %v, want DataLoss naming the key", err)
	}
	// A policy routing to the garbage key's service cannot use its subsets,
	// and it does not make validation fail otherwise.
	p := webPolicy()
	p.Routes[0].GetDestination().Service = "garbage"
	if _, err := f.client.ValidatePolicy(ctx, &policyv1.ValidatePolicyRequest{Policy: p}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidatePolicy routing to a subset of the garbage key: %v, want InvalidArgument", err)
	}
}

func TestTooLarge(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f, _ := newLoggedFixture(t, agent.Client(t))
	ctx := withToken(testContext(t), testToken)
	p := &policyv1.ServicePolicy{Service: "echo"}
	for i := 0; len(p.Routes) < 4000; i++ {
		p.Routes = append(p.Routes, &policyv1.Route{
			Match: &policyv1.RouteMatch{Method: &policyv1.RouteMatch_MethodExact{MethodExact: "/echo.v1.Echo/M" + strings.Repeat("x", 60) + itoa(uint64(i))}},
		})
	}
	_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: p})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "262144") {
		t.Fatalf("PutPolicy of a policy over the limit: %v, want InvalidArgument with the limit", err)
	}
	if _, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); status.Code(err) != codes.NotFound {
		t.Errorf("the refused policy was stored: %v", err)
	}
}

// rawPut is a PutPolicyRequest whose policy's service is the given bytes,
// encoded by hand: a Go client refuses to encode invalid UTF-8.
func rawPut(service []byte, subsetMetaValue []byte) *emptypb.Empty {
	var pol []byte
	pol = protowire.AppendTag(pol, 1, protowire.BytesType)
	pol = protowire.AppendBytes(pol, service)
	if subsetMetaValue != nil {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, "version")
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, subsetMetaValue)
		var subset []byte
		subset = protowire.AppendTag(subset, 1, protowire.BytesType)
		subset = protowire.AppendString(subset, "v2")
		subset = protowire.AppendTag(subset, 3, protowire.BytesType)
		subset = protowire.AppendBytes(subset, entry)
		for range 2 { // subsets[1] holds the bad value
			pol = protowire.AppendTag(pol, 2, protowire.BytesType)
			pol = protowire.AppendBytes(pol, subset)
			subset = bytes.Replace(subset, []byte("v2"), []byte("v3"), 1)
		}
	}
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, pol)
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(req)
	return m
}

func TestInvalidUTF8IsInvalidArgument(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f, _ := newLoggedFixture(t, agent.Client(t))
	ctx := withToken(testContext(t), testToken)
	invoke := func(ctx context.Context, req *emptypb.Empty) error {
		return f.conn.Invoke(ctx, policyv1.PolicyService_PutPolicy_FullMethodName, req, &policyv1.PutPolicyResponse{})
	}

	// The raw encoding is right: with valid strings, it is stored.
	if err := invoke(ctx, rawPut([]byte("echo"), []byte("v2"))); err != nil {
		t.Fatalf("hand-encoded valid request: %v", err)
	}
	tests := []struct {
		name  string
		req   *emptypb.Empty
		field string
	}{
		{name: "service", req: rawPut([]byte("ech\xff"), nil), field: "policy.service"},
		{name: "map value", req: rawPut([]byte("echo"), []byte("v\xc3")), field: "policy.subsets[0].meta (a value)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := invoke(ctx, tt.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.field+": not valid UTF-8") {
				t.Errorf("PutPolicy with invalid UTF-8: %v, want InvalidArgument naming %s", err, tt.field)
			}
		})
	}
	// Authentication comes first.
	if err := invoke(testContext(t), rawPut([]byte("ech\xff"), nil)); status.Code(err) == codes.InvalidArgument || err == nil {
		t.Errorf("unauthenticated PutPolicy with invalid UTF-8: %v, want the authentication refusal", err)
	}
}

func TestConsulACLDenialIsPermissionDenied(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{
		HCL:   []string{`acl { enabled = true, default_policy = "deny", tokens { initial_management = "root" } }`},
		Token: "root",
	})
	root := agent.Client(t)
	pol, _, err := root.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "read", Rules: `key_prefix "trellis/policies/" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := root.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	readOnly, err := consulapi.NewClient(&consulapi.Config{Address: agent.HTTPAddr(), Token: tok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	f, logs := newLoggedFixture(t, readOnly)
	ctx := withToken(testContext(t), testToken)

	_, err = f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "key:write") {
		t.Errorf("PutPolicy with a token lacking key:write: %v, want PermissionDenied naming key:write", err)
	}
	if _, err := f.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{}); err != nil {
		t.Errorf("ListPolicies with key:read: %v", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("ACL denial not logged as an error:\n%s", logs)
	}
	anonymous, err := consulapi.NewClient(&consulapi.Config{Address: agent.HTTPAddr()})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := newLoggedFixture(t, anonymous)
	if _, err := g.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetPolicy with the anonymous token under default deny: %v, want PermissionDenied", err)
	}
}
