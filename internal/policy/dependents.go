package policy

import (
	"fmt"
	"slices"
	"sort"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// BrokenRoute is a route of one policy that sends calls to a subset of
// another service that the other service's policy does not define (any
// more): the translation leaves such a destination out.
type BrokenRoute struct {
	// Service is the service of the policy holding the route.
	Service string
	// Route is the route, "routes[2] (canary)", with the split entry when
	// the destination is one: "routes[0] (canary).split.destinations[1]".
	Route string
	// DestinationService and DestinationSubset are the missing
	// destination.
	DestinationService, DestinationSubset string
}

// String is `service "src" routes[0] (canary): subset "s1" of service
// "dep" is not defined`.
func (b BrokenRoute) String() string {
	return fmt.Sprintf("service %q %s: subset %q of service %q is not defined", b.Service, b.Route, b.DestinationSubset, b.DestinationService)
}

// BrokenBy returns the routes of policies (by service) that a change of
// service's policy to next (nil: deleted) leaves without their
// destination: the routes to a subset of service that next does not
// define. Routes already broken before the change are included. The
// result is sorted by service, then route.
func BrokenBy(policies map[string]*policyv1.ServicePolicy, service string, next *policyv1.ServicePolicy) []BrokenRoute {
	subsets := subsetNames(next)
	var out []BrokenRoute
	for _, name := range sortedServices(policies) {
		if name == service {
			continue
		}
		out = append(out, brokenRoutes(policies[name], func(dest, subset string) bool {
			return dest == service && !slices.Contains(subsets, subset)
		})...)
	}
	return out
}

// MissingDestinations returns the routes of policies (the policies in
// effect, by service) that send calls to a subset another policy in
// policies does not define, sorted by service, then route. These are the
// routes the translation leaves out although their policy is in effect.
func MissingDestinations(policies map[string]*policyv1.ServicePolicy) []BrokenRoute {
	var out []BrokenRoute
	for _, name := range sortedServices(policies) {
		out = append(out, brokenRoutes(policies[name], func(dest, subset string) bool {
			return !slices.Contains(subsetNames(policies[dest]), subset)
		})...)
	}
	return out
}

// brokenRoutes lists the destinations of p naming another service's subset
// for which missing is true.
func brokenRoutes(p *policyv1.ServicePolicy, missing func(dest, subset string) bool) []BrokenRoute {
	var out []BrokenRoute
	check := func(route string, d *policyv1.Destination) {
		dest, subset := d.GetService(), d.GetSubset()
		if dest == "" || dest == p.GetService() || subset == "" || !missing(dest, subset) {
			return
		}
		out = append(out, BrokenRoute{Service: p.GetService(), Route: route, DestinationService: dest, DestinationSubset: subset})
	}
	for i, r := range p.GetRoutes() {
		label := fmt.Sprintf("routes[%d]", i)
		if r.GetName() != "" {
			label += " (" + r.GetName() + ")"
		}
		if d := r.GetDestination(); d != nil {
			check(label, d)
		}
		for j, wd := range r.GetSplit().GetDestinations() {
			check(fmt.Sprintf("%s.split.destinations[%d]", label, j), wd.GetDestination())
		}
	}
	return out
}

func subsetNames(p *policyv1.ServicePolicy) []string {
	var names []string
	for _, s := range p.GetSubsets() {
		names = append(names, s.GetName())
	}
	return names
}

func sortedServices(policies map[string]*policyv1.ServicePolicy) []string {
	names := make([]string, 0, len(policies))
	for name := range policies {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
