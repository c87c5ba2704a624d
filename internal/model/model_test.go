package model

import (
	"fmt"
	"slices"
	"testing"
)

func TestChangedSince(t *testing.T) {
	svc := func(name string) *Service { return &Service{Name: name} }
	first := (*Snapshot)(nil).Next(map[string]*Service{"a": svc("a"), "b": svc("b")}, nil)
	if _, ok := first.ChangedSince(nil); ok {
		t.Error("ChangedSince(nil) answered")
	}
	if names, ok := first.ChangedSince(first); !ok || len(names) != 0 {
		t.Errorf("ChangedSince(itself) = %v, %v; want nothing, true", names, ok)
	}
	second := first.Next(map[string]*Service{"a": first.Services["a"], "b": svc("b")}, []string{"b"})
	third := second.Next(map[string]*Service{"a": first.Services["a"], "b": second.Services["b"], "c": svc("c")}, []string{"c"})
	if names, ok := third.ChangedSince(first); !ok || !slices.Equal(names, []string{"b", "c"}) {
		t.Errorf("third since first = %v, %v; want [b c], true", names, ok)
	}
	if names, ok := third.ChangedSince(second); !ok || !slices.Equal(names, []string{"c"}) {
		t.Errorf("third since second = %v, %v; want [c], true", names, ok)
	}
	if _, ok := first.ChangedSince(third); ok {
		t.Error("an older snapshot answered for a newer one")
	}
	other := (*Snapshot)(nil).Next(first.Services, nil)
	if _, ok := other.ChangedSince(first); ok {
		t.Error("a snapshot of another lineage answered")
	}
	if _, ok := NewSnapshot(nil).ChangedSince(NewSnapshot(nil)); ok {
		t.Error("snapshots made without Next answered")
	}
	s := first
	for i := range MaxChangeHistory + 1 {
		s = s.Next(s.Services, []string{fmt.Sprint(i)})
	}
	if _, ok := s.ChangedSince(first); ok {
		t.Errorf("answered across more than %d generations", MaxChangeHistory)
	}
	if names, ok := s.ChangedSince(third); !ok || len(names) != MaxChangeHistory-1 {
		t.Errorf("within %d generations: %d names, %v; want %d, true", MaxChangeHistory, len(names), ok, MaxChangeHistory-1)
	}
}
