package policy

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/names"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Env is what Validate may consult beyond the policy itself. A nil function
// skips the checks that need it, without a warning.
type Env struct {
	// KnownService reports whether a service is registered in the catalog.
	// A policy for an unknown service, or a destination naming one, is
	// accepted with a warning: the service may be registered later.
	KnownService func(name string) bool
	// PolicyOf returns the stored policy of another service, or nil when that
	// service has none. Validate uses it for the services ReferencedServices
	// lists: a destination subset must be defined in that service's policy,
	// and hash policies routed there only take effect when that service uses
	// ring hash load balancing.
	PolicyOf func(service string) *policyv1.ServicePolicy
}

// Violation is one reason a policy is refused.
type Violation struct {
	// Field is the path of the offending field, with the .proto field names:
	// "routes[2].match.headers[0].regex", `subsets[0].meta["version"]`.
	Field string
	// Description says what is wrong and what is accepted.
	Description string
}

// String is "field: description", or the description alone for a problem
// with the whole policy.
func (v Violation) String() string {
	if v.Field == "" {
		return v.Description
	}
	return v.Field + ": " + v.Description
}

// ValidationError is returned by Validate for a refused policy. It holds
// every violation found, in field order.
type ValidationError struct {
	// Service is the policy's service field, possibly empty or malformed.
	Service    string
	Violations []Violation
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy: service %q: ", e.Service)
	if len(e.Violations) == 1 {
		b.WriteString("invalid policy: ")
	} else {
		fmt.Fprintf(&b, "%d violations: ", len(e.Violations))
	}
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.String())
	}
	return b.String()
}

// Bounds enforced by Validate. They follow what grpc-go accepts and honours;
// where gRPC accepts more, the bound keeps values within reason.
const (
	maxRetries                = 4 // gRPC caps a call at 5 attempts
	maxRingSize               = 8 * 1024 * 1024
	clientRingSizeCap         = 4096 // grpc-go's default GRPC_RING_HASH_CAP
	maxCircuitBreakerRequests = 1000000
	maxRegexLength            = 1024

	minTimeout, maxTimeout                 = time.Millisecond, 24 * time.Hour
	minBackoff, maxBaseBackoff             = time.Millisecond, time.Minute
	maxMaxBackoff                          = 10 * time.Minute
	defaultBaseBackoff                     = 25 * time.Millisecond
	minFaultDelay, maxFaultDelay           = time.Millisecond, time.Hour
	minODInterval, maxODDuration           = 10 * time.Millisecond, 24 * time.Hour
	minEjectionTime                        = time.Millisecond
	defaultBaseEjectionTime                = 30 * time.Second
	minWeightUpdatePeriod                  = 100 * time.Millisecond // grpc-go raises shorter ones
	minOOBReportingPeriod                  = 100 * time.Millisecond
	orcaServerMinReportingPeriod           = 30 * time.Second
	minWeightExpiration, maxWRRDuration    = time.Millisecond, 24 * time.Hour
	defaultMinRingSize, defaultMaxRingSize = 1024, maxRingSize
	minChoiceCount, maxChoiceCount         = 2, 10
	maxNameLength                          = 128
	maxSubsetNameLength                    = 63
	maxMetaKeyLength, maxMetaValueLength   = 128, 512 // Consul's limits
)

var (
	subsetNamePattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	// A gRPC method path: "/" [package "."] service "/" method.
	methodExactPattern   = regexp.MustCompile(`^/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$`)
	servicePrefixPattern = regexp.MustCompile(`^/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*/$`)
	// gRPC metadata keys (grpc-go refuses to send any other).
	headerNamePattern = regexp.MustCompile(`^[a-z0-9_.-]+$`)
	// Consul's rule for service metadata keys.
	metaKeyPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// Validate checks p against every rule of the policy model and returns the
// warnings for what is accepted but noteworthy, each "field: description".
// When p is refused, err is a *ValidationError holding every violation;
// warnings are returned either way. Validate reads p only; it accepts the
// spellings Normalize canonicalises. The accepted ranges are those written
// on the fields of policy.proto.
//
// Choices beyond the field comments of policy.proto:
//   - A route without destination or split sends its calls to the policy's
//     own service, all instances; so does a split entry without destination.
//   - Hash policies only matter to ring hash load balancing. A hash policy
//     that applies to calls of the policy's own service while that service
//     does not use ring_hash is an error; one routed to another service
//     whose stored policy (Env.PolicyOf) does not use ring_hash is a warning,
//     since that policy can change on its own.
//   - Header matchers and hash policies cannot name pseudo-headers
//     (":authority" included: grpc-go matches routes against the call's
//     metadata, which holds no pseudo-header), "-bin" headers, "grpc-"
//     headers, "te" or "user-agent"; "content-type" is matched against
//     "application/grpc[+subtype]".
//   - ignore_case applies to method_exact and service_prefix only (gRPC
//     ignores it for regexes; use "(?i)").
//   - Outlier detection needs success_rate, failure_percentage or both.
//   - Settings that make a feature a no-op are accepted with a warning:
//     match percent 0, fault percent 0, enforcement_percentage 0,
//     max_ejection_percent 0.
func Validate(p *policyv1.ServicePolicy, env Env) (warnings []string, err error) {
	v := &validator{env: env, p: p}
	if p == nil {
		v.errorf("", "no policy: a ServicePolicy with at least a service is required")
	} else {
		v.policy()
	}
	if len(v.violations) > 0 {
		return v.warnings, &ValidationError{Service: p.GetService(), Violations: v.violations}
	}
	return v.warnings, nil
}

type validator struct {
	env        Env
	p          *policyv1.ServicePolicy
	subsets    []string // names of p's subsets, in order
	violations []Violation
	warnings   []string
}

func (v *validator) errorf(path, format string, args ...any) {
	v.violations = append(v.violations, Violation{Field: path, Description: fmt.Sprintf(format, args...)})
}

func (v *validator) warnf(path, format string, args ...any) {
	v.warnings = append(v.warnings, Violation{Field: path, Description: fmt.Sprintf(format, args...)}.String())
}

func field(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func index(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

func (v *validator) policy() {
	p := v.p
	switch {
	case p.Service == "":
		v.errorf("service", "required: the Consul name of the service the policy is for (clients dial xds:///<service>)")
	case !names.ValidService(p.Service):
		v.errorf("service", "%q is not a valid service name: use letters, digits, '.', '-' and '_', starting and ending with a letter, digit or '_'", p.Service)
	case v.env.KnownService != nil && !v.env.KnownService(p.Service):
		v.warnf("service", "service %q is not registered in Consul; the policy takes effect once it is", p.Service)
	}
	v.subsetList()
	for i, r := range p.Routes {
		v.route(i, r)
	}
	v.unreachableRoutes()
	if p.Defaults != nil {
		v.settings("defaults", p.Defaults)
	}
	if p.LoadBalancing != nil {
		v.loadBalancing("load_balancing", p.LoadBalancing)
	}
	if p.CircuitBreaker != nil {
		v.circuitBreaker("circuit_breaker", p.CircuitBreaker)
	}
	if p.OutlierDetection != nil {
		v.outlierDetection("outlier_detection", p.OutlierDetection)
	}
	if p.Failover != nil {
		v.failover("failover", p.Failover)
	}
	if p.Locality != nil {
		v.locality("locality", p.Locality)
	}
	v.hashPolicyTargets()
}

func (v *validator) subsetList() {
	seen := map[string]int{}
	for i, s := range v.p.Subsets {
		f := index("subsets", i)
		if s == nil {
			v.errorf(f, "empty subset: a subset needs a name and tags or meta")
			continue
		}
		switch {
		case s.Name == "":
			v.errorf(field(f, "name"), "required: a name unique within the policy (letters, digits, '-' and '_')")
		case len(s.Name) > maxSubsetNameLength || !subsetNamePattern.MatchString(s.Name):
			v.errorf(field(f, "name"), "%q is not a valid subset name: use 1 to %d letters, digits, '-' and '_'", s.Name, maxSubsetNameLength)
		default:
			if j, dup := seen[s.Name]; dup {
				v.errorf(field(f, "name"), "subset %q is already defined by subsets[%d]: subset names must be unique", s.Name, j)
			} else {
				seen[s.Name] = i
				v.subsets = append(v.subsets, s.Name)
			}
		}
		if len(s.Tags) == 0 && len(s.Meta) == 0 && s.Filter == "" && !s.OnlyPassing {
			v.errorf(f, "a subset selects instances by tags, meta, filter or only_passing, and this one sets none; to address every instance, leave the destination's subset empty")
		}
		if s.Filter != "" {
			if _, err := CompileFilter(s.Filter); err != nil {
				v.errorf(field(f, "filter"), "%v", err)
			}
		}
		for j, tag := range s.Tags {
			if strings.TrimSpace(tag) == "" {
				v.errorf(index(field(f, "tags"), j), "empty tag: tags are non-empty strings, as registered in Consul")
			}
		}
		keys := make([]string, 0, len(s.Meta))
		for k := range s.Meta {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			mf := fmt.Sprintf("%s.meta[%q]", f, k)
			if k == "" || len(k) > maxMetaKeyLength || !metaKeyPattern.MatchString(k) {
				v.errorf(mf, "%q is not a Consul metadata key, so no instance can have it: use 1 to %d letters, digits, '-' and '_'", k, maxMetaKeyLength)
			}
			if len(s.Meta[k]) > maxMetaValueLength {
				v.errorf(mf, "value is %d bytes long, more than Consul stores (%d), so no instance can match it", len(s.Meta[k]), maxMetaValueLength)
			}
		}
	}
}

func (v *validator) route(i int, r *policyv1.Route) {
	f := index("routes", i)
	if r == nil {
		v.errorf(f, "empty route: a route needs at least a match, a destination or settings")
		return
	}
	if r.Name != "" {
		if len(r.Name) > maxNameLength || !names.ValidService(r.Name) {
			v.errorf(field(f, "name"), "%q is not a valid route name: use up to %d letters, digits, '.', '-' and '_', starting and ending with a letter, digit or '_'", r.Name, maxNameLength)
		}
		for j, other := range v.p.Routes[:i] {
			if other != nil && other.Name == r.Name {
				v.errorf(field(f, "name"), "route name %q is already used by routes[%d]: route names must be unique", r.Name, j)
				break
			}
		}
	}
	if r.Match != nil {
		v.match(field(f, "match"), r.Match)
	}
	switch a := r.Action.(type) {
	case nil:
		// The policy's own service, every instance.
	case *policyv1.Route_Destination:
		v.destination(field(f, "destination"), a.Destination)
	case *policyv1.Route_Split:
		v.split(field(f, "split"), a.Split)
	}
	if r.Settings != nil {
		v.settings(field(f, "settings"), r.Settings)
	}
}

// matchesEverything reports whether a route matches every call, so that no
// later route is ever reached.
func matchesEverything(r *policyv1.Route) bool {
	m := r.GetMatch()
	return m.GetMethod() == nil && len(m.GetHeaders()) == 0 && (m == nil || m.Percent == nil || *m.Percent >= 100)
}

func (v *validator) unreachableRoutes() {
	for i, r := range v.p.Routes {
		if r == nil || !matchesEverything(r) {
			continue
		}
		for j := i + 1; j < len(v.p.Routes); j++ {
			v.warnf(index("routes", j), "never matched: routes[%d] matches every call before it", i)
		}
		return
	}
}

func (v *validator) match(f string, m *policyv1.RouteMatch) {
	switch meth := m.Method.(type) {
	case nil:
		if m.IgnoreCase {
			v.errorf(field(f, "ignore_case"), "ignore_case applies to method_exact and service_prefix, and neither is set: remove it")
		}
	case *policyv1.RouteMatch_MethodExact:
		if !methodExactPattern.MatchString(meth.MethodExact) {
			v.errorf(field(f, "method_exact"), "%q is not a full gRPC method name: use \"/package.Service/Method\"", meth.MethodExact)
		}
	case *policyv1.RouteMatch_ServicePrefix:
		if !servicePrefixPattern.MatchString(meth.ServicePrefix) {
			v.errorf(field(f, "service_prefix"), "%q is not a gRPC service prefix: use \"/package.Service/\" (with both slashes) to match every method of the service", meth.ServicePrefix)
		}
	case *policyv1.RouteMatch_MethodRegex:
		if re := v.regex(field(f, "method_regex"), meth.MethodRegex); re != nil {
			if lit, _ := re.LiteralPrefix(); lit != "" && !strings.HasPrefix(lit, "/") {
				v.errorf(field(f, "method_regex"), "%q can never match: it is matched against the whole method name, which starts with '/' (\"/package.Service/Method\")", meth.MethodRegex)
			}
		}
		if m.IgnoreCase {
			v.errorf(field(f, "ignore_case"), "gRPC ignores ignore_case for method_regex: remove it and start the regex with (?i) instead")
		}
	}
	for i, h := range m.Headers {
		v.headerMatch(index(field(f, "headers"), i), h)
	}
	if m.Percent != nil {
		switch {
		case *m.Percent > 100:
			v.errorf(field(f, "percent"), "%d is not a percentage: use 0 to 100, or leave it unset to match every call", *m.Percent)
		case *m.Percent == 0:
			v.warnf(field(f, "percent"), "0: the route matches practically no call (gRPC still matches one in a million)")
		}
	}
}

// regex checks an RE2 pattern (Go's regexp is RE2, as grpc-go uses) and
// returns it compiled, or nil after recording a violation.
func (v *validator) regex(f, pattern string) *regexp.Regexp {
	if pattern == "" {
		v.errorf(f, "empty regular expression: use a non-empty RE2 expression, matched against the whole value")
		return nil
	}
	if len(pattern) > maxRegexLength {
		v.errorf(f, "regular expression is %d bytes long: use at most %d", len(pattern), maxRegexLength)
		return nil
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		v.errorf(f, "invalid RE2 regular expression: %v", err)
		return nil
	}
	return re
}

// checkHeaderName records a violation when gRPC clients cannot see header
// name in a call's metadata, for route matching and hashing alike.
func (v *validator) checkHeaderName(f, name string) {
	switch {
	case name == "":
		v.errorf(f, "required: a lower-case metadata key such as \"x-user\"")
	case strings.HasPrefix(name, ":"):
		v.errorf(f, "%q is a pseudo-header; gRPC clients route and hash on the call's metadata, which holds no pseudo-header (not even :authority): use a metadata key", name)
	case strings.ToLower(name) != name && headerNamePattern.MatchString(strings.ToLower(name)):
		v.errorf(f, "%q has upper-case letters; gRPC metadata keys are lower case: use %q", name, strings.ToLower(name))
	case !headerNamePattern.MatchString(name):
		v.errorf(f, "%q is not a gRPC metadata key: use lower-case letters, digits, '-', '_' and '.'", name)
	case strings.HasSuffix(name, "-bin"):
		v.errorf(f, "%q is a binary header, which gRPC clients leave out of routing and hashing: use a text header", name)
	case strings.HasPrefix(name, "grpc-"):
		v.errorf(f, "%q has the \"grpc-\" prefix, which gRPC reserves for itself; what gRPC sends there is not visible to routing: use another key", name)
	case name == "te" || name == "user-agent":
		v.errorf(f, "%q is set by the gRPC transport and not visible to routing: use a metadata key set by the caller", name)
	}
}

func (v *validator) headerMatch(f string, h *policyv1.HeaderMatch) {
	if h == nil {
		v.errorf(f, "empty header matcher: set name and one of exact, prefix, suffix, regex or present")
		return
	}
	v.checkHeaderName(field(f, "name"), h.Name)
	switch m := h.Match.(type) {
	case nil:
		v.errorf(f, "no match set: set one of exact, prefix, suffix, regex or present")
	case *policyv1.HeaderMatch_Exact:
		v.headerValue(field(f, "exact"), m.Exact, true)
	case *policyv1.HeaderMatch_Prefix:
		v.headerValue(field(f, "prefix"), m.Prefix, false)
	case *policyv1.HeaderMatch_Suffix:
		v.headerValue(field(f, "suffix"), m.Suffix, false)
	case *policyv1.HeaderMatch_Regex:
		v.regex(field(f, "regex"), m.Regex)
	case *policyv1.HeaderMatch_Present:
		// true: present with any value; false: absent.
	}
}

func (v *validator) headerValue(f, value string, emptyOK bool) {
	if value == "" && !emptyOK {
		v.errorf(f, "empty: gRPC refuses an empty prefix or suffix; use present: true to match any value")
		return
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < 0x20 || c > 0x7e {
			v.errorf(f, "contains byte 0x%02x at offset %d; gRPC metadata values are printable ASCII (0x20 to 0x7e), so it can never match", c, i)
			return
		}
	}
}

// destination checks a destination; nil is the policy's own service.
func (v *validator) destination(f string, d *policyv1.Destination) {
	svc := d.GetService()
	own := svc == "" || svc == v.p.Service
	if !own {
		if !names.ValidService(svc) {
			v.errorf(field(f, "service"), "%q is not a valid service name: use letters, digits, '.', '-' and '_', starting and ending with a letter, digit or '_'; leave it empty for the policy's own service", svc)
			return
		}
		if v.env.KnownService != nil && !v.env.KnownService(svc) {
			v.warnf(field(f, "service"), "service %q is not registered in Consul; calls routed to it fail until it is", svc)
		}
	}
	subset := d.GetSubset()
	if subset == "" {
		return
	}
	if own {
		if !slices.Contains(v.subsets, subset) {
			v.errorf(field(f, "subset"), "subset %q is not defined in this policy; defined subsets: %s", subset, listOrNone(v.subsets))
		}
		return
	}
	if v.env.PolicyOf == nil {
		return
	}
	other := v.env.PolicyOf(svc)
	if other == nil {
		v.errorf(field(f, "subset"), "service %q has no policy, so it defines no subsets: define subset %q in its policy first, or leave subset empty for all its instances", svc, subset)
		return
	}
	var names []string
	for _, s := range other.GetSubsets() {
		names = append(names, s.GetName())
	}
	if !slices.Contains(names, subset) {
		v.errorf(field(f, "subset"), "subset %q is not defined in the policy of service %q; its subsets: %s", subset, svc, listOrNone(names))
	}
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func (v *validator) split(f string, s *policyv1.WeightedSplit) {
	if len(s.GetDestinations()) == 0 {
		v.errorf(field(f, "destinations"), "a split needs at least one destination with a weight")
		return
	}
	var total uint64
	seen := map[[2]string]int{}
	for i, wd := range s.Destinations {
		wf := index(field(f, "destinations"), i)
		d := wd.GetDestination()
		v.destination(field(wf, "destination"), d)
		svc := d.GetService()
		if svc == "" {
			svc = v.p.Service
		}
		key := [2]string{svc, d.GetSubset()}
		if j, dup := seen[key]; dup {
			v.errorf(field(wf, "destination"), "same destination as destinations[%d]: list each service and subset once, with the sum of the weights", j)
		} else {
			seen[key] = i
		}
		total += uint64(wd.GetWeight())
	}
	switch {
	case total == 0:
		v.errorf(field(f, "destinations"), "the weights sum to 0: at least one weight must be greater than 0")
	case total > math.MaxUint32:
		v.errorf(field(f, "destinations"), "the weights sum to %d: the sum must not exceed %d", total, uint64(math.MaxUint32))
	}
}

func (v *validator) settings(f string, s *policyv1.RouteSettings) {
	if s.Timeout != nil {
		v.duration(field(f, "timeout"), s.Timeout, minTimeout, maxTimeout)
	}
	if s.Retry != nil {
		v.retry(field(f, "retry"), s.Retry)
	}
	if s.Fault != nil {
		v.fault(field(f, "fault"), s.Fault)
	}
	for i, h := range s.HashPolicy {
		hf := index(field(f, "hash_policy"), i)
		switch hp := h.GetPolicy().(type) {
		case nil:
			v.errorf(hf, "no policy set: set header (a lower-case metadata key) or channel_id: true")
		case *policyv1.HashPolicy_Header:
			v.checkHeaderName(field(hf, "header"), hp.Header)
		case *policyv1.HashPolicy_ChannelId:
			if !hp.ChannelId {
				v.errorf(field(hf, "channel_id"), "false hashes nothing: set channel_id: true to keep each client channel on one instance, or remove the hash policy")
			}
		}
	}
}

// duration checks d against [lo, hi]. Callers skip nil durations.
func (v *validator) duration(f string, d *durationpb.Duration, lo, hi time.Duration) {
	if err := d.CheckValid(); err != nil {
		v.errorf(f, "invalid duration (%v): use %s to %s", err, fmtDuration(lo), fmtDuration(hi))
		return
	}
	if got := d.AsDuration(); got < lo || got > hi {
		v.errorf(f, "%s is out of range: use %s to %s", fmtDuration(got), fmtDuration(lo), fmtDuration(hi))
	}
}

// fmtDuration prints a duration without zero units: 24h, 1m30s, 250ms.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func retryableList() string {
	names := make([]string, len(retryableCodes))
	for i, c := range retryableCodes {
		names[i] = CodeName(c)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (v *validator) retry(f string, r *policyv1.RetryPolicy) {
	if len(r.RetryOn) == 0 {
		v.errorf(field(f, "retry_on"), "required: the status codes to retry on, from %s", retryableList())
	}
	for i, name := range r.RetryOn {
		c, ok := ParseCode(name)
		switch {
		case !ok:
			v.errorf(index(field(f, "retry_on"), i), "%q is not a gRPC status code name; gRPC retries on %s", name, retryableList())
		case !isRetryable(c):
			v.errorf(index(field(f, "retry_on"), i), "gRPC clients do not retry on %s; they retry on %s", CodeName(c), retryableList())
		}
	}
	switch {
	case r.NumRetries == 0:
		v.errorf(field(f, "num_retries"), "required: retries after the first attempt, 1 to %d", maxRetries)
	case r.NumRetries > maxRetries:
		v.errorf(field(f, "num_retries"), "%d is more than gRPC makes (it caps a call at %d attempts): use 1 to %d", r.NumRetries, maxRetries+1, maxRetries)
	}
	base := defaultBaseBackoff
	if r.BaseInterval != nil {
		v.duration(field(f, "base_interval"), r.BaseInterval, minBackoff, maxBaseBackoff)
		if r.BaseInterval.CheckValid() == nil {
			base = r.BaseInterval.AsDuration()
		}
	}
	if r.MaxInterval != nil {
		v.duration(field(f, "max_interval"), r.MaxInterval, minBackoff, maxMaxBackoff)
		if r.MaxInterval.CheckValid() == nil && r.MaxInterval.AsDuration() < base {
			what := "base_interval"
			if r.BaseInterval == nil {
				what = "the default base_interval"
			}
			v.errorf(field(f, "max_interval"), "%s is shorter than %s (%s): use at least %s", fmtDuration(r.MaxInterval.AsDuration()), what, fmtDuration(base), fmtDuration(base))
		}
	}
}

func abortableList() string {
	names := make([]string, 0, len(codeNames)-1)
	for _, n := range codeNames[1:] {
		names = append(names, n)
	}
	return strings.Join(names, ", ")
}

func (v *validator) fault(f string, fi *policyv1.FaultInjection) {
	if fi.Delay == nil && fi.Abort == nil {
		v.errorf(f, "empty fault injection, which gRPC ignores: set delay, abort or both")
		return
	}
	if d := fi.Delay; d != nil {
		df := field(f, "delay")
		if d.FixedDelay == nil {
			v.errorf(field(df, "fixed_delay"), "required: the delay added to a call, %s to %s", fmtDuration(minFaultDelay), fmtDuration(maxFaultDelay))
		} else {
			v.duration(field(df, "fixed_delay"), d.FixedDelay, minFaultDelay, maxFaultDelay)
		}
		v.faultPercent(field(df, "percent"), d.Percent, "delayed")
	}
	if a := fi.Abort; a != nil {
		af := field(f, "abort")
		c, ok := ParseCode(a.Code)
		switch {
		case a.Code == "":
			v.errorf(field(af, "code"), "required: the status code aborted calls fail with, one of %s", abortableList())
		case !ok:
			v.errorf(field(af, "code"), "%q is not a gRPC status code name: use one of %s", a.Code, abortableList())
		case c == 0:
			v.errorf(field(af, "code"), "OK does not abort a call: use one of %s", abortableList())
		}
		v.faultPercent(field(af, "percent"), a.Percent, "aborted")
	}
}

func (v *validator) faultPercent(f string, pct uint32, what string) {
	switch {
	case pct > 100:
		v.errorf(f, "%d is not a percentage: use 0 to 100", pct)
	case pct == 0:
		v.warnf(f, "0: no call is %s; set 1 to 100 to inject the fault", what)
	}
}

func (v *validator) loadBalancing(f string, lb *policyv1.LoadBalancing) {
	switch p := lb.Policy.(type) {
	case *policyv1.LoadBalancing_RingHash:
		rf := field(f, "ring_hash")
		rh := p.RingHash
		minSize, maxSize := uint64(defaultMinRingSize), uint64(defaultMaxRingSize)
		okSizes := true
		for _, s := range []struct {
			name string
			val  uint64
			eff  *uint64
		}{{"minimum_ring_size", rh.GetMinimumRingSize(), &minSize}, {"maximum_ring_size", rh.GetMaximumRingSize(), &maxSize}} {
			switch {
			case s.val == 0:
			case s.val > maxRingSize:
				v.errorf(field(rf, s.name), "%d is more than gRPC accepts: use 1 to %d", s.val, maxRingSize)
				okSizes = false
			default:
				*s.eff = s.val
				if s.val > clientRingSizeCap {
					v.warnf(field(rf, s.name), "%d: grpc-go clients cap the ring at %d entries unless GRPC_RING_HASH_CAP is raised", s.val, clientRingSizeCap)
				}
			}
		}
		if okSizes && minSize > maxSize {
			v.errorf(field(rf, "minimum_ring_size"), "minimum ring size %d is greater than maximum ring size %d (defaults: %d and %d): set minimum_ring_size <= maximum_ring_size", minSize, maxSize, defaultMinRingSize, defaultMaxRingSize)
		}
	case *policyv1.LoadBalancing_LeastRequest:
		if cc := p.LeastRequest.GetChoiceCount(); cc != 0 && (cc < minChoiceCount || cc > maxChoiceCount) {
			v.errorf(field(field(f, "least_request"), "choice_count"), "%d is out of range: use %d to %d (0 or unset: %d)", cc, minChoiceCount, maxChoiceCount, minChoiceCount)
		}
	case *policyv1.LoadBalancing_WeightedRoundRobin:
		v.weightedRoundRobin(field(f, "weighted_round_robin"), p.WeightedRoundRobin)
	case *policyv1.LoadBalancing_RoundRobin, *policyv1.LoadBalancing_PickFirst, nil:
	}
}

func (v *validator) weightedRoundRobin(f string, w *policyv1.WeightedRoundRobin) {
	if w == nil {
		return
	}
	if w.OobReportingPeriod != nil {
		of := field(f, "oob_reporting_period")
		if !w.EnableOobLoadReport {
			v.errorf(of, "gRPC ignores it unless enable_oob_load_report is true: set enable_oob_load_report: true or remove it")
		} else {
			v.duration(of, w.OobReportingPeriod, minOOBReportingPeriod, maxWRRDuration)
			if d := w.OobReportingPeriod.AsDuration(); w.OobReportingPeriod.CheckValid() == nil && d >= minOOBReportingPeriod && d < orcaServerMinReportingPeriod {
				v.warnf(of, "%s: grpc-go ORCA services report at most every %s unless their MinReportingInterval is lowered", fmtDuration(d), fmtDuration(orcaServerMinReportingPeriod))
			}
		}
	}
	if w.WeightExpirationPeriod != nil {
		v.duration(field(f, "weight_expiration_period"), w.WeightExpirationPeriod, minWeightExpiration, maxWRRDuration)
	}
	if w.WeightUpdatePeriod != nil {
		// grpc-go raises shorter periods to 100ms.
		v.duration(field(f, "weight_update_period"), w.WeightUpdatePeriod, minWeightUpdatePeriod, maxWRRDuration)
	}
	if p := float64(w.ErrorUtilizationPenalty); math.IsNaN(p) || math.IsInf(p, 0) || p < 0 {
		v.errorf(field(f, "error_utilization_penalty"), "%v: use a finite number >= 0 (0 or unset: gRPC's default, 1)", w.ErrorUtilizationPenalty)
	}
}

func (v *validator) circuitBreaker(f string, cb *policyv1.CircuitBreaker) {
	if n := cb.MaxRequests; n > maxCircuitBreakerRequests {
		v.errorf(field(f, "max_requests"), "%d is out of range: use 1 to %d (0 or unset: 1024)", n, maxCircuitBreakerRequests)
	}
}

func (v *validator) outlierDetection(f string, od *policyv1.OutlierDetection) {
	if od.SuccessRate == nil && od.FailurePercentage == nil {
		v.errorf(f, "no ejection algorithm: set success_rate, failure_percentage or both (each may be empty to use its defaults)")
	}
	if od.Interval != nil {
		v.duration(field(f, "interval"), od.Interval, minODInterval, maxODDuration)
	}
	base := defaultBaseEjectionTime
	if od.BaseEjectionTime != nil {
		v.duration(field(f, "base_ejection_time"), od.BaseEjectionTime, minEjectionTime, maxODDuration)
		if od.BaseEjectionTime.CheckValid() == nil {
			base = od.BaseEjectionTime.AsDuration()
		}
	}
	if od.MaxEjectionTime != nil {
		v.duration(field(f, "max_ejection_time"), od.MaxEjectionTime, minEjectionTime, maxODDuration)
		if od.MaxEjectionTime.CheckValid() == nil && od.MaxEjectionTime.AsDuration() < base {
			what := "base_ejection_time"
			if od.BaseEjectionTime == nil {
				what = "the default base_ejection_time"
			}
			v.errorf(field(f, "max_ejection_time"), "%s is shorter than %s (%s), and gRPC uses the longer of the two: use at least %s", fmtDuration(od.MaxEjectionTime.AsDuration()), what, fmtDuration(base), fmtDuration(base))
		}
	}
	if od.MaxEjectionPercent != nil {
		switch n := *od.MaxEjectionPercent; {
		case n > 100:
			v.errorf(field(f, "max_ejection_percent"), "%d is not a percentage: use 0 to 100 (unset: 10)", n)
		case n == 0:
			v.warnf(field(f, "max_ejection_percent"), "0: no instance is ever ejected")
		}
	}
	if sr := od.SuccessRate; sr != nil {
		v.enforcement(field(field(f, "success_rate"), "enforcement_percentage"), sr.EnforcementPercentage, "success-rate")
	}
	if fp := od.FailurePercentage; fp != nil {
		ff := field(f, "failure_percentage")
		if fp.Threshold != nil && *fp.Threshold > 100 {
			v.errorf(field(ff, "threshold"), "%d is not a percentage: use 0 to 100 (unset: 85)", *fp.Threshold)
		}
		v.enforcement(field(ff, "enforcement_percentage"), fp.EnforcementPercentage, "failure-percentage")
	}
}

func (v *validator) enforcement(f string, pct *uint32, algorithm string) {
	if pct == nil {
		return
	}
	switch {
	case *pct > 100:
		v.errorf(f, "%d is not a percentage: use 0 to 100 (unset: 100)", *pct)
	case *pct == 0:
		v.warnf(f, "0: %s ejection is disabled", algorithm)
	}
}

// hashPolicyTargets checks that hash policies reach ring hash load
// balancing: the effective hash policy of each route (its own, else the
// defaults') for each of its destinations, and the defaults' for calls that
// match no route.
func (v *validator) hashPolicyTargets() {
	ownRing := v.p.GetLoadBalancing().GetRingHash() != nil
	defaultsHash := len(v.p.GetDefaults().GetHashPolicy()) > 0
	ownErr := map[string]bool{} // hash policy fields already reported
	ownMismatch := func(f string) {
		if !ownErr[f] {
			ownErr[f] = true
			v.errorf(f, "hash policies take effect only with ring hash load balancing, and service %q does not use it: set load_balancing.ring_hash or remove the hash policy", v.p.Service)
		}
	}
	catchAll := false
	for i, r := range v.p.Routes {
		if r == nil {
			continue
		}
		hf := field(field(index("routes", i), "settings"), "hash_policy")
		if len(r.GetSettings().GetHashPolicy()) == 0 {
			if !defaultsHash {
				if matchesEverything(r) {
					catchAll = true
					break
				}
				continue
			}
			hf = "defaults.hash_policy"
		}
		for _, d := range routeDestinations(r) {
			svc := d.GetService()
			if svc == "" || svc == v.p.Service {
				if !ownRing {
					ownMismatch(hf)
				}
				continue
			}
			if v.env.PolicyOf == nil {
				continue
			}
			if v.env.PolicyOf(svc).GetLoadBalancing().GetRingHash() == nil {
				v.warnf(hf, "routes[%d] sends calls to service %q, which does not use ring hash load balancing, so the hash policy has no effect there", i, svc)
			}
		}
		if matchesEverything(r) {
			catchAll = true
			break
		}
	}
	if defaultsHash && !catchAll && !ownRing {
		ownMismatch("defaults.hash_policy")
	}
}

// routeDestinations lists where a route sends calls; a nil Destination is
// the policy's own service.
func routeDestinations(r *policyv1.Route) []*policyv1.Destination {
	switch a := r.Action.(type) {
	case *policyv1.Route_Destination:
		return []*policyv1.Destination{a.Destination}
	case *policyv1.Route_Split:
		var out []*policyv1.Destination
		for _, wd := range a.Split.GetDestinations() {
			out = append(out, wd.GetDestination())
		}
		return out
	default:
		return []*policyv1.Destination{nil}
	}
}
