package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTemplate is the path template of the default SPIFFE ID scheme, the
// one Consul uses for its service identities:
// spiffe://<trust domain>/ns/<namespace>/dc/<datacenter>/svc/<service>.
const DefaultTemplate = "/ns/{namespace}/dc/{datacenter}/svc/{service}"

// DefaultNamespace is the namespace of a workload that names none.
const DefaultNamespace = "default"

// Template placeholders.
const (
	placeholderNamespace  = "{namespace}"
	placeholderDatacenter = "{datacenter}"
	placeholderService    = "{service}"
)

// Workload names a Trellis workload: the inputs of a SPIFFE ID.
type Workload struct {
	// TrustDomain is the SPIFFE trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Datacenter is the Consul datacenter. Required when the scheme's
	// template contains {datacenter}.
	Datacenter string
	// Namespace is the Consul namespace. Default: "default".
	Namespace string
	// Service is the service name. Required.
	Service string
}

// Scheme maps workloads to SPIFFE IDs and back, following a path template.
// A Scheme is immutable and safe for concurrent use.
type Scheme struct {
	template string
	segments []string // literal segments, or a placeholder
}

// DefaultScheme returns the scheme of DefaultTemplate.
func DefaultScheme() *Scheme {
	// DefaultTemplate is valid: TestDefaultScheme checks it against NewScheme.
	return &Scheme{template: DefaultTemplate, segments: strings.Split(DefaultTemplate[1:], "/")}
}

// NewScheme validates a path template and returns its scheme.
//
// A template is an absolute SPIFFE ID path whose segments are either literal
// (letters, digits, '.', '-', '_') or one of the placeholders {namespace},
// {datacenter} and {service}, each used at most once and always as a whole
// segment, so that every ID parses back unambiguously. {service} is required.
// Example: "/ns/{namespace}/dc/{datacenter}/svc/{service}".
func NewScheme(template string) (*Scheme, error) {
	if !strings.HasPrefix(template, "/") {
		return nil, fmt.Errorf("identity: SPIFFE ID template %q: must start with '/'", template)
	}
	segments := strings.Split(template[1:], "/")
	seen := map[string]bool{}
	for i, seg := range segments {
		switch seg {
		case placeholderNamespace, placeholderDatacenter, placeholderService:
			if seen[seg] {
				return nil, fmt.Errorf("identity: SPIFFE ID template %q: placeholder %s used more than once", template, seg)
			}
			seen[seg] = true
			continue
		}
		if strings.ContainsAny(seg, "{}") {
			return nil, fmt.Errorf("identity: SPIFFE ID template %q: segment %d %q: placeholders must fill a whole segment and be one of %s, %s, %s",
				template, i+1, seg, placeholderNamespace, placeholderDatacenter, placeholderService)
		}
		if err := spiffeid.ValidatePathSegment(seg); err != nil {
			return nil, fmt.Errorf("identity: SPIFFE ID template %q: segment %d %q: %w", template, i+1, seg, err)
		}
	}
	if !seen[placeholderService] {
		return nil, fmt.Errorf("identity: SPIFFE ID template %q: must contain %s", template, placeholderService)
	}
	return &Scheme{template: template, segments: segments}, nil
}

// Template returns the scheme's path template.
func (s *Scheme) Template() string { return s.template }

// String returns the scheme's path template.
func (s *Scheme) String() string { return s.template }

// ID returns the SPIFFE ID of w.
func (s *Scheme) ID(w Workload) (spiffeid.ID, error) {
	if w.TrustDomain.IsZero() {
		return spiffeid.ID{}, errors.New("identity: workload has no trust domain")
	}
	if w.Namespace == "" {
		w.Namespace = DefaultNamespace
	}
	out := make([]string, len(s.segments))
	for i, seg := range s.segments {
		var field, value string
		switch seg {
		case placeholderNamespace:
			field, value = "namespace", w.Namespace
		case placeholderDatacenter:
			field, value = "datacenter", w.Datacenter
		case placeholderService:
			field, value = "service", w.Service
		default:
			out[i] = seg
			continue
		}
		if err := spiffeid.ValidatePathSegment(value); err != nil {
			return spiffeid.ID{}, fmt.Errorf("identity: %s %q: %w (allowed: letters, digits, '.', '-', '_')", field, value, err)
		}
		out[i] = value
	}
	id, err := spiffeid.FromSegments(w.TrustDomain, out...)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: SPIFFE ID of %+v: %w", w, err)
	}
	return id, nil
}

// Parse returns the workload that id names under the scheme. Fields whose
// placeholder the template lacks are left empty.
func (s *Scheme) Parse(id spiffeid.ID) (Workload, error) {
	if id.IsZero() {
		return Workload{}, errors.New("identity: parse: empty SPIFFE ID")
	}
	w := Workload{TrustDomain: id.TrustDomain()}
	path := id.Path()
	if path == "" {
		return Workload{}, fmt.Errorf("identity: parse %q: no path, want %s", id, s.template)
	}
	got := strings.Split(path[1:], "/")
	if len(got) != len(s.segments) {
		return Workload{}, fmt.Errorf("identity: parse %q: %d path segments, template %s has %d", id, len(got), s.template, len(s.segments))
	}
	for i, seg := range s.segments {
		switch seg {
		case placeholderNamespace:
			w.Namespace = got[i]
		case placeholderDatacenter:
			w.Datacenter = got[i]
		case placeholderService:
			w.Service = got[i]
		default:
			if got[i] != seg {
				return Workload{}, fmt.Errorf("identity: parse %q: segment %d is %q, template %s wants %q", id, i+1, got[i], s.template, seg)
			}
		}
	}
	return w, nil
}
