package policyapi_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testTimeout = 60 * time.Second
	testToken   = "s3cret-token"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// transports are the two ways the API is served: through the admin
// listener (HTTP/1.1 + h2c, gRPC by content-type), as trellis server does,
// and on a listener of its own.
var transports = []string{"admin", "grpc"}

// serve serves gs on a loopback listener, through the admin server or
// directly, and returns a client connection. Everything stops when the test
// ends.
func serve(t *testing.T, gs *grpc.Server, transport string) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	switch transport {
	case "admin":
		srv := admin.New(admin.Config{GRPC: gs})
		go func() { done <- srv.Serve(ctx, lis) }()
	case "grpc":
		go func() { done <- gs.Serve(lis) }()
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
		cancel()
		gs.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("server did not stop")
		}
	})
	return conn
}

type fixture struct {
	store  *store.Store
	client policyv1.PolicyServiceClient
	conn   *grpc.ClientConn
}

// newFixture runs the API on a real Consul with the bearer token testToken,
// and services "echo" and "billing" known to the catalog.
func newFixture(t *testing.T, agent *consultest.Agent, transport string, prefix string) *fixture {
	t.Helper()
	st, err := store.New(store.Config{Client: agent.Client(t), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := policyapi.BearerToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{
		Store:          st,
		Authenticators: []policyapi.Authenticator{auth},
		KnownService:   func(s string) bool { return s == "echo" || s == "billing" },
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, gs, transport)
	return &fixture{store: st, client: policyv1.NewPolicyServiceClient(conn), conn: conn}
}

func echoPolicy() *policyv1.ServicePolicy {
	return &policyv1.ServicePolicy{
		Service: "echo",
		Subsets: []*policyv1.Subset{{Name: "v2", Tags: []string{"v2"}}},
		Routes: []*policyv1.Route{{
			Name:   "canary",
			Match:  &policyv1.RouteMatch{Headers: []*policyv1.HeaderMatch{{Name: "x-canary", Match: &policyv1.HeaderMatch_Exact{Exact: "1"}}}},
			Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Subset: "v2"}},
		}},
		Defaults: &policyv1.RouteSettings{
			Timeout: durationpb.New(3 * time.Second),
			Retry:   &policyv1.RetryPolicy{RetryOn: []string{"unavailable", "cancelled"}, NumRetries: 2},
		},
	}
}

// badPolicy has two violations.
func badPolicy() *policyv1.ServicePolicy {
	p := echoPolicy()
	p.Routes[0].Settings = &policyv1.RouteSettings{Retry: &policyv1.RetryPolicy{RetryOn: []string{"UNAVAILABLE"}, NumRetries: 9}}
	p.Routes[0].GetDestination().Subset = "v3"
	return p
}

func TestAuthentication(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			f := newFixture(t, agent, transport, "auth-"+transport)
			tests := []struct {
				name     string
				md       []string
				wantCode codes.Code
				wantMsg  string
			}{
				{name: "no credentials", wantCode: codes.Unauthenticated, wantMsg: "Bearer"},
				{name: "other scheme", md: []string{"authorization", "Basic dXNlcjpwYXNz"}, wantCode: codes.Unauthenticated},
				{name: "wrong token", md: []string{"authorization", "Bearer nope"}, wantCode: codes.PermissionDenied, wantMsg: "invalid bearer token"},
				{name: "token prefix", md: []string{"authorization", "Bearer " + testToken[:4]}, wantCode: codes.PermissionDenied},
				{name: "empty token", md: []string{"authorization", "Bearer "}, wantCode: codes.PermissionDenied},
				{name: "two tokens", md: []string{"authorization", "Bearer " + testToken, "authorization", "Bearer nope"}, wantCode: codes.PermissionDenied},
				{name: "right token", md: []string{"authorization", "Bearer " + testToken}, wantCode: codes.OK},
				{name: "scheme in lower case", md: []string{"authorization", "bearer " + testToken}, wantCode: codes.OK},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					ctx := testContext(t)
					if tt.md != nil {
						ctx = metadata.AppendToOutgoingContext(ctx, tt.md...)
					}
					calls := map[string]func() error{
						"ListPolicies": func() error { _, err := f.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{}); return err },
						"PutPolicy": func() error {
							_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()})
							return err
						},
						"reflection": func() error { _, err := listServices(ctx, f.conn); return err },
					}
					for name, call := range calls {
						err := call()
						if got := status.Code(err); got != tt.wantCode {
							t.Errorf("%s: code %v (%v), want %v", name, got, err, tt.wantCode)
						}
						if tt.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
							t.Errorf("%s: message %q does not mention %q", name, status.Convert(err).Message(), tt.wantMsg)
						}
					}
				})
			}
			// A refused write changes nothing.
			ctx := testContext(t)
			if _, err := f.store.Get(ctx, "auth-never"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("store: %v", err)
			}
		})
	}
}

// listServices lists the services through server reflection.
func listServices(ctx context.Context, conn *grpc.ClientConn) ([]string, error) {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}); err != nil {
		if err == io.EOF {
			_, err = stream.Recv()
		}
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

func TestReflection(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f := newFixture(t, agent, "admin", "")
	names, err := listServices(withToken(testContext(t), testToken), f.conn)
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	if !slices.Contains(names, "trellis.policy.v1.PolicyService") {
		t.Errorf("reflection lists %v, want trellis.policy.v1.PolicyService among them", names)
	}
}

func TestDisabled(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	st, err := store.New(store.Config{Client: agent.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			gs, err := policyapi.NewGRPCServer(policyapi.Config{Store: st})
			if err != nil {
				t.Fatal(err)
			}
			client := policyv1.NewPolicyServiceClient(serve(t, gs, transport))
			for _, token := range []string{"", testToken} {
				ctx := testContext(t)
				if token != "" {
					ctx = withToken(ctx, token)
				}
				_, err := client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()})
				if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != policyapi.DisabledMessage {
					t.Errorf("PutPolicy with token %q: %v, want PermissionDenied %q", token, err, policyapi.DisabledMessage)
				}
				_, err = client.ValidatePolicy(ctx, &policyv1.ValidatePolicyRequest{Policy: echoPolicy()})
				if status.Code(err) != codes.PermissionDenied {
					t.Errorf("ValidatePolicy with token %q: %v, want PermissionDenied", token, err)
				}
			}
			if _, err := st.Get(testContext(t), "echo"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("a policy was stored through a disabled API: %v", err)
			}
		})
	}
}

// TestSecondAuthenticator shows the seam for other authenticators (such as
// SPIFFE mTLS identities): a call is let through by the first that accepts
// it, and refused with PermissionDenied when one saw credentials it refused.
func TestSecondAuthenticator(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	st, err := store.New(store.Config{Client: agent.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	bearer, err := policyapi.BearerToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	identity := func(ctx context.Context) error {
		md, _ := metadata.FromIncomingContext(ctx)
		switch v := md.Get("x-test-identity"); {
		case len(v) == 0:
			return status.Error(codes.Unauthenticated, "no identity")
		case v[0] == "spiffe://example.org/admin":
			return nil
		default:
			return status.Error(codes.PermissionDenied, "identity not allowed")
		}
	}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{Store: st, Authenticators: []policyapi.Authenticator{bearer, identity}})
	if err != nil {
		t.Fatal(err)
	}
	client := policyv1.NewPolicyServiceClient(serve(t, gs, "grpc"))
	tests := []struct {
		name string
		md   []string
		want codes.Code
	}{
		{name: "none", want: codes.Unauthenticated},
		{name: "token", md: []string{"authorization", "Bearer " + testToken}, want: codes.OK},
		{name: "identity", md: []string{"x-test-identity", "spiffe://example.org/admin"}, want: codes.OK},
		{name: "refused identity", md: []string{"x-test-identity", "spiffe://example.org/web"}, want: codes.PermissionDenied},
		{name: "wrong token, good identity", md: []string{"authorization", "Bearer x", "x-test-identity", "spiffe://example.org/admin"}, want: codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			if tt.md != nil {
				ctx = metadata.AppendToOutgoingContext(ctx, tt.md...)
			}
			_, err := client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{})
			if got := status.Code(err); got != tt.want {
				t.Errorf("code %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	if _, err := policyapi.BearerToken(""); err == nil {
		t.Error("BearerToken(\"\") succeeded, want an error")
	}
	if _, err := policyapi.BearerToken(" \n"); err == nil {
		t.Error("BearerToken of whitespace succeeded, want an error")
	}
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string
		wantErr bool
	}{
		{name: "plain", content: "abc", want: "abc"},
		{name: "trailing newline", content: "abc\n", want: "abc"},
		{name: "empty", content: "", wantErr: true},
		{name: "blank", content: " \n\t\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := policyapi.ReadTokenFile(path)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ReadTokenFile = %q, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ReadTokenFile = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := policyapi.ReadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadTokenFile of a missing file succeeded, want an error")
	}
	if _, err := policyapi.New(policyapi.Config{}); err == nil {
		t.Error("New without a store succeeded, want an error")
	}
}

func badRequest(t *testing.T, err error) (*status.Status, []*errdetails.BadRequest_FieldViolation) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code %v (%v), want InvalidArgument", st.Code(), err)
	}
	var out []*errdetails.BadRequest_FieldViolation
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			out = append(out, br.GetFieldViolations()...)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no BadRequest detail in %v", st.Proto())
	}
	return st, out
}

func TestInvalidArgument(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f := newFixture(t, agent, "admin", "")
	ctx := withToken(testContext(t), testToken)

	// A valid policy is stored first: the refused writes below must leave
	// it as it is.
	put, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()})
	if err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}

	wantFields := []string{"policy.routes[0].destination.subset", "policy.routes[0].settings.retry.num_retries"}
	calls := []struct {
		name string
		call func() error
	}{
		{name: "PutPolicy", call: func() error {
			_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: badPolicy()})
			return err
		}},
		{name: "PutPolicy with revision", call: func() error {
			_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: badPolicy(), ExpectedRevision: &put.Revision})
			return err
		}},
		{name: "ValidatePolicy", call: func() error {
			_, err := f.client.ValidatePolicy(ctx, &policyv1.ValidatePolicyRequest{Policy: badPolicy()})
			return err
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			st, violations := badRequest(t, c.call())
			var fields, texts []string
			for _, v := range violations {
				fields = append(fields, v.GetField())
				texts = append(texts, v.GetField()+": "+v.GetDescription())
				if v.GetDescription() == "" {
					t.Errorf("violation of %s has no description", v.GetField())
				}
			}
			if !slices.IsSorted(fields) || !slices.Equal(fields, wantFields) {
				t.Errorf("violations on %v, want %v in field order", fields, wantFields)
			}
			if want := `policy for service "echo" refused: ` + strings.Join(texts, "; "); st.Message() != want {
				t.Errorf("message %q, want %q", st.Message(), want)
			}
		})
	}
	got, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != put.Revision || !proto.Equal(got.Policy, put.Policy) {
		t.Errorf("after refused writes: %v @%d, want the stored policy @%d", got.Policy, got.Revision, put.Revision)
	}

	// Requests missing what they need.
	_, violations := badRequest(t, func() error {
		_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{})
		return err
	}())
	if len(violations) != 1 || violations[0].GetField() != "policy" {
		t.Errorf("PutPolicy without a policy: violations %v, want one on \"policy\"", violations)
	}
	_, violations = badRequest(t, func() error {
		_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: &policyv1.ServicePolicy{}})
		return err
	}())
	if len(violations) != 1 || violations[0].GetField() != "policy.service" {
		t.Errorf("PutPolicy without a service: violations %v, want one on \"policy.service\"", violations)
	}
	for name, call := range map[string]func() error{
		"GetPolicy":    func() error { _, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{}); return err },
		"DeletePolicy": func() error { _, err := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{}); return err },
	} {
		_, violations := badRequest(t, call())
		if len(violations) != 1 || violations[0].GetField() != "service" {
			t.Errorf("%s without a service: violations %v, want one on \"service\"", name, violations)
		}
	}
}

func conflictInfo(t *testing.T, err error) map[string]string {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.Aborted {
		t.Fatalf("code %v (%v), want Aborted", st.Code(), err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == policyapi.ReasonRevisionConflict && info.GetDomain() == policyapi.ErrorDomain {
			return info.GetMetadata()
		}
	}
	t.Fatalf("no ErrorInfo %s in %v", policyapi.ReasonRevisionConflict, st.Proto())
	return nil
}

func TestRoundTrip(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			f := newFixture(t, agent, transport, "roundtrip-"+transport)
			ctx := withToken(testContext(t), testToken)

			if _, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); status.Code(err) != codes.NotFound {
				t.Fatalf("GetPolicy of a missing policy: %v, want NotFound", err)
			}
			list, err := f.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{})
			if err != nil || len(list.GetPolicies()) != 0 {
				t.Fatalf("ListPolicies = %v, %v; want none", list, err)
			}

			// Stored in canonical form, with the revision of the key.
			put, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy(), ExpectedRevision: new(uint64)})
			if err != nil {
				t.Fatalf("PutPolicy: %v", err)
			}
			if got := put.Policy.GetDefaults().GetRetry().GetRetryOn(); !slices.Equal(got, []string{"CANCELLED", "UNAVAILABLE"}) {
				t.Errorf("stored retry_on = %v, want the canonical [CANCELLED UNAVAILABLE]", got)
			}
			if len(put.Warnings) != 0 {
				t.Errorf("warnings %v for a policy of a known service", put.Warnings)
			}
			stored, err := f.store.Get(ctx, "echo")
			if err != nil {
				t.Fatal(err)
			}
			if stored.Revision != put.Revision || !proto.Equal(stored.Policy, put.Policy) {
				t.Errorf("store has %v @%d, PutPolicy returned %v @%d", stored.Policy, stored.Revision, put.Policy, put.Revision)
			}
			got, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"})
			if err != nil {
				t.Fatalf("GetPolicy: %v", err)
			}
			if got.Revision != put.Revision || !proto.Equal(got.Policy, put.Policy) {
				t.Errorf("GetPolicy = %v @%d, want %v @%d", got.Policy, got.Revision, put.Policy, put.Revision)
			}

			// A policy routing to a subset of another service is
			// checked against that service's stored policy, and a
			// service unknown to the catalog is a warning.
			web := &policyv1.ServicePolicy{
				Service: "web",
				Routes: []*policyv1.Route{{
					Name:   "to-echo-v2",
					Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: "echo", Subset: "v2"}},
				}},
			}
			webPut, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: web})
			if err != nil {
				t.Fatalf("PutPolicy(web): %v", err)
			}
			if len(webPut.Warnings) != 1 || !strings.HasPrefix(webPut.Warnings[0], "service:") {
				t.Errorf("warnings = %q, want one about service web not being in the catalog", webPut.Warnings)
			}
			web.Routes[0].GetDestination().Subset = "v9"
			_, violations := badRequest(t, func() error {
				_, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: web})
				return err
			}())
			if len(violations) != 1 || violations[0].GetField() != "policy.routes[0].destination.subset" || !strings.Contains(violations[0].GetDescription(), "v2") {
				t.Errorf("violations = %v, want one on the subset listing echo's subset v2", violations)
			}
			val, err := f.client.ValidatePolicy(ctx, &policyv1.ValidatePolicyRequest{Policy: echoPolicy()})
			if err != nil || len(val.Warnings) != 0 {
				t.Errorf("ValidatePolicy = %v, %v; want no warnings", val, err)
			}

			// Conditional writes.
			next := echoPolicy()
			next.Defaults.Timeout = durationpb.New(5 * time.Second)
			put2, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: next, ExpectedRevision: &put.Revision})
			if err != nil {
				t.Fatalf("PutPolicy at the current revision: %v", err)
			}
			_, err = f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy(), ExpectedRevision: &put.Revision})
			info := conflictInfo(t, err)
			if info["current_revision"] != itoa(put2.Revision) || info["expected_revision"] != itoa(put.Revision) || info["service"] != "echo" {
				t.Errorf("conflict metadata %v, want current %d, expected %d", info, put2.Revision, put.Revision)
			}
			if !strings.Contains(status.Convert(err).Message(), itoa(put2.Revision)) {
				t.Errorf("message %q does not give the current revision %d", status.Convert(err).Message(), put2.Revision)
			}
			_, err = f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy(), ExpectedRevision: new(uint64)})
			if info := conflictInfo(t, err); info["current_revision"] != itoa(put2.Revision) {
				t.Errorf("create-only on an existing policy: metadata %v, want current %d", info, put2.Revision)
			}

			list, err = f.client.ListPolicies(ctx, &policyv1.ListPoliciesRequest{})
			if err != nil {
				t.Fatalf("ListPolicies: %v", err)
			}
			var listed []string
			for _, p := range list.Policies {
				listed = append(listed, p.Policy.GetService()+"@"+itoa(p.Revision))
			}
			if want := []string{"echo@" + itoa(put2.Revision), "web@" + itoa(webPut.Revision)}; !slices.Equal(listed, want) {
				t.Errorf("ListPolicies = %v, want %v", listed, want)
			}

			// Deletes.
			_, err = f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "echo", ExpectedRevision: &put.Revision})
			if info := conflictInfo(t, err); info["current_revision"] != itoa(put2.Revision) {
				t.Errorf("stale delete: metadata %v, want current %d", info, put2.Revision)
			}
			// web routes to echo's subset v2: web goes first.
			if _, err := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "web"}); err != nil {
				t.Fatalf("DeletePolicy(web): %v", err)
			}
			if _, err := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "echo", ExpectedRevision: &put2.Revision}); err != nil {
				t.Fatalf("DeletePolicy: %v", err)
			}
			if _, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); status.Code(err) != codes.NotFound {
				t.Errorf("GetPolicy after delete: %v, want NotFound", err)
			}
			if _, err := f.client.DeletePolicy(ctx, &policyv1.DeletePolicyRequest{Service: "echo"}); status.Code(err) != codes.NotFound {
				t.Errorf("DeletePolicy of a deleted policy: %v, want NotFound", err)
			}
		})
	}
}

// TestConsulDown checks that store failures are Unavailable.
func TestConsulDown(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	f := newFixture(t, agent, "grpc", "")
	agent.Stop(t)
	ctx := withToken(testContext(t), testToken)
	if _, err := f.client.GetPolicy(ctx, &policyv1.GetPolicyRequest{Service: "echo"}); status.Code(err) != codes.Unavailable {
		t.Errorf("GetPolicy with Consul stopped: %v, want Unavailable", err)
	}
	if _, err := f.client.PutPolicy(ctx, &policyv1.PutPolicyRequest{Policy: echoPolicy()}); status.Code(err) != codes.Unavailable {
		t.Errorf("PutPolicy with Consul stopped: %v, want Unavailable", err)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
