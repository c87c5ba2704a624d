package store

import (
	"fmt"

	"github.com/trellis-mesh/trellis/internal/policy"
)

// MissingDestinations returns the routes of the snapshot's policies that
// send calls to a subset the destination service's policy in effect does
// not define (policy.MissingDestinations). Such a policy is in effect, but
// the translation leaves those routes (or split entries) out, so what is
// reported about it (readiness, log) must say so.
func (s *Snapshot) MissingDestinations() []policy.BrokenRoute {
	if s == nil {
		return nil
	}
	return policy.MissingDestinations(s.Policies)
}

// DegradedDetail returns one line per route of MissingDestinations, for
// /readyz and the log: `policy of service "src" (revision 12) is in effect
// without routes[0] (canary): subset "s1" of service "dep" is not defined;
// its calls go to the next matching route`.
func (s *Snapshot) DegradedDetail() []string {
	var out []string
	for _, b := range s.MissingDestinations() {
		out = append(out, fmt.Sprintf("policy of service %q (revision %d) is in effect without %s: subset %q of service %q is not defined; its calls go to the next matching route",
			b.Service, s.Revisions[b.Service], b.Route, b.DestinationSubset, b.DestinationService))
	}
	return out
}
