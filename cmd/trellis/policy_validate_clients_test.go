package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestPolicyValidateWarnsAboutImplementations: a policy using a feature
// grpc-js-xds or C-core cannot honour is valid, with a warning naming the
// implementation and what it gets instead.
func TestPolicyValidateWarnsAboutImplementations(t *testing.T) {
	var out bytes.Buffer
	in := strings.NewReader("service: echo\nload_balancing:\n  least_request: {choice_count: 2}\n")
	if err := runPolicyValidate(context.Background(), in, &out, []string{"-"}, false); err != nil {
		t.Fatalf("validate: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"warning: <stdin>: document 1 (service echo): load_balancing.least_request: grpc-js-xds 1.14 clients get round robin instead",
		"warning: <stdin>: document 1 (service echo): load_balancing.least_request: gRPC C-core 1.51 (Python, C++, Ruby, PHP) clients get round robin instead",
		"1 policy valid",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
