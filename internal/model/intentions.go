package model

import (
	"slices"
	"sort"
)

// Wildcard is the service name of an intention that applies to every source
// or every destination.
const Wildcard = "*"

// IntentionAction is what an intention does with the calls it matches.
type IntentionAction int

// IntentionAction values. The zero value denies.
const (
	IntentionDeny IntentionAction = iota
	IntentionAllow
)

// String returns Consul's name for the action.
func (a IntentionAction) String() string {
	switch a {
	case IntentionAllow:
		return "allow"
	case IntentionDeny:
		return "deny"
	default:
		return "unknown"
	}
}

// Intention allows or denies calls from one source service (or any, "*") to
// one destination service (or any, "*").
type Intention struct {
	// Source is the calling service's name, or Wildcard.
	Source string
	// Destination is the called service's name, or Wildcard.
	Destination string
	// Action is what the intention does with the calls it matches.
	Action IntentionAction
	// Precedence orders the intentions that match one call: the highest
	// decides. Exact names rank above the wildcard, the destination above
	// the source (Consul's values: 9 for exact to exact, 8 for any source
	// to an exact destination, 6 for an exact source to any destination, 5
	// for any to any).
	Precedence int
	// Conditions lists, sorted, what the intention requires of a call
	// beyond the caller's identity that Trellis does not enforce (JWT
	// requirements, unknown actions). An intention with conditions denies
	// every call from its source. Empty for an identity-only intention.
	Conditions []string
	// Permissions are the intention's L7 permissions (Consul's
	// Permissions), in order: the first that matches a call decides it,
	// and a call that none matches gets the default action. An intention
	// with permissions has Action IntentionDeny, so that a reader that
	// does not look at them denies rather than allows its calls.
	Permissions []IntentionPermission
}

// IntentionPermission is one L7 permission of an intention.
type IntentionPermission struct {
	// Action is what the permission does with the calls it matches.
	Action IntentionAction
	// HTTP is what a call must match; nil matches every call.
	HTTP *IntentionHTTPMatch
}

// IntentionHTTPMatch is the request a permission matches: every field
// set must match (at most one of the paths is set).
type IntentionHTTPMatch struct {
	// PathExact, PathPrefix and PathRegex match the request path (for gRPC,
	// "/package.Service/Method"); PathRegex is an RE2 expression matching
	// the whole path.
	PathExact, PathPrefix, PathRegex string
	// Methods are HTTP methods, upper case; the call's method must be one
	// of them. Empty: any method.
	Methods []string
	// Headers must all match.
	Headers []IntentionHeaderMatch
}

// IntentionHeaderMatch matches one request header.
type IntentionHeaderMatch struct {
	// Name is the header name, lower case.
	Name string
	// Present, or one of the value operators, is set.
	Present                                bool
	Exact, Prefix, Suffix, Contains, Regex string
	// Invert inverts the match; IgnoreCase compares values without case.
	Invert, IgnoreCase bool
}

// equalPermissions reports whether a and b are the same permissions.
func equalPermissions(a, b []IntentionPermission) bool {
	return slices.EqualFunc(a, b, func(x, y IntentionPermission) bool {
		if x.Action != y.Action || (x.HTTP == nil) != (y.HTTP == nil) {
			return false
		}
		if x.HTTP == nil {
			return true
		}
		hx, hy := x.HTTP, y.HTTP
		return hx.PathExact == hy.PathExact && hx.PathPrefix == hy.PathPrefix && hx.PathRegex == hy.PathRegex &&
			slices.Equal(hx.Methods, hy.Methods) && slices.Equal(hx.Headers, hy.Headers)
	})
}

// SameDecision reports whether a and b decide calls alike: the same
// action, precedence, conditions and permissions (source and destination
// are not compared).
func (a Intention) SameDecision(b Intention) bool {
	return a.Action == b.Action && a.Precedence == b.Precedence && slices.Equal(a.Conditions, b.Conditions) &&
		equalPermissions(a.Permissions, b.Permissions)
}

func clonePermissions(ps []IntentionPermission) []IntentionPermission {
	if ps == nil {
		return nil
	}
	out := make([]IntentionPermission, len(ps))
	for i, p := range ps {
		out[i] = p
		if p.HTTP != nil {
			h := *p.HTTP
			h.Methods = slices.Clone(h.Methods)
			h.Headers = slices.Clone(h.Headers)
			out[i].HTTP = &h
		}
	}
	return out
}

// Intentions is an immutable set of intentions, one per (source,
// destination) pair, ordered by destination then source.
type Intentions struct {
	list []Intention
}

// NewIntentions builds a set from list. When several intentions name the same
// pair, the one with the highest precedence is kept, and among equals a deny
// is kept over an allow.
func NewIntentions(list []Intention) *Intentions {
	sorted := slices.Clone(list)
	for i := range sorted {
		sorted[i].Conditions = slices.Clone(sorted[i].Conditions)
		sorted[i].Permissions = clonePermissions(sorted[i].Permissions)
		sort.Strings(sorted[i].Conditions)
	}
	sort.SliceStable(sorted, func(a, b int) bool {
		x, y := sorted[a], sorted[b]
		if x.Destination != y.Destination {
			return x.Destination < y.Destination
		}
		if x.Source != y.Source {
			return x.Source < y.Source
		}
		return outranks(x, y)
	})
	out := sorted[:0]
	for _, in := range sorted {
		if n := len(out); n > 0 && out[n-1].Source == in.Source && out[n-1].Destination == in.Destination {
			continue // out[n-1] outranks it
		}
		out = append(out, in)
	}
	return &Intentions{list: out}
}

// outranks reports whether a decides over b when both match a call: the
// higher precedence wins; on a tie a deny wins.
func outranks(a, b Intention) bool {
	if a.Precedence != b.Precedence {
		return a.Precedence > b.Precedence
	}
	return a.Action == IntentionDeny && b.Action != IntentionDeny
}

// All returns the intentions, ordered by destination then source. The slice
// must not be modified.
func (s *Intentions) All() []Intention {
	if s == nil {
		return nil
	}
	return s.list
}

// Len returns the number of intentions.
func (s *Intentions) Len() int { return len(s.All()) }

// Equal reports whether s and o hold the same intentions.
func (s *Intentions) Equal(o *Intentions) bool {
	return slices.EqualFunc(s.All(), o.All(), func(a, b Intention) bool {
		return a.Source == b.Source && a.Destination == b.Destination && a.SameDecision(b)
	})
}

// DestinationIntentions are the intentions that decide the calls to one
// destination service: the evaluated form of Intentions for it.
type DestinationIntentions struct {
	// Destination is the destination service.
	Destination string
	// Sources maps every source service that an applicable intention names
	// exactly to the intention deciding its calls, which may be a wildcard
	// intention that outranks the exact ones.
	Sources map[string]Intention
	// Wildcard is the intention deciding the calls of every source not in
	// Sources; nil when no intention does, and the default applies.
	Wildcard *Intention
}

// For evaluates the intentions that apply to calls to destination: those
// naming it and those naming any destination ("*").
func (s *Intentions) For(destination string) DestinationIntentions {
	out := DestinationIntentions{Destination: destination, Sources: map[string]Intention{}}
	var applicable []Intention
	for _, in := range s.All() {
		if in.Destination == destination || in.Destination == Wildcard {
			applicable = append(applicable, in)
		}
	}
	decide := func(source string) *Intention {
		var best *Intention
		for i, in := range applicable {
			if in.Source != source && in.Source != Wildcard {
				continue
			}
			if best == nil || outranks(in, *best) {
				best = &applicable[i]
			}
		}
		return best
	}
	if w := decide(Wildcard); w != nil {
		c := *w
		out.Wildcard = &c
	}
	for _, in := range applicable {
		if in.Source == Wildcard {
			continue
		}
		if _, done := out.Sources[in.Source]; done {
			continue
		}
		out.Sources[in.Source] = *decide(in.Source)
	}
	return out
}

// Decide returns the intention deciding the calls of source, and false when
// none does and the default applies.
func (d DestinationIntentions) Decide(source string) (Intention, bool) {
	if in, ok := d.Sources[source]; ok {
		return in, true
	}
	if d.Wildcard != nil {
		return *d.Wildcard, true
	}
	return Intention{}, false
}
