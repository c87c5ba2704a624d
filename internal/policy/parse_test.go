package policy_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func TestParseDocuments(t *testing.T) {
	retry := func(on ...string) *policyv1.RouteSettings {
		return &policyv1.RouteSettings{Retry: &policyv1.RetryPolicy{RetryOn: on, NumRetries: 2}}
	}
	tests := []struct {
		name string
		in   string
		want []*policyv1.ServicePolicy
	}{
		{name: "empty input", in: "", want: nil},
		{name: "only comments and separators", in: "# nothing\n---\n\n---\n# still nothing\n...\n", want: nil},
		{name: "one document", in: "service: echo\n", want: []*policyv1.ServicePolicy{{Service: "echo"}}},
		{
			name: "several documents, empty ones skipped",
			in: `---
# first
service: a
---
---   # an empty one
service: b
...
service: c
`,
			want: []*policyv1.ServicePolicy{{Service: "a"}, {Service: "b"}, {Service: "c"}},
		},
		{name: "content on the separator line", in: "--- {service: a}\n--- {service: b}\n",
			want: []*policyv1.ServicePolicy{{Service: "a"}, {Service: "b"}}},
		{name: "CRLF line ends and BOM", in: "\xef\xbb\xbfservice: a\r\n---\r\nservice: b\r\n",
			want: []*policyv1.ServicePolicy{{Service: "a"}, {Service: "b"}}},
		{
			name: "snake_case and lowerCamelCase names",
			in: `
service: echo
defaults:
  retry: {retry_on: [UNAVAILABLE], num_retries: 2}
---
service: echo2
defaults:
  retry: {retryOn: [UNAVAILABLE], numRetries: 2}
`,
			want: []*policyv1.ServicePolicy{
				{Service: "echo", Defaults: retry("UNAVAILABLE")},
				{Service: "echo2", Defaults: retry("UNAVAILABLE")},
			},
		},
		{
			name: "JSON",
			in:   `{"service": "echo", "loadBalancing": {"ringHash": {"minimumRingSize": "1024", "maximum_ring_size": 4096}}, "routes": [{"destination": {"subset": "v1"}}]}`,
			want: []*policyv1.ServicePolicy{{
				Service:       "echo",
				LoadBalancing: &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RingHash{RingHash: &policyv1.RingHash{MinimumRingSize: 1024, MaximumRingSize: 4096}}},
				Routes:        []*policyv1.Route{{Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Subset: "v1"}}}},
			}},
		},
		{
			name: "durations in Go and protojson notation",
			in: `
service: echo
defaults: {timeout: 1m30s}
routes:
  - settings: {timeout: 250ms}
  - settings: {timeout: 0.5s}
  - settings: {timeout: "2s"}
  - settings: {timeout: 1h}
  - settings: {timeout: 1.000000001s}
  - settings: {timeout: 1500us}
`,
			want: []*policyv1.ServicePolicy{{
				Service:  "echo",
				Defaults: &policyv1.RouteSettings{Timeout: durationpb.New(90 * time.Second)},
				Routes: []*policyv1.Route{
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(250 * time.Millisecond)}},
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(500 * time.Millisecond)}},
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(2 * time.Second)}},
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(time.Hour)}},
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(time.Second + 1)}},
					{Settings: &policyv1.RouteSettings{Timeout: durationpb.New(1500 * time.Microsecond)}},
				},
			}},
		},
		{
			name: "nulls leave fields unset",
			in:   "service: echo\ndefaults:\nload_balancing: null\n",
			want: []*policyv1.ServicePolicy{{Service: "echo"}},
		},
		{
			name: "oneof with false and empty values",
			in: `
service: echo
routes:
  - match: {headers: [{name: x-a, present: false}, {name: x-b, exact: ""}]}
`,
			want: []*policyv1.ServicePolicy{{
				Service: "echo",
				Routes: []*policyv1.Route{{Match: &policyv1.RouteMatch{Headers: []*policyv1.HeaderMatch{
					{Name: "x-a", Match: &policyv1.HeaderMatch_Present{Present: false}},
					{Name: "x-b", Match: &policyv1.HeaderMatch_Exact{Exact: ""}},
				}}}},
			}},
		},
		{
			name: "map of strings",
			in:   "service: echo\nsubsets: [{name: v1, meta: {version: v1, \"zone-a\": \"1\"}}]\n",
			want: []*policyv1.ServicePolicy{{
				Service: "echo",
				Subsets: []*policyv1.Subset{{Name: "v1", Meta: map[string]string{"version": "v1", "zone-a": "1"}}},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.ParseDocuments(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseDocuments: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("ParseDocuments (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseDocumentsErrors(t *testing.T) {
	type problem struct {
		index, line    int
		service, field string
		desc           string
	}
	tests := []struct {
		name string
		in   string
		want []problem
	}{
		{
			name: "unknown field in the second document",
			in: `service: a
---
# the second policy
service: b
routes:
  - settings:
      retry: {retryOnn: [UNAVAILABLE]}
`,
			want: []problem{{2, 4, "b", "routes[0].settings.retry.retryOnn", "unknown field; RetryPolicy has: retry_on, num_retries, base_interval, max_interval"}},
		},
		{
			name: "unknown top-level fields, all reported",
			in:   "service: a\nroute: []\nsubset: []\n",
			want: []problem{
				{1, 1, "a", "route", "unknown field; ServicePolicy has: service, subsets, routes"},
				{1, 1, "a", "subset", "unknown field"},
			},
		},
		{
			name: "index counts only non-empty documents",
			in:   "---\n# empty\n---\nservice: a\n---\nservice: b\nbogus: 1\n",
			want: []problem{{2, 6, "b", "bogus", "unknown field"}},
		},
		{
			name: "integer expected",
			in:   "service: a\ndefaults: {retry: {retry_on: [UNAVAILABLE], num_retries: two}}\n",
			want: []problem{{1, 1, "a", "defaults.retry.num_retries", `expected an integer from 0 to 4294967295, got "two"`}},
		},
		{
			name: "negative integer",
			in:   "service: a\ncircuit_breaker: {max_requests: -1}\n",
			want: []problem{{1, 1, "a", "circuit_breaker.max_requests", "expected an integer from 0 to 4294967295, got -1"}},
		},
		{
			name: "integer too large",
			in:   "service: a\ncircuit_breaker: {max_requests: 4294967296}\n",
			want: []problem{{1, 1, "a", "circuit_breaker.max_requests", "got 4294967296"}},
		},
		{
			name: "fractional integer",
			in:   "service: a\ncircuit_breaker: {max_requests: 1.5}\n",
			want: []problem{{1, 1, "a", "circuit_breaker.max_requests", "expected an integer"}},
		},
		{
			name: "YAML boolean where a string is expected",
			in:   "service: a\nroutes: [{match: {headers: [{name: x-canary, exact: yes}]}}]\n",
			want: []problem{{1, 1, "a", "routes[0].match.headers[0].exact", "expected a string, got true; quote the value"}},
		},
		{
			name: "boolean expected",
			in:   "service: a\nroutes: [{match: {ignore_case: sometimes}}]\n",
			want: []problem{{1, 1, "a", "routes[0].match.ignore_case", `expected true or false, got "sometimes"`}},
		},
		{
			name: "number expected",
			in:   "service: a\nload_balancing: {weighted_round_robin: {error_utilization_penalty: high}}\n",
			want: []problem{{1, 1, "a", "load_balancing.weighted_round_robin.error_utilization_penalty", "expected a number"}},
		},
		{
			name: "duration without unit",
			in:   "service: a\ndefaults: {timeout: 5}\n",
			want: []problem{{1, 1, "a", "defaults.timeout", `expected a duration such as "250ms", "1.5s" or "1m", got 5`}},
		},
		{
			name: "duration with unknown unit",
			in:   "service: a\ndefaults: {timeout: 2d}\n",
			want: []problem{{1, 1, "a", "defaults.timeout", `"2d" is not a duration`}},
		},
		{
			name: "list expected",
			in:   "service: a\nroutes: {name: x}\n",
			want: []problem{{1, 1, "a", "routes", "expected a list, got a mapping"}},
		},
		{
			name: "mapping expected",
			in:   "service: a\ndefaults: fast\n",
			want: []problem{{1, 1, "a", "defaults", `expected a mapping (RouteSettings), got "fast"`}},
		},
		{
			name: "null list entry",
			in:   "service: a\nroutes: [~]\n",
			want: []problem{{1, 1, "a", "routes[0]", "null is not a value"}},
		},
		{
			name: "oneof set twice",
			in:   "service: a\nroutes:\n  - destination: {subset: v1}\n    split: {destinations: []}\n",
			want: []problem{{1, 1, "a", "routes[0].split", "destination and split exclude each other: set only one of destination, split"}},
		},
		{
			name: "field set under both names",
			in:   "service: a\ncircuit_breaker: {max_requests: 1, maxRequests: 2}\n",
			want: []problem{{1, 1, "a", "circuit_breaker.max_requests", "set twice"}},
		},
		{
			name: "duplicate YAML key",
			in:   "service: a\nservice: b\n",
			want: []problem{{1, 1, "", "", "invalid YAML"}},
		},
		{
			name: "YAML syntax error with input line",
			in:   "service: a\n---\n# comment\nservice: b\nroutes:\n\t- name: x\n",
			want: []problem{{2, 4, "", "", "line 6: found character that cannot start any token"}},
		},
		{
			name: "document not a mapping",
			in:   "- service: a\n",
			want: []problem{{1, 1, "", "", "a policy document is a mapping (a ServicePolicy, with at least a service), not a list"}},
		},
		{
			name: "scalar document",
			in:   "service: a\n---\njust text\n",
			want: []problem{{2, 3, "", "", `not "just text"`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.ParseDocuments(strings.NewReader(tt.in))
			if got != nil {
				t.Errorf("ParseDocuments returned %d policies with an error, want none", len(got))
			}
			var pe *policy.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("ParseDocuments error = %v, want a *ParseError", err)
			}
			if len(pe.Documents) != len(tt.want) {
				t.Fatalf("got %d problems, want %d: %v", len(pe.Documents), len(tt.want), err)
			}
			for i, w := range tt.want {
				g := pe.Documents[i]
				if g.Index != w.index || g.Line != w.line || g.Service != w.service || g.Field != w.field || !strings.Contains(g.Description, w.desc) {
					t.Errorf("problem %d = %+v, want index %d, line %d, service %q, field %q, description containing %q",
						i, *g, w.index, w.line, w.service, w.field, w.desc)
				}
			}
			if !strings.HasPrefix(err.Error(), "policy: document ") {
				t.Errorf("Error() = %q", err)
			}
		})
	}
}

func TestParseDocumentsTooLarge(t *testing.T) {
	in := bytes.NewReader(append([]byte("service: a\n"), bytes.Repeat([]byte("#"), policy.MaxInputBytes)...))
	if _, err := policy.ParseDocuments(in); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ParseDocuments = %v, want a size error", err)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseDocumentsReadError(t *testing.T) {
	if _, err := policy.ParseDocuments(failingReader{}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("ParseDocuments = %v, want the read error", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	p := mustParse(t, fullPolicy)
	for _, format := range []string{"yaml", "json"} {
		t.Run(format, func(t *testing.T) {
			out, err := policy.Marshal(p, format)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if !strings.HasPrefix(string(out), map[string]string{"yaml": "service: echo\nsubsets:\n", "json": "{\n  \"service\": \"echo\",\n  \"subsets\": ["}[format]) {
				t.Errorf("Marshal output does not start with the service, then subsets:\n%s", out)
			}
			if !strings.Contains(string(out), "method_exact") {
				t.Errorf("Marshal output lacks .proto field names:\n%s", out)
			}
			back, err := policy.ParseDocuments(bytes.NewReader(out))
			if err != nil {
				t.Fatalf("ParseDocuments(Marshal): %v\n%s", err, out)
			}
			if len(back) != 1 {
				t.Fatalf("ParseDocuments(Marshal) = %d policies", len(back))
			}
			if diff := cmp.Diff(p, back[0], protocmp.Transform()); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMarshalUnknownFormat(t *testing.T) {
	if _, err := policy.Marshal(&policyv1.ServicePolicy{Service: "a"}, "xml"); err == nil || !strings.Contains(err.Error(), "use yaml or json") {
		t.Fatalf("Marshal(xml) = %v, want an error naming the formats", err)
	}
}

func TestParseDocumentsInvalidUTF8(t *testing.T) {
	_, err := policy.ParseDocuments(strings.NewReader("service: echo\nroutes:\n- name: \"caf\xe9\"\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("ParseDocuments of invalid UTF-8: err = %v, want the line and UTF-8", err)
	}
}
