package consulconfig

import (
	"errors"
	"regexp"
	"slices"
	"sort"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Merged is the set of policies in effect: Trellis's own and those
// converted from discovery chains.
type Merged struct {
	// Policies are the policies in effect, by service, in canonical form.
	Policies map[string]*policyv1.ServicePolicy
	// FromChains lists the services whose policy comes from their chain,
	// sorted.
	FromChains []string
	// Overridden lists the services with a chain that Trellis's own policy
	// replaces, sorted.
	Overridden []string
	// Unsupported is what the chains express that is not sent, sorted by
	// service, entry and field: what gRPC cannot honour, and parts refused
	// by policy validation (with the violation).
	Unsupported []Unsupported
}

// routeField reads the route index of a violation's field path.
var (
	routeField    = regexp.MustCompile(`^routes\[(\d+)\]`)
	failoverField = regexp.MustCompile(`^failover\b`)
	subsetField   = regexp.MustCompile(`^subsets\[(\d+)\]`)
)

// maxFixups bounds the rounds of dropping refused parts of one policy;
// each round drops at least one part, and a policy has few.
const maxFixups = 8

// Merge combines Trellis's policies with the converted chains. A Trellis
// policy replaces its service's chain whole. A converted policy is
// validated like a stored one (policy.Validate, against the policies in
// effect for the services it routes to); a route, subset or load balancer
// that validation refuses is left out and reported against its entry, so
// that what is sent is valid by construction and nothing refused goes
// unreported. trellis is not modified.
func Merge(trellis map[string]*policyv1.ServicePolicy, converted map[string]*Converted, knownService func(string) bool) *Merged {
	m := &Merged{Policies: make(map[string]*policyv1.ServicePolicy, len(trellis)+len(converted))}
	for svc, p := range trellis {
		m.Policies[svc] = p
	}
	// First each chain policy on its own, then against the others as they
	// will be in effect.
	self := map[string]*policyv1.ServicePolicy{}
	for _, svc := range sortedKeys(converted) {
		c := converted[svc]
		if _, ok := trellis[svc]; ok {
			if c.Policy != nil {
				m.Overridden = append(m.Overridden, svc)
			}
			continue
		}
		m.Unsupported = append(m.Unsupported, c.unsupp...)
		if c.Policy == nil {
			continue
		}
		if p, _ := fixup(c, policy.Env{}); p != nil {
			self[svc] = p
		}
	}
	env := policy.Env{
		KnownService: knownService,
		PolicyOf: func(svc string) *policyv1.ServicePolicy {
			if p, ok := trellis[svc]; ok {
				return p
			}
			return self[svc]
		},
	}
	for _, svc := range sortedKeys(converted) {
		c := converted[svc]
		if _, ok := trellis[svc]; ok || c.Policy == nil {
			continue
		}
		p, refused := fixup(c, env)
		m.Unsupported = append(m.Unsupported, refused...)
		if p != nil {
			m.Policies[svc] = p
			m.FromChains = append(m.FromChains, svc)
		}
	}
	sort.SliceStable(m.Unsupported, func(i, j int) bool {
		a, b := m.Unsupported[i], m.Unsupported[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Entry != b.Entry {
			return a.Entry < b.Entry
		}
		return a.Field < b.Field
	})
	return m
}

// fixup validates c's policy, leaving out what validation refuses until
// the rest is valid; nil when nothing valid remains.
func fixup(c *Converted, env policy.Env) (*policyv1.ServicePolicy, []Unsupported) {
	p := policy.Normalize(c.Policy)
	routes := slices.Clone(c.routes)
	var refused []Unsupported
	for range maxFixups {
		_, err := policy.Validate(p, env)
		if err == nil {
			return p, refused
		}
		var verr *policy.ValidationError
		if !errors.As(err, &verr) {
			break
		}
		p = proto.CloneOf(p)
		dropRoutes := map[int]bool{}
		dropSubsets := map[int]bool{}
		whole := false
		for _, v := range verr.Violations {
			reason := "refused by policy validation, not sent: " + v.String()
			switch {
			case routeField.MatchString(v.Field):
				i, _ := strconv.Atoi(routeField.FindStringSubmatch(v.Field)[1])
				if i < len(routes) && !dropRoutes[i] {
					dropRoutes[i] = true
					refused = append(refused, Unsupported{Service: c.service, Entry: routes[i].entry, Field: routes[i].field, Reason: reason})
				}
			case subsetField.MatchString(v.Field):
				i, _ := strconv.Atoi(subsetField.FindStringSubmatch(v.Field)[1])
				if i < len(p.Subsets) && !dropSubsets[i] {
					dropSubsets[i] = true
					refused = append(refused, Unsupported{Service: c.service, Entry: "service-resolver/" + c.service,
						Field: "Subsets[" + strconv.Quote(p.Subsets[i].GetName()) + "]", Reason: reason})
				}
			case failoverField.MatchString(v.Field) && p.Failover != nil:
				p.Failover = nil
				refused = append(refused, Unsupported{Service: c.service, Entry: c.foFrom.entry, Field: c.foFrom.field, Reason: reason})
			case p.LoadBalancing != nil || p.Defaults != nil:
				p.LoadBalancing, p.Defaults = nil, nil
				refused = append(refused, Unsupported{Service: c.service, Entry: c.lbFrom.entry, Field: c.lbFrom.field, Reason: reason})
			default:
				whole = true
				refused = append(refused, Unsupported{Service: c.service, Entry: "discovery-chain/" + c.service, Reason: reason})
			}
		}
		if whole {
			return nil, refused
		}
		p.Routes = dropIndexes(p.Routes, dropRoutes)
		routes = dropIndexes(routes, dropRoutes)
		p.Subsets = dropIndexes(p.Subsets, dropSubsets)
		if len(p.Routes) == 0 && len(p.Subsets) == 0 && p.LoadBalancing == nil && p.Defaults == nil && p.Failover == nil {
			return nil, refused
		}
	}
	refused = append(refused, Unsupported{Service: c.service, Entry: "discovery-chain/" + c.service, Reason: "no valid policy could be made of the chain: not sent"})
	return nil, refused
}

func dropIndexes[T any](s []T, drop map[int]bool) []T {
	if len(drop) == 0 {
		return s
	}
	out := make([]T, 0, len(s))
	for i, v := range s {
		if !drop[i] {
			out = append(out, v)
		}
	}
	return out
}
