package model

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIntentionsFor(t *testing.T) {
	allow := func(src, dst string, prec int) Intention {
		return Intention{Source: src, Destination: dst, Action: IntentionAllow, Precedence: prec}
	}
	deny := func(src, dst string, prec int) Intention {
		return Intention{Source: src, Destination: dst, Action: IntentionDeny, Precedence: prec}
	}
	tests := []struct {
		name         string
		list         []Intention
		destination  string
		wantSources  map[string]Intention
		wantWildcard *Intention
	}{
		{
			name:        "none",
			destination: "api",
			wantSources: map[string]Intention{},
		},
		{
			name:        "exact intentions of other destinations are ignored",
			list:        []Intention{allow("web", "db", 9), deny("*", "db", 8)},
			destination: "api",
			wantSources: map[string]Intention{},
		},
		{
			name:         "exact source beats wildcard source",
			list:         []Intention{allow("web", "api", 9), deny("*", "api", 8)},
			destination:  "api",
			wantSources:  map[string]Intention{"web": allow("web", "api", 9)},
			wantWildcard: &Intention{Source: "*", Destination: "api", Action: IntentionDeny, Precedence: 8},
		},
		{
			name: "exact destination with wildcard source beats wildcard destination with exact source",
			list: []Intention{deny("web", "*", 6), allow("*", "api", 8)},
			// web is named by an applicable intention, but the
			// wildcard-source intention on api outranks it.
			destination:  "api",
			wantSources:  map[string]Intention{"web": allow("*", "api", 8)},
			wantWildcard: &Intention{Source: "*", Destination: "api", Action: IntentionAllow, Precedence: 8},
		},
		{
			name:         "wildcard destination applies",
			list:         []Intention{deny("web", "*", 6), allow("*", "*", 5)},
			destination:  "api",
			wantSources:  map[string]Intention{"web": deny("web", "*", 6)},
			wantWildcard: &Intention{Source: "*", Destination: "*", Action: IntentionAllow, Precedence: 5},
		},
		{
			name:         "duplicate pair keeps the higher precedence, deny on a tie",
			list:         []Intention{allow("web", "api", 9), deny("web", "api", 9), allow("batch", "api", 8), deny("batch", "api", 9)},
			destination:  "api",
			wantSources:  map[string]Intention{"web": deny("web", "api", 9), "batch": deny("batch", "api", 9)},
			wantWildcard: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := NewIntentions(tc.list).For(tc.destination)
			if diff := cmp.Diff(tc.wantSources, got.Sources); diff != "" {
				t.Errorf("sources (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWildcard, got.Wildcard); diff != "" {
				t.Errorf("wildcard (-want +got):\n%s", diff)
			}
			for src, want := range tc.wantSources {
				if d, ok := got.Decide(src); !ok || !cmp.Equal(d, want) {
					t.Errorf("Decide(%q) = %v, %t; want %v", src, d, ok, want)
				}
			}
			d, ok := got.Decide("someone-else")
			if (tc.wantWildcard != nil) != ok || (ok && !cmp.Equal(d, *tc.wantWildcard)) {
				t.Errorf("Decide(unnamed) = %v, %t; want %v", d, ok, tc.wantWildcard)
			}
		})
	}
}

func TestNewIntentionsSortsAndCopies(t *testing.T) {
	cond := []string{"b", "a"}
	in := []Intention{
		{Source: "web", Destination: "db", Precedence: 9, Conditions: cond},
		{Source: "*", Destination: "api", Precedence: 8},
		{Source: "batch", Destination: "api", Precedence: 9},
	}
	s := NewIntentions(in)
	cond[0] = "changed"
	want := []Intention{
		{Source: "*", Destination: "api", Precedence: 8},
		{Source: "batch", Destination: "api", Precedence: 9},
		{Source: "web", Destination: "db", Precedence: 9, Conditions: []string{"a", "b"}},
	}
	if diff := cmp.Diff(want, s.All()); diff != "" {
		t.Errorf("All (-want +got):\n%s", diff)
	}
	if !s.Equal(NewIntentions(want)) || s.Equal(NewIntentions(want[:2])) {
		t.Error("Equal disagrees with the contents")
	}
	var none *Intentions
	if none.Len() != 0 || !none.Equal(NewIntentions(nil)) {
		t.Error("a nil set is not empty")
	}
}

// TestIntentionsEqualComparesPermissions: two sets that differ only in an
// L7 permission (its action, a path or a header) are not equal, and a set
// does not share its permissions with the list it was built from.
func TestIntentionsEqualComparesPermissions(t *testing.T) {
	perm := func(action IntentionAction, path, header string) []IntentionPermission {
		return []IntentionPermission{{Action: action, HTTP: &IntentionHTTPMatch{PathExact: path, Headers: []IntentionHeaderMatch{{Name: header, Present: true}}}}}
	}
	base := []Intention{{Source: "web", Destination: "api", Precedence: 9, Permissions: perm(IntentionAllow, "/a.B/C", "x")}}
	a := NewIntentions(base)
	for name, other := range map[string][]IntentionPermission{
		"action": perm(IntentionDeny, "/a.B/C", "x"),
		"path":   perm(IntentionAllow, "/a.B/D", "x"),
		"header": perm(IntentionAllow, "/a.B/C", "y"),
		"none":   nil,
	} {
		b := NewIntentions([]Intention{{Source: "web", Destination: "api", Precedence: 9, Permissions: other}})
		if a.Equal(b) {
			t.Errorf("%s differs, yet the sets are equal", name)
		}
	}
	if !a.Equal(NewIntentions([]Intention{{Source: "web", Destination: "api", Precedence: 9, Permissions: perm(IntentionAllow, "/a.B/C", "x")}})) {
		t.Errorf("equal permissions, yet the sets differ")
	}
	base[0].Permissions[0].HTTP.Headers[0].Name = "changed"
	if got := a.All()[0].Permissions[0].HTTP.Headers[0].Name; got != "x" {
		t.Errorf("the set shares its permissions with its input: header %q", got)
	}
}
