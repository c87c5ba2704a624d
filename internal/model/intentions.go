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
	// beyond the caller's identity (HTTP permissions, JWT requirements).
	// Empty for an identity-only intention.
	Conditions []string
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
		return a.Source == b.Source && a.Destination == b.Destination && a.Action == b.Action &&
			a.Precedence == b.Precedence && slices.Equal(a.Conditions, b.Conditions)
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
