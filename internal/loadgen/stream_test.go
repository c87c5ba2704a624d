package loadgen

import (
	"testing"
	"time"
)

// TestFirstAfterPassesOverStreamsWithoutAnEvent checks the lock-free answer
// firstAfter gives a stream whose newest event of a type is older than the
// instant asked for, against what its log holds: at the boundary, per
// type, after ResetEvents, and for an event dropped from a full log.
func TestFirstAfterPassesOverStreamsWithoutAnEvent(t *testing.T) {
	g := &Generator{cfg: Config{MaxEventsPerStream: 3}}
	s := newStream(g, 0, "svc")
	ms := time.Millisecond
	s.record(Event{At: 10 * ms, Type: Listener})
	s.record(Event{At: 20 * ms, Type: ClusterLoadAssignment, Endpoints: 1})
	s.record(Event{At: 30 * ms, Type: ClusterLoadAssignment, Endpoints: 2})
	s.record(Event{At: 40 * ms, Type: ClusterLoadAssignment, Endpoints: 3}) // dropped: the log is full

	for _, c := range []struct {
		typ       Type
		at        time.Duration
		endpoints uint16
		ok        bool
	}{
		{ClusterLoadAssignment, 0, 1, true},
		{ClusterLoadAssignment, 20 * ms, 1, true},
		{ClusterLoadAssignment, 20*ms + 1, 2, true},
		{ClusterLoadAssignment, 30 * ms, 2, true},
		{ClusterLoadAssignment, 30*ms + 1, 0, false},
		{Listener, 10 * ms, 0, true},
		{Listener, 11 * ms, 0, false},
		{Cluster, 0, 0, false},
		{numTypes, 0, 0, false},
	} {
		ev, ok := s.firstAfter(c.typ, c.at)
		if ok != c.ok || ev.Endpoints != c.endpoints {
			t.Errorf("firstAfter(%s, %v) = %+v, %v; want %d endpoints, %v", c.typ, c.at, ev, ok, c.endpoints, c.ok)
		}
	}
	if n := g.droppedEvents.Load(); n != 1 {
		t.Errorf("%d events dropped, want 1", n)
	}

	s.resetEvents()
	if ev, ok := s.firstAfter(ClusterLoadAssignment, 0); ok {
		t.Errorf("after resetEvents: firstAfter = %+v", ev)
	}
	s.record(Event{At: 50 * ms, Type: ClusterLoadAssignment, Endpoints: 5})
	if ev, ok := s.firstAfter(ClusterLoadAssignment, 45*ms); !ok || ev.Endpoints != 5 {
		t.Errorf("after a new event: firstAfter = %+v, %v", ev, ok)
	}
}
