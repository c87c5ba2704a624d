package policy_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// fullPolicy uses every feature that can be combined in one policy; it is
// valid under testEnv, without warnings.
const fullPolicy = `
service: echo
subsets:
  - name: v1
    meta: {version: v1}
  - name: v2
    tags: [canary]
    meta: {version: v2}
routes:
  - name: exact
    match:
      method_exact: /trellis.echo.v1.Echo/Echo
      ignore_case: true
      headers:
        - {name: x-user, exact: alice}
        - {name: x-team, prefix: dev-}
        - {name: x-env, suffix: -prod, invert: true}
        - {name: x-trace, regex: "[0-9a-f]{16}"}
        - {name: x-debug, present: true}
        - {name: content-type, exact: application/grpc}
        - {name: x-empty, exact: ""}
        - {name: x-absent, present: false}
        - {name: x-flag, exact: "on"}
        - {name: x-number, exact: "1024"}
      percent: 50
    destination: {subset: v2}
    settings:
      timeout: 500ms
      retry:
        retry_on: [unavailable, Deadline-Exceeded, CANCELLED, internal, resource_exhausted]
        num_retries: 4
        base_interval: 10ms
        max_interval: 100ms
      fault:
        delay: {fixed_delay: 10ms, percent: 5}
        abort: {code: unavailable, percent: 1}
      hash_policy:
        - {header: x-user, terminal: true}
        - {channel_id: true}
  - name: prefix
    match: {service_prefix: /grpc.health.v1.Health/}
    split:
      destinations:
        - {destination: {subset: v1}, weight: 90}
        - {destination: {subset: v2}, weight: 10}
        - {destination: {service: other, subset: blue}, weight: 0}
        - {weight: 1}
  - name: regex
    match: {method_regex: "/trellis\\.echo\\.v1\\.Echo/.*"}
    destination: {service: other}
  - name: everything-else
defaults:
  timeout: 2s
  retry: {retry_on: [UNAVAILABLE], num_retries: 1}
  hash_policy: [{header: x-session}]
load_balancing:
  ring_hash: {minimum_ring_size: 512, maximum_ring_size: 4096}
circuit_breaker: {max_requests: 500}
outlier_detection:
  interval: 1s
  base_ejection_time: 10s
  max_ejection_time: 1m
  max_ejection_percent: 50
  success_rate: {stdev_factor: 1000, enforcement_percentage: 100, minimum_hosts: 3, request_volume: 10}
  failure_percentage: {threshold: 60, enforcement_percentage: 90, minimum_hosts: 2, request_volume: 5}
failover: {datacenters: [dc2, dc-3_b]}
locality: {min_healthy_percent: 60}
`

// otherPolicy is the stored policy of service "other" in testEnv.
const otherPolicy = `
service: other
subsets:
  - {name: blue, tags: [blue]}
load_balancing: {ring_hash: {}}
`

func mustParse(t *testing.T, doc string) *policyv1.ServicePolicy {
	t.Helper()
	ps, err := policy.ParseDocuments(strings.NewReader(doc))
	if err != nil {
		t.Fatalf("ParseDocuments: %v", err)
	}
	if len(ps) != 1 {
		t.Fatalf("ParseDocuments: %d policies, want 1", len(ps))
	}
	return ps[0]
}

// testEnv knows echo and other; other's policy is otherPolicy.
func testEnv(t *testing.T) policy.Env {
	other := mustParse(t, otherPolicy)
	return policy.Env{
		KnownService: func(name string) bool { return name == "echo" || name == "other" },
		PolicyOf: func(name string) *policyv1.ServicePolicy {
			if name == "other" {
				return other
			}
			return nil
		},
	}
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
func u32(n uint32) *uint32                     { return &n }

// noHash removes every hash policy, so that load balancing can change.
func noHash(p *policyv1.ServicePolicy) {
	p.Defaults.HashPolicy = nil
	for _, r := range p.Routes {
		if r.Settings != nil {
			r.Settings.HashPolicy = nil
		}
	}
}

// Shorthands into fullPolicy.
func exact(p *policyv1.ServicePolicy) *policyv1.Route         { return p.Routes[0] }
func split(p *policyv1.ServicePolicy) *policyv1.WeightedSplit { return p.Routes[1].GetSplit() }
func header(p *policyv1.ServicePolicy, i int) *policyv1.HeaderMatch {
	return p.Routes[0].Match.Headers[i]
}
func retry(p *policyv1.ServicePolicy) *policyv1.RetryPolicy    { return p.Routes[0].Settings.Retry }
func fault(p *policyv1.ServicePolicy) *policyv1.FaultInjection { return p.Routes[0].Settings.Fault }
func outlier(p *policyv1.ServicePolicy) *policyv1.OutlierDetection {
	return p.OutlierDetection
}
func addSubset(p *policyv1.ServicePolicy, s *policyv1.Subset) { p.Subsets = append(p.Subsets, s) }
func setLB(p *policyv1.ServicePolicy, lb *policyv1.LoadBalancing) {
	noHash(p)
	p.LoadBalancing = lb
}
func wrr(p *policyv1.ServicePolicy, w *policyv1.WeightedRoundRobin) {
	setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_WeightedRoundRobin{WeightedRoundRobin: w}})
}
func ringHash(p *policyv1.ServicePolicy, minSize, maxSize uint64) {
	p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RingHash{RingHash: &policyv1.RingHash{MinimumRingSize: minSize, MaximumRingSize: maxSize}}}
}

func TestValidateFullPolicy(t *testing.T) {
	p := mustParse(t, fullPolicy)
	warnings, err := policy.Validate(p, testEnv(t))
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("Validate warnings: %q, want none", warnings)
	}
}

func TestValidateAcceptsVariants(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *policyv1.ServicePolicy)
	}{
		{"minimal", func(p *policyv1.ServicePolicy) { *p = policyv1.ServicePolicy{Service: "echo"} }},
		{"service with dots and underscores", func(p *policyv1.ServicePolicy) {
			*p = policyv1.ServicePolicy{Service: "_billing.v2-api_"}
		}},
		{"round robin", func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RoundRobin{RoundRobin: &policyv1.RoundRobin{}}})
		}},
		{"empty load balancing", func(p *policyv1.ServicePolicy) { setLB(p, &policyv1.LoadBalancing{}) }},
		{"pick first", func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_PickFirst{PickFirst: &policyv1.PickFirst{ShuffleAddressList: true}}})
		}},
		{"least request default", func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{}}})
		}},
		{"least request 10", func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{ChoiceCount: 10}}})
		}},
		{"weighted round robin", func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{
				EnableOobLoadReport: true, OobReportingPeriod: dur(time.Minute),
				WeightExpirationPeriod: dur(3 * time.Minute), WeightUpdatePeriod: dur(100 * time.Millisecond),
				ErrorUtilizationPenalty: 0.5,
			})
		}},
		{"ring hash defaults", func(p *policyv1.ServicePolicy) { ringHash(p, 0, 0) }},
		{"ring hash min equals max", func(p *policyv1.ServicePolicy) { ringHash(p, 1, 1) }},
		{"ring hash min only", func(p *policyv1.ServicePolicy) { ringHash(p, 4096, 0) }},
		{"only success rate", func(p *policyv1.ServicePolicy) { outlier(p).FailurePercentage = nil }},
		{"only failure percentage, empty", func(p *policyv1.ServicePolicy) {
			outlier(p).SuccessRate = nil
			outlier(p).FailurePercentage = &policyv1.FailurePercentageEjection{}
		}},
		{"max ejection time alone above default base", func(p *policyv1.ServicePolicy) {
			outlier(p).BaseEjectionTime = nil
			outlier(p).MaxEjectionTime = dur(30 * time.Second)
		}},
		{"circuit breaker unset value", func(p *policyv1.ServicePolicy) { p.CircuitBreaker = &policyv1.CircuitBreaker{} }},
		{"circuit breaker max", func(p *policyv1.ServicePolicy) { p.CircuitBreaker.MaxRequests = 1000000 }},
		{"retry backoff defaults", func(p *policyv1.ServicePolicy) { retry(p).BaseInterval, retry(p).MaxInterval = nil, nil }},
		{"retry max equals base", func(p *policyv1.ServicePolicy) { retry(p).MaxInterval = dur(10 * time.Millisecond) }},
		{"retry max alone above default base", func(p *policyv1.ServicePolicy) {
			retry(p).BaseInterval = nil
			retry(p).MaxInterval = dur(25 * time.Millisecond)
		}},
		{"retry canceled spelling", func(p *policyv1.ServicePolicy) { retry(p).RetryOn = []string{"canceled", "UNAVAILABLE", "unavailable"} }},
		{"timeout bounds", func(p *policyv1.ServicePolicy) {
			exact(p).Settings.Timeout = dur(time.Millisecond)
			p.Defaults.Timeout = dur(24 * time.Hour)
		}},
		{"fault delay only", func(p *policyv1.ServicePolicy) { fault(p).Abort = nil }},
		{"fault abort only, any code", func(p *policyv1.ServicePolicy) {
			fault(p).Delay = nil
			fault(p).Abort.Code = "data-loss"
		}},
		{"percent 100", func(p *policyv1.ServicePolicy) { exact(p).Match.Percent = u32(100) }},
		{"split single destination", func(p *policyv1.ServicePolicy) {
			split(p).Destinations = split(p).Destinations[:1]
		}},
		{"split max total weight", func(p *policyv1.ServicePolicy) {
			split(p).Destinations[0].Weight = math.MaxUint32 - 11
		}},
		{"destination own service by name", func(p *policyv1.ServicePolicy) {
			exact(p).Action = &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: "echo", Subset: "v1"}}
		}},
		{"route without anything", func(p *policyv1.ServicePolicy) {
			p.Routes = []*policyv1.Route{{}}
		}},
		{"nested package method", func(p *policyv1.ServicePolicy) {
			exact(p).Match.Method = &policyv1.RouteMatch_MethodExact{MethodExact: "/Service/Method"}
		}},
		{"regex literal prefix with slash", func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: "(/a|/b)/.*"}
		}},
		{"subset by tags only", func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "tagged_1-x", Tags: []string{"a", "b"}})
		}},
		{"subset by filter only", func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "f", Filter: `Service.Meta.version == v2 and "canary" in Service.Tags and Node.Meta.rack != r1`})
		}},
		{"subset of passing instances only", func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "passing", OnlyPassing: true})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, fullPolicy)
			tt.mutate(p)
			env := testEnv(t)
			env.KnownService = func(string) bool { return true }
			warnings, err := policy.Validate(p, env)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if len(warnings) > 0 {
				t.Fatalf("Validate warnings: %q, want none", warnings)
			}
		})
	}
}

func TestValidateViolations(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *policyv1.ServicePolicy)
		// env replaces testEnv when set.
		env       *policy.Env
		wantField string
		wantDesc  string
		// wantCount is the number of violations; 0 means 1.
		wantCount int
	}{
		// Service.
		{name: "service missing", mutate: func(p *policyv1.ServicePolicy) { p.Service = "" },
			wantField: "service", wantDesc: "required"},
		{name: "service malformed", mutate: func(p *policyv1.ServicePolicy) { p.Service = "-echo" },
			wantField: "service", wantDesc: "not a valid service name"},
		{name: "service with space", mutate: func(p *policyv1.ServicePolicy) { *p = policyv1.ServicePolicy{Service: "echo service"} },
			wantField: "service", wantDesc: "use letters, digits"},

		// Failover and locality.
		{name: "failover without datacenters", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters = nil },
			wantField: "failover.datacenters", wantDesc: "list 1 to 8 Consul datacenters"},
		{name: "failover too many datacenters", mutate: func(p *policyv1.ServicePolicy) {
			p.Failover.Datacenters = []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}
		}, wantField: "failover.datacenters", wantDesc: "at most 8"},
		{name: "failover datacenter empty", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters[1] = "" },
			wantField: "failover.datacenters[1]", wantDesc: "a Consul datacenter name is required"},
		{name: "failover datacenter malformed", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters[1] = "dc 2" },
			wantField: "failover.datacenters[1]", wantDesc: "lower-case letters, digits, '-' and '_'"},
		{name: "failover datacenter upper case", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters[1] = "DC3" },
			wantField: "failover.datacenters[1]", wantDesc: "Consul lower-cases datacenter names"},
		{name: "failover datacenter too long", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters[0] = strings.Repeat("d", 65) },
			wantField: "failover.datacenters[0]", wantDesc: "at most 64 characters"},
		{name: "failover datacenter twice", mutate: func(p *policyv1.ServicePolicy) { p.Failover.Datacenters[1] = "dc2" },
			wantField: "failover.datacenters[1]", wantDesc: "already listed at datacenters[0]"},
		{name: "locality percent out of range", mutate: func(p *policyv1.ServicePolicy) { p.Locality.MinHealthyPercent = u32(101) },
			wantField: "locality.min_healthy_percent", wantDesc: "use 0 to 100 (unset: 50)"},

		// Subsets.
		{name: "subset name missing", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Tags: []string{"x"}}) },
			wantField: "subsets[2].name", wantDesc: "required"},
		{name: "subset name malformed", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Name: "v 3", Tags: []string{"x"}}) },
			wantField: "subsets[2].name", wantDesc: "not a valid subset name"},
		{name: "subset name with dot", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Name: "v3.1", Tags: []string{"x"}}) },
			wantField: "subsets[2].name", wantDesc: "letters, digits, '-' and '_'"},
		{name: "subset name too long", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: strings.Repeat("a", 64), Tags: []string{"x"}})
		}, wantField: "subsets[2].name", wantDesc: "1 to 63"},
		{name: "subset name duplicate", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Name: "v1", Tags: []string{"x"}}) },
			wantField: "subsets[2].name", wantDesc: "already defined by subsets[0]"},
		{name: "subset without selector", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Name: "v3"}) },
			wantField: "subsets[2]", wantDesc: "tags, meta, filter or only_passing"},
		{name: "subset filter unparsable", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Filter: "Service.Meta.version =="})
		}, wantField: "subsets[2].filter", wantDesc: "not a filter expression"},
		{name: "subset filter unknown selector", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Filter: `Checks.Status == "passing"`})
		}, wantField: "subsets[2].filter", wantDesc: "Service.Tags"},
		{name: "subset filter too long", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Filter: "Service.Meta.v == " + strings.Repeat("a", 4096)})
		}, wantField: "subsets[2].filter", wantDesc: "at most 4096"},
		{name: "subset nil", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, nil) },
			wantField: "subsets[2]", wantDesc: "empty subset"},
		{name: "subset empty tag", mutate: func(p *policyv1.ServicePolicy) { addSubset(p, &policyv1.Subset{Name: "v3", Tags: []string{"a", " "}}) },
			wantField: "subsets[2].tags[1]", wantDesc: "empty tag"},
		{name: "subset meta key malformed", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Meta: map[string]string{"bad key": "x"}})
		}, wantField: `subsets[2].meta["bad key"]`, wantDesc: "not a Consul metadata key"},
		{name: "subset meta key empty", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Meta: map[string]string{"": "x"}})
		}, wantField: `subsets[2].meta[""]`, wantDesc: "letters, digits, '-' and '_'"},
		{name: "subset meta value too long", mutate: func(p *policyv1.ServicePolicy) {
			addSubset(p, &policyv1.Subset{Name: "v3", Meta: map[string]string{"k": strings.Repeat("x", 513)}})
		}, wantField: `subsets[2].meta["k"]`, wantDesc: "more than Consul stores (512)"},

		// Routes.
		{name: "route nil", mutate: func(p *policyv1.ServicePolicy) { p.Routes = append(p.Routes, nil) },
			wantField: "routes[4]", wantDesc: "empty route"},
		{name: "route name malformed", mutate: func(p *policyv1.ServicePolicy) { exact(p).Name = "bad name" },
			wantField: "routes[0].name", wantDesc: "not a valid route name"},
		{name: "route name duplicate", mutate: func(p *policyv1.ServicePolicy) { p.Routes[2].Name = "exact" },
			wantField: "routes[2].name", wantDesc: "already used by routes[0]"},

		// Method matching.
		{name: "method_exact without slashes", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Match.Method = &policyv1.RouteMatch_MethodExact{MethodExact: "trellis.echo.v1.Echo.Echo"}
		}, wantField: "routes[0].match.method_exact", wantDesc: `use "/package.Service/Method"`},
		{name: "method_exact without method", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Match.Method = &policyv1.RouteMatch_MethodExact{MethodExact: "/trellis.echo.v1.Echo/"}
		}, wantField: "routes[0].match.method_exact", wantDesc: "not a full gRPC method name"},
		{name: "method_exact empty", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Match.Method = &policyv1.RouteMatch_MethodExact{}
		}, wantField: "routes[0].match.method_exact", wantDesc: "not a full gRPC method name"},
		{name: "service_prefix without trailing slash", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[1].Match.Method = &policyv1.RouteMatch_ServicePrefix{ServicePrefix: "/grpc.health.v1.Health"}
		}, wantField: "routes[1].match.service_prefix", wantDesc: "with both slashes"},
		{name: "service_prefix with method", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[1].Match.Method = &policyv1.RouteMatch_ServicePrefix{ServicePrefix: "/grpc.health.v1.Health/Check"}
		}, wantField: "routes[1].match.service_prefix", wantDesc: `use "/package.Service/"`},
		{name: "method_regex invalid", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: "/(unclosed"}
		}, wantField: "routes[2].match.method_regex", wantDesc: "invalid RE2 regular expression"},
		{name: "method_regex not RE2", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: "/(?=lookahead)"}
		}, wantField: "routes[2].match.method_regex", wantDesc: "invalid RE2"},
		{name: "method_regex empty", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{}
		}, wantField: "routes[2].match.method_regex", wantDesc: "empty regular expression"},
		{name: "method_regex too long", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: "/" + strings.Repeat("a", 1024)}
		}, wantField: "routes[2].match.method_regex", wantDesc: "at most 1024"},
		{name: "method_regex without leading slash", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[2].Match.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: `trellis\.echo\.v1\.Echo/.*`}
		}, wantField: "routes[2].match.method_regex", wantDesc: "can never match"},
		{name: "ignore_case with regex", mutate: func(p *policyv1.ServicePolicy) { p.Routes[2].Match.IgnoreCase = true },
			wantField: "routes[2].match.ignore_case", wantDesc: "(?i)"},
		{name: "ignore_case without method", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes[3].Match = &policyv1.RouteMatch{IgnoreCase: true}
		}, wantField: "routes[3].match.ignore_case", wantDesc: "neither is set"},
		{name: "percent above 100", mutate: func(p *policyv1.ServicePolicy) { exact(p).Match.Percent = u32(101) },
			wantField: "routes[0].match.percent", wantDesc: "use 0 to 100"},

		// Header matching.
		{name: "header nil", mutate: func(p *policyv1.ServicePolicy) { exact(p).Match.Headers[0] = nil },
			wantField: "routes[0].match.headers[0]", wantDesc: "empty header matcher"},
		{name: "header name missing", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "required"},
		{name: "header name upper case", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "X-User" },
			wantField: "routes[0].match.headers[0].name", wantDesc: `lower case: use "x-user"`},
		{name: "header authority", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = ":authority" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "pseudo-header"},
		{name: "header path", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = ":path" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "pseudo-header"},
		{name: "header name invalid characters", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "x user" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "not a gRPC metadata key"},
		{name: "header binary", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "x-token-bin" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "binary header"},
		{name: "header grpc reserved", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "grpc-timeout" },
			wantField: "routes[0].match.headers[0].name", wantDesc: `which gRPC reserves for itself`},
		{name: "header grpc prefix", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "grpc-custom" },
			wantField: "routes[0].match.headers[0].name", wantDesc: `"grpc-" prefix`},
		{name: "header te", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "te" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "set by the gRPC transport"},
		{name: "header user-agent", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Name = "user-agent" },
			wantField: "routes[0].match.headers[0].name", wantDesc: "set by the gRPC transport"},
		{name: "header without match", mutate: func(p *policyv1.ServicePolicy) { header(p, 0).Match = nil },
			wantField: "routes[0].match.headers[0]", wantDesc: "set one of exact, prefix, suffix, regex or present"},
		{name: "header empty prefix", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 1).Match = &policyv1.HeaderMatch_Prefix{}
		}, wantField: "routes[0].match.headers[1].prefix", wantDesc: "present: true"},
		{name: "header empty suffix", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 2).Match = &policyv1.HeaderMatch_Suffix{}
		}, wantField: "routes[0].match.headers[2].suffix", wantDesc: "empty"},
		{name: "header exact not printable", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 0).Match = &policyv1.HeaderMatch_Exact{Exact: "caf\u00e9"}
		}, wantField: "routes[0].match.headers[0].exact", wantDesc: "printable ASCII"},
		{name: "header prefix control character", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 1).Match = &policyv1.HeaderMatch_Prefix{Prefix: "a\tb"}
		}, wantField: "routes[0].match.headers[1].prefix", wantDesc: "byte 0x09 at offset 1"},
		{name: "header regex invalid", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 3).Match = &policyv1.HeaderMatch_Regex{Regex: "[0-9"}
		}, wantField: "routes[0].match.headers[3].regex", wantDesc: "invalid RE2"},
		{name: "header regex empty", mutate: func(p *policyv1.ServicePolicy) {
			header(p, 3).Match = &policyv1.HeaderMatch_Regex{}
		}, wantField: "routes[0].match.headers[3].regex", wantDesc: "non-empty RE2"},

		// Destinations.
		{name: "own subset undefined", mutate: func(p *policyv1.ServicePolicy) { exact(p).GetDestination().Subset = "v3" },
			wantField: "routes[0].destination.subset", wantDesc: `subset "v3" is not defined in this policy; defined subsets: v1, v2`},
		{name: "own subset undefined, no subsets", mutate: func(p *policyv1.ServicePolicy) {
			*p = policyv1.ServicePolicy{Service: "echo", Routes: []*policyv1.Route{{Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{Subset: "v1"}}}}}
		}, wantField: "routes[0].destination.subset", wantDesc: "defined subsets: none"},
		{name: "own subset referenced by a malformed subset", mutate: func(p *policyv1.ServicePolicy) {
			p.Subsets[1].Name = "v 2"
			exact(p).GetDestination().Subset = "v 2"
		}, wantField: "routes[0].destination.subset", wantDesc: "not defined in this policy", wantCount: 3},
		{name: "other service malformed", mutate: func(p *policyv1.ServicePolicy) { p.Routes[2].GetDestination().Service = "other service" },
			wantField: "routes[2].destination.service", wantDesc: "leave it empty for the policy's own service"},
		{name: "other service subset undefined", mutate: func(p *policyv1.ServicePolicy) { p.Routes[2].GetDestination().Subset = "green" },
			wantField: "routes[2].destination.subset", wantDesc: `subset "green" is not defined in the policy of service "other"; its subsets: blue`},
		{name: "other service without policy", mutate: func(p *policyv1.ServicePolicy) {
			split(p).Destinations = append(split(p).Destinations[:2], split(p).Destinations[3:]...)
			p.Routes[2].Action = &policyv1.Route_Destination{Destination: &policyv1.Destination{Service: "third", Subset: "x"}}
		}, env: &policy.Env{PolicyOf: func(string) *policyv1.ServicePolicy { return nil }},
			wantField: "routes[2].destination.subset", wantDesc: `service "third" has no policy`},

		// Weighted splits.
		{name: "split without destinations", mutate: func(p *policyv1.ServicePolicy) { split(p).Destinations = nil },
			wantField: "routes[1].split.destinations", wantDesc: "at least one destination"},
		{name: "split nil", mutate: func(p *policyv1.ServicePolicy) { p.Routes[1].Action = &policyv1.Route_Split{} },
			wantField: "routes[1].split.destinations", wantDesc: "at least one destination"},
		{name: "split weights zero", mutate: func(p *policyv1.ServicePolicy) {
			for _, d := range split(p).Destinations {
				d.Weight = 0
			}
		}, wantField: "routes[1].split.destinations", wantDesc: "the weights sum to 0"},
		{name: "split weights overflow", mutate: func(p *policyv1.ServicePolicy) { split(p).Destinations[0].Weight = math.MaxUint32 },
			wantField: "routes[1].split.destinations", wantDesc: "must not exceed 4294967295"},
		{name: "split duplicate destination", mutate: func(p *policyv1.ServicePolicy) {
			split(p).Destinations = append(split(p).Destinations, &policyv1.WeightedDestination{Destination: &policyv1.Destination{Service: "echo", Subset: "v1"}, Weight: 5})
		}, wantField: "routes[1].split.destinations[4].destination", wantDesc: "same destination as destinations[0]"},
		{name: "split duplicate whole service", mutate: func(p *policyv1.ServicePolicy) {
			split(p).Destinations = append(split(p).Destinations, &policyv1.WeightedDestination{Destination: &policyv1.Destination{}, Weight: 5})
		}, wantField: "routes[1].split.destinations[4].destination", wantDesc: "same destination as destinations[3]"},
		{name: "split subset undefined", mutate: func(p *policyv1.ServicePolicy) { split(p).Destinations[0].Destination.Subset = "nope" },
			wantField: "routes[1].split.destinations[0].destination.subset", wantDesc: "not defined in this policy"},
		{name: "split other subset undefined", mutate: func(p *policyv1.ServicePolicy) { split(p).Destinations[2].Destination.Subset = "nope" },
			wantField: "routes[1].split.destinations[2].destination.subset", wantDesc: `policy of service "other"`},

		// Timeouts.
		{name: "timeout zero", mutate: func(p *policyv1.ServicePolicy) { exact(p).Settings.Timeout = dur(0) },
			wantField: "routes[0].settings.timeout", wantDesc: "0s is out of range: use 1ms to 24h"},
		{name: "timeout too long", mutate: func(p *policyv1.ServicePolicy) { exact(p).Settings.Timeout = dur(25 * time.Hour) },
			wantField: "routes[0].settings.timeout", wantDesc: "25h is out of range"},
		{name: "timeout negative", mutate: func(p *policyv1.ServicePolicy) { p.Defaults.Timeout = dur(-time.Second) },
			wantField: "defaults.timeout", wantDesc: "use 1ms to 24h"},
		{name: "timeout malformed", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Settings.Timeout = &durationpb.Duration{Seconds: 1, Nanos: -5}
		}, wantField: "routes[0].settings.timeout", wantDesc: "invalid duration"},

		// Retries.
		{name: "retry_on missing", mutate: func(p *policyv1.ServicePolicy) { retry(p).RetryOn = nil },
			wantField: "routes[0].settings.retry.retry_on", wantDesc: "CANCELLED, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE"},
		{name: "retry_on unknown", mutate: func(p *policyv1.ServicePolicy) { retry(p).RetryOn = []string{"unavailable", "5xx"} },
			wantField: "routes[0].settings.retry.retry_on[1]", wantDesc: `"5xx" is not a gRPC status code name`},
		{name: "retry_on not retryable", mutate: func(p *policyv1.ServicePolicy) { p.Defaults.Retry.RetryOn = []string{"not-found"} },
			wantField: "defaults.retry.retry_on[0]", wantDesc: "do not retry on NOT_FOUND; they retry on CANCELLED"},
		{name: "num_retries missing", mutate: func(p *policyv1.ServicePolicy) { retry(p).NumRetries = 0 },
			wantField: "routes[0].settings.retry.num_retries", wantDesc: "required: retries after the first attempt, 1 to 4"},
		{name: "num_retries too many", mutate: func(p *policyv1.ServicePolicy) { retry(p).NumRetries = 5 },
			wantField: "routes[0].settings.retry.num_retries", wantDesc: "caps a call at 5 attempts"},
		{name: "base_interval zero", mutate: func(p *policyv1.ServicePolicy) { retry(p).BaseInterval = dur(0) },
			wantField: "routes[0].settings.retry.base_interval", wantDesc: "use 1ms to 1m"},
		{name: "base_interval too long", mutate: func(p *policyv1.ServicePolicy) {
			retry(p).BaseInterval = dur(2 * time.Minute)
			retry(p).MaxInterval = dur(3 * time.Minute)
		}, wantField: "routes[0].settings.retry.base_interval", wantDesc: "2m is out of range"},
		{name: "max_interval too long", mutate: func(p *policyv1.ServicePolicy) { retry(p).MaxInterval = dur(11 * time.Minute) },
			wantField: "routes[0].settings.retry.max_interval", wantDesc: "use 1ms to 10m"},
		{name: "max_interval below base", mutate: func(p *policyv1.ServicePolicy) {
			retry(p).BaseInterval = dur(100 * time.Millisecond)
			retry(p).MaxInterval = dur(50 * time.Millisecond)
		}, wantField: "routes[0].settings.retry.max_interval", wantDesc: "shorter than base_interval (100ms)"},
		{name: "max_interval below default base", mutate: func(p *policyv1.ServicePolicy) {
			retry(p).BaseInterval = nil
			retry(p).MaxInterval = dur(10 * time.Millisecond)
		}, wantField: "routes[0].settings.retry.max_interval", wantDesc: "the default base_interval (25ms)"},

		// Fault injection.
		{name: "fault empty", mutate: func(p *policyv1.ServicePolicy) { exact(p).Settings.Fault = &policyv1.FaultInjection{} },
			wantField: "routes[0].settings.fault", wantDesc: "set delay, abort or both"},
		{name: "fault delay without duration", mutate: func(p *policyv1.ServicePolicy) { fault(p).Delay.FixedDelay = nil },
			wantField: "routes[0].settings.fault.delay.fixed_delay", wantDesc: "required"},
		{name: "fault delay too long", mutate: func(p *policyv1.ServicePolicy) { fault(p).Delay.FixedDelay = dur(2 * time.Hour) },
			wantField: "routes[0].settings.fault.delay.fixed_delay", wantDesc: "use 1ms to 1h"},
		{name: "fault delay zero", mutate: func(p *policyv1.ServicePolicy) { fault(p).Delay.FixedDelay = dur(0) },
			wantField: "routes[0].settings.fault.delay.fixed_delay", wantDesc: "out of range"},
		{name: "fault delay percent", mutate: func(p *policyv1.ServicePolicy) { fault(p).Delay.Percent = 101 },
			wantField: "routes[0].settings.fault.delay.percent", wantDesc: "use 0 to 100"},
		{name: "fault abort code missing", mutate: func(p *policyv1.ServicePolicy) { fault(p).Abort.Code = "" },
			wantField: "routes[0].settings.fault.abort.code", wantDesc: "required"},
		{name: "fault abort code OK", mutate: func(p *policyv1.ServicePolicy) { fault(p).Abort.Code = "ok" },
			wantField: "routes[0].settings.fault.abort.code", wantDesc: "OK does not abort a call"},
		{name: "fault abort code unknown", mutate: func(p *policyv1.ServicePolicy) { fault(p).Abort.Code = "503" },
			wantField: "routes[0].settings.fault.abort.code", wantDesc: "use one of CANCELLED, UNKNOWN"},
		{name: "fault abort percent", mutate: func(p *policyv1.ServicePolicy) { fault(p).Abort.Percent = 200 },
			wantField: "routes[0].settings.fault.abort.percent", wantDesc: "use 0 to 100"},

		// Hash policies.
		{name: "hash policy empty", mutate: func(p *policyv1.ServicePolicy) { exact(p).Settings.HashPolicy[0].Policy = nil },
			wantField: "routes[0].settings.hash_policy[0]", wantDesc: "set header"},
		{name: "hash header upper case", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Settings.HashPolicy[0].Policy = &policyv1.HashPolicy_Header{Header: "X-User"}
		}, wantField: "routes[0].settings.hash_policy[0].header", wantDesc: `use "x-user"`},
		{name: "hash header binary", mutate: func(p *policyv1.ServicePolicy) {
			p.Defaults.HashPolicy[0].Policy = &policyv1.HashPolicy_Header{Header: "session-bin"}
		}, wantField: "defaults.hash_policy[0].header", wantDesc: "binary header"},
		{name: "hash header pseudo", mutate: func(p *policyv1.ServicePolicy) {
			p.Defaults.HashPolicy[0].Policy = &policyv1.HashPolicy_Header{Header: ":authority"}
		}, wantField: "defaults.hash_policy[0].header", wantDesc: "pseudo-header"},
		{name: "hash channel_id false", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Settings.HashPolicy[1].Policy = &policyv1.HashPolicy_ChannelId{}
		}, wantField: "routes[0].settings.hash_policy[1].channel_id", wantDesc: "channel_id: true"},
		{name: "route hash without ring hash", mutate: func(p *policyv1.ServicePolicy) {
			p.Defaults.HashPolicy = nil
			p.LoadBalancing = nil
		}, wantField: "routes[0].settings.hash_policy", wantDesc: "set load_balancing.ring_hash or remove the hash policy"},
		{name: "defaults hash without ring hash", mutate: func(p *policyv1.ServicePolicy) {
			exact(p).Settings.HashPolicy = nil
			p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{}}}
		}, wantField: "defaults.hash_policy", wantDesc: `service "echo" does not use it`},
		{name: "defaults hash for unmatched calls", mutate: func(p *policyv1.ServicePolicy) {
			*p = policyv1.ServicePolicy{Service: "echo", Defaults: &policyv1.RouteSettings{
				HashPolicy: []*policyv1.HashPolicy{{Policy: &policyv1.HashPolicy_ChannelId{ChannelId: true}}},
			}}
		}, wantField: "defaults.hash_policy", wantDesc: "ring hash"},

		// Load balancing.
		{name: "ring max below default min", mutate: func(p *policyv1.ServicePolicy) { ringHash(p, 0, 512) },
			wantField: "load_balancing.ring_hash.minimum_ring_size", wantDesc: "minimum ring size 1024 is greater than maximum ring size 512"},
		{name: "ring min above max", mutate: func(p *policyv1.ServicePolicy) { ringHash(p, 2000, 1000) },
			wantField: "load_balancing.ring_hash.minimum_ring_size", wantDesc: "set minimum_ring_size <= maximum_ring_size"},
		{name: "ring min too large", mutate: func(p *policyv1.ServicePolicy) { ringHash(p, 8388609, 0) },
			wantField: "load_balancing.ring_hash.minimum_ring_size", wantDesc: "use 1 to 8388608"},
		{name: "ring max too large", mutate: func(p *policyv1.ServicePolicy) { ringHash(p, 0, 1<<40) },
			wantField: "load_balancing.ring_hash.maximum_ring_size", wantDesc: "more than gRPC accepts"},
		{name: "least request choice 1", mutate: func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{ChoiceCount: 1}}})
		}, wantField: "load_balancing.least_request.choice_count", wantDesc: "use 2 to 10"},
		{name: "least request choice 11", mutate: func(p *policyv1.ServicePolicy) {
			setLB(p, &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{ChoiceCount: 11}}})
		}, wantField: "load_balancing.least_request.choice_count", wantDesc: "11 is out of range"},
		{name: "wrr oob period without oob", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{OobReportingPeriod: dur(time.Minute)})
		}, wantField: "load_balancing.weighted_round_robin.oob_reporting_period", wantDesc: "enable_oob_load_report: true"},
		{name: "wrr oob period too short", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{EnableOobLoadReport: true, OobReportingPeriod: dur(10 * time.Millisecond)})
		}, wantField: "load_balancing.weighted_round_robin.oob_reporting_period", wantDesc: "use 100ms to 24h"},
		{name: "wrr weight update period too short", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{WeightUpdatePeriod: dur(50 * time.Millisecond)})
		}, wantField: "load_balancing.weighted_round_robin.weight_update_period", wantDesc: "use 100ms to 24h"},
		{name: "wrr weight expiration zero", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{WeightExpirationPeriod: dur(0)})
		}, wantField: "load_balancing.weighted_round_robin.weight_expiration_period", wantDesc: "out of range"},
		{name: "wrr penalty negative", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{ErrorUtilizationPenalty: -1})
		}, wantField: "load_balancing.weighted_round_robin.error_utilization_penalty", wantDesc: ">= 0"},
		{name: "wrr penalty NaN", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{ErrorUtilizationPenalty: float32(math.NaN())})
		}, wantField: "load_balancing.weighted_round_robin.error_utilization_penalty", wantDesc: "finite number"},
		{name: "wrr penalty infinite", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{ErrorUtilizationPenalty: float32(math.Inf(1))})
		}, wantField: "load_balancing.weighted_round_robin.error_utilization_penalty", wantDesc: "finite number"},

		// Circuit breaker.
		{name: "circuit breaker too large", mutate: func(p *policyv1.ServicePolicy) { p.CircuitBreaker.MaxRequests = 1000001 },
			wantField: "circuit_breaker.max_requests", wantDesc: "use 1 to 1000000"},

		// Outlier detection.
		{name: "outlier without algorithm", mutate: func(p *policyv1.ServicePolicy) {
			outlier(p).SuccessRate, outlier(p).FailurePercentage = nil, nil
		}, wantField: "outlier_detection", wantDesc: "set success_rate, failure_percentage or both"},
		{name: "outlier interval zero", mutate: func(p *policyv1.ServicePolicy) { outlier(p).Interval = dur(0) },
			wantField: "outlier_detection.interval", wantDesc: "use 10ms to 24h"},
		{name: "outlier interval too short", mutate: func(p *policyv1.ServicePolicy) { outlier(p).Interval = dur(time.Millisecond) },
			wantField: "outlier_detection.interval", wantDesc: "1ms is out of range"},
		{name: "outlier base ejection zero", mutate: func(p *policyv1.ServicePolicy) {
			outlier(p).BaseEjectionTime = dur(0)
			outlier(p).MaxEjectionTime = nil
		}, wantField: "outlier_detection.base_ejection_time", wantDesc: "use 1ms to 24h"},
		{name: "outlier max ejection too long", mutate: func(p *policyv1.ServicePolicy) { outlier(p).MaxEjectionTime = dur(48 * time.Hour) },
			wantField: "outlier_detection.max_ejection_time", wantDesc: "48h is out of range"},
		{name: "outlier max ejection below base", mutate: func(p *policyv1.ServicePolicy) { outlier(p).MaxEjectionTime = dur(5 * time.Second) },
			wantField: "outlier_detection.max_ejection_time", wantDesc: "shorter than base_ejection_time (10s)"},
		{name: "outlier max ejection below default base", mutate: func(p *policyv1.ServicePolicy) {
			outlier(p).BaseEjectionTime = nil
			outlier(p).MaxEjectionTime = dur(20 * time.Second)
		}, wantField: "outlier_detection.max_ejection_time", wantDesc: "the default base_ejection_time (30s)"},
		{name: "outlier max ejection percent", mutate: func(p *policyv1.ServicePolicy) { outlier(p).MaxEjectionPercent = u32(101) },
			wantField: "outlier_detection.max_ejection_percent", wantDesc: "use 0 to 100"},
		{name: "success rate enforcement", mutate: func(p *policyv1.ServicePolicy) { outlier(p).SuccessRate.EnforcementPercentage = u32(101) },
			wantField: "outlier_detection.success_rate.enforcement_percentage", wantDesc: "use 0 to 100"},
		{name: "failure percentage threshold", mutate: func(p *policyv1.ServicePolicy) { outlier(p).FailurePercentage.Threshold = u32(101) },
			wantField: "outlier_detection.failure_percentage.threshold", wantDesc: "use 0 to 100"},
		{name: "failure percentage enforcement", mutate: func(p *policyv1.ServicePolicy) {
			outlier(p).FailurePercentage.EnforcementPercentage = u32(1000)
		}, wantField: "outlier_detection.failure_percentage.enforcement_percentage", wantDesc: "1000 is not a percentage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, fullPolicy)
			tt.mutate(p)
			env := testEnv(t)
			if tt.env != nil {
				env = *tt.env
			}
			_, err := policy.Validate(p, env)
			var ve *policy.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate error = %v, want a *ValidationError", err)
			}
			if ve.Service != p.GetService() {
				t.Errorf("ValidationError.Service = %q, want %q", ve.Service, p.GetService())
			}
			want := tt.wantCount
			if want == 0 {
				want = 1
			}
			if len(ve.Violations) != want {
				t.Errorf("got %d violations, want %d: %v", len(ve.Violations), want, ve.Violations)
			}
			found := false
			for _, v := range ve.Violations {
				if v.Field == tt.wantField && strings.Contains(v.Description, tt.wantDesc) {
					found = true
				}
			}
			if !found {
				t.Errorf("no violation at %s containing %q; got %v", tt.wantField, tt.wantDesc, ve.Violations)
			}
			if !strings.Contains(err.Error(), tt.wantField+": ") {
				t.Errorf("Error() = %q, want it to name %s", err, tt.wantField)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	_, err := policy.Validate(nil, policy.Env{})
	var ve *policy.ValidationError
	if !errors.As(err, &ve) || len(ve.Violations) != 1 || !strings.Contains(ve.Violations[0].Description, "no policy") {
		t.Fatalf("Validate(nil) = %v, want one violation about the missing policy", err)
	}
}

func TestValidateReportsEveryViolation(t *testing.T) {
	p := &policyv1.ServicePolicy{
		Service: "echo",
		Routes: []*policyv1.Route{{
			Match: &policyv1.RouteMatch{Method: &policyv1.RouteMatch_MethodExact{MethodExact: "Echo"}},
			Settings: &policyv1.RouteSettings{
				Timeout: dur(0),
				Retry:   &policyv1.RetryPolicy{RetryOn: []string{"UNAVAILABLE"}, NumRetries: 9},
			},
		}},
		CircuitBreaker: &policyv1.CircuitBreaker{MaxRequests: 2000000},
	}
	_, err := policy.Validate(p, policy.Env{})
	var ve *policy.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate = %v, want a *ValidationError", err)
	}
	var fields []string
	for _, v := range ve.Violations {
		fields = append(fields, v.Field)
	}
	want := []string{"routes[0].match.method_exact", "routes[0].settings.timeout", "routes[0].settings.retry.num_retries", "circuit_breaker.max_requests"}
	if strings.Join(fields, " ") != strings.Join(want, " ") {
		t.Fatalf("violation fields = %q, want %q", fields, want)
	}
	if !strings.HasPrefix(err.Error(), `policy: service "echo": 4 violations: routes[0].match.method_exact: `) {
		t.Errorf("Error() = %q", err)
	}
}

func TestValidateWarnings(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *policyv1.ServicePolicy)
		env    func(t *testing.T) policy.Env
		want   string
	}{
		{name: "own service unknown", mutate: func(*policyv1.ServicePolicy) {},
			env: func(t *testing.T) policy.Env {
				e := testEnv(t)
				e.KnownService = func(name string) bool { return name == "other" }
				return e
			}, want: `service: service "echo" is not registered in Consul`},
		{name: "destination service unknown", mutate: func(*policyv1.ServicePolicy) {},
			env: func(t *testing.T) policy.Env {
				e := testEnv(t)
				e.KnownService = func(name string) bool { return name == "echo" }
				return e
			}, want: `routes[1].split.destinations[2].destination.service: service "other" is not registered in Consul`},
		{name: "match percent zero", mutate: func(p *policyv1.ServicePolicy) { exact(p).Match.Percent = u32(0) },
			want: "routes[0].match.percent: 0: the route matches practically no call"},
		{name: "fault delay percent zero", mutate: func(p *policyv1.ServicePolicy) { fault(p).Delay.Percent = 0 },
			want: "routes[0].settings.fault.delay.percent: 0: no call is delayed"},
		{name: "fault abort percent zero", mutate: func(p *policyv1.ServicePolicy) { fault(p).Abort.Percent = 0 },
			want: "routes[0].settings.fault.abort.percent: 0: no call is aborted"},
		{name: "success rate disabled", mutate: func(p *policyv1.ServicePolicy) { outlier(p).SuccessRate.EnforcementPercentage = u32(0) },
			want: "outlier_detection.success_rate.enforcement_percentage: 0: success-rate ejection is disabled"},
		{name: "failure percentage disabled", mutate: func(p *policyv1.ServicePolicy) {
			outlier(p).FailurePercentage.EnforcementPercentage = u32(0)
		}, want: "failure-percentage ejection is disabled"},
		{name: "max ejection percent zero", mutate: func(p *policyv1.ServicePolicy) { outlier(p).MaxEjectionPercent = u32(0) },
			want: "outlier_detection.max_ejection_percent: 0: no instance is ever ejected"},
		{name: "ring larger than client cap", mutate: func(p *policyv1.ServicePolicy) { ringHash(p, 0, 8192) },
			want: "load_balancing.ring_hash.maximum_ring_size: 8192: grpc-go clients cap the ring at 4096 entries unless GRPC_RING_HASH_CAP"},
		{name: "oob period below ORCA minimum", mutate: func(p *policyv1.ServicePolicy) {
			wrr(p, &policyv1.WeightedRoundRobin{EnableOobLoadReport: true, OobReportingPeriod: dur(5 * time.Second)})
		}, want: "oob_reporting_period: 5s: grpc-go ORCA services report at most every 30s"},
		{name: "route after catch-all", mutate: func(p *policyv1.ServicePolicy) {
			p.Routes = append([]*policyv1.Route{{Name: "first"}}, p.Routes...)
		}, want: "routes[4]: never matched: routes[0] matches every call before it"},
		{name: "hash policy to other service without ring hash", mutate: func(*policyv1.ServicePolicy) {},
			env: func(t *testing.T) policy.Env {
				e := testEnv(t)
				other := mustParse(t, "service: other\nsubsets: [{name: blue, tags: [blue]}]\n")
				e.PolicyOf = func(string) *policyv1.ServicePolicy { return other }
				return e
			}, want: `defaults.hash_policy: routes[1] sends calls to service "other", which does not use ring hash load balancing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, fullPolicy)
			tt.mutate(p)
			env := testEnv(t)
			if tt.env != nil {
				env = tt.env(t)
			}
			warnings, err := policy.Validate(p, env)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			found := false
			for _, w := range warnings {
				if strings.Contains(w, tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("warnings %q, want one containing %q", warnings, tt.want)
			}
		})
	}
}

// With nil Env functions, checks about other services are skipped silently.
func TestValidateEmptyEnv(t *testing.T) {
	p := mustParse(t, fullPolicy)
	p.Routes[2].GetDestination().Subset = "not-checked"
	p.Routes[2].GetDestination().Service = "unknown-service"
	warnings, err := policy.Validate(p, policy.Env{})
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings %q, want none", warnings)
	}
}

// Validate must not modify its input.
func TestValidateDoesNotModify(t *testing.T) {
	p := mustParse(t, fullPolicy)
	before := proto.Clone(p)
	if _, err := policy.Validate(p, testEnv(t)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p, before) {
		t.Fatal("Validate modified the policy")
	}
}
