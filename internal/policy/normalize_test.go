package policy_test

import (
	"errors"
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func TestParseCode(t *testing.T) {
	tests := []struct {
		in     string
		want   codes.Code
		wantOK bool
	}{
		{"UNAVAILABLE", codes.Unavailable, true},
		{"unavailable", codes.Unavailable, true},
		{"deadline-exceeded", codes.DeadlineExceeded, true},
		{"Deadline_Exceeded", codes.DeadlineExceeded, true},
		{" resource-exhausted ", codes.ResourceExhausted, true},
		{"CANCELLED", codes.Canceled, true},
		{"canceled", codes.Canceled, true},
		{"ok", codes.OK, true},
		{"unauthenticated", codes.Unauthenticated, true},
		{"14", 0, false},
		{"DEADLINEEXCEEDED", 0, false},
		{"", 0, false},
		{"5xx", 0, false},
	}
	for _, tt := range tests {
		got, ok := policy.ParseCode(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseCode(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestCodeName(t *testing.T) {
	tests := map[codes.Code]string{
		codes.OK:               "OK",
		codes.Canceled:         "CANCELLED",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.Unauthenticated:  "UNAUTHENTICATED",
	}
	for c, want := range tests {
		if got := policy.CodeName(c); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", c, got, want)
		}
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if back, ok := policy.ParseCode(policy.CodeName(c)); !ok || back != c {
			t.Errorf("ParseCode(CodeName(%v)) = %v, %v", c, back, ok)
		}
	}
}

func TestNormalize(t *testing.T) {
	settings := func(retryOn []string, abort string) *policyv1.RouteSettings {
		return &policyv1.RouteSettings{
			Retry: &policyv1.RetryPolicy{RetryOn: retryOn, NumRetries: 1},
			Fault: &policyv1.FaultInjection{Abort: &policyv1.FaultAbort{Code: abort, Percent: 1}},
		}
	}
	in := &policyv1.ServicePolicy{
		Service:  "echo",
		Defaults: settings([]string{"unavailable", "canceled", "Unavailable", "deadline-exceeded"}, "permission-denied"),
		Routes: []*policyv1.Route{
			{Settings: settings([]string{"bogus", "internal", "RESOURCE-EXHAUSTED", "also bogus"}, "nope")},
			{},
			{Settings: &policyv1.RouteSettings{}},
		},
	}
	want := &policyv1.ServicePolicy{
		Service:  "echo",
		Defaults: settings([]string{"CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}, "PERMISSION_DENIED"),
		Routes: []*policyv1.Route{
			{Settings: settings([]string{"RESOURCE_EXHAUSTED", "INTERNAL", "bogus", "also bogus"}, "nope")},
			{},
			{Settings: &policyv1.RouteSettings{}},
		},
	}
	before := proto.Clone(in)
	got := policy.Normalize(in)
	if !proto.Equal(got, want) {
		t.Errorf("Normalize =\n%v\nwant\n%v", got, want)
	}
	if !proto.Equal(in, before) {
		t.Error("Normalize modified its input")
	}
	if again := policy.Normalize(got); !proto.Equal(again, got) {
		t.Errorf("Normalize is not idempotent:\n%v\nthen\n%v", got, again)
	}
	if policy.Normalize(nil) != nil {
		t.Error("Normalize(nil) != nil")
	}
}

// Validate gives the same verdict before and after Normalize.
func TestNormalizeKeepsVerdict(t *testing.T) {
	for _, doc := range []string{
		fullPolicy,
		"service: echo\ndefaults: {retry: {retry_on: [Unavailable, nope], num_retries: 1}}\n",
		"service: echo\ndefaults: {fault: {abort: {code: ok, percent: 5}}}\n",
		"service: echo\ndefaults: {retry: {retry_on: [not_found, canceled], num_retries: 1}}\n",
	} {
		p := mustParse(t, doc)
		w1, err1 := policy.Validate(p, testEnv(t))
		w2, err2 := policy.Validate(policy.Normalize(p), testEnv(t))
		if !reflect.DeepEqual(w1, w2) {
			t.Errorf("warnings differ: %q vs %q", w1, w2)
		}
		var v1, v2 *policy.ValidationError
		errors.As(err1, &v1)
		errors.As(err2, &v2)
		if (v1 == nil) != (v2 == nil) || (v1 != nil && len(v1.Violations) != len(v2.Violations)) {
			t.Errorf("verdict differs for %q: %v vs %v", doc, err1, err2)
		}
	}
}

func TestReferencedServices(t *testing.T) {
	p := mustParse(t, `
service: echo
routes:
  - destination: {service: zeta, subset: a}
  - destination: {service: echo, subset: b}
  - split:
      destinations:
        - {destination: {service: alpha}, weight: 1}
        - {destination: {service: zeta}, weight: 1}
        - {destination: {}, weight: 1}
        - {weight: 1}
  - {}
`)
	got := policy.ReferencedServices(p)
	want := []string{"alpha", "zeta"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReferencedServices = %q, want %q", got, want)
	}
	if got := policy.ReferencedServices(&policyv1.ServicePolicy{Service: "echo"}); len(got) != 0 {
		t.Errorf("ReferencedServices(no routes) = %q, want none", got)
	}
}
