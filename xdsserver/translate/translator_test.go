package translate

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// world is a mutable description of a translation input from which the
// random sequence of TestTranslatorMatchesTranslate builds immutable
// inputs, the way the catalog, the policy store and the intentions watcher
// do: a new pointer only for what changed.
type world struct {
	rng        *rand.Rand
	services   map[string]*model.Service
	policies   map[string]*policyv1.ServicePolicy
	security   *Security
	intentions []model.Intention

	// chain makes input build each catalog snapshot from the previous
	// one (model.Snapshot.Next), as the catalog watcher does, and keep
	// the policy map when no policy changed.
	chain        bool
	last         *model.Snapshot
	lastPolicies map[string]*policyv1.ServicePolicy
}

// serviceNames are the names the sequence draws from; one cannot be served.
var serviceNames = []string{"api", "billing", "cart", "db", "echo", "front", "geo", "has space"}

func (w *world) instance(i int) model.Instance {
	r := w.rng
	inst := model.Instance{
		ID:   fmt.Sprintf("i%d", i),
		Node: fmt.Sprintf("n%d", r.IntN(3)),
		// A small address pool, so that services share server Listener
		// addresses and instances of one service repeat an address.
		Address:    fmt.Sprintf("10.0.0.%d", 1+r.IntN(12)),
		Port:       8080 + r.IntN(2),
		Health:     model.Health(r.IntN(4)),
		Weights:    model.Weights{Passing: r.IntN(3), Warning: 1},
		Datacenter: []string{"dc1", "dc2", ""}[r.IntN(3)],
		Zone:       []string{"", "z1", "z2"}[r.IntN(3)],
	}
	if r.IntN(3) == 0 {
		inst.Tags = []string{"v2"}
	}
	switch r.IntN(6) {
	case 0:
		inst.Meta = map[string]string{MTLSMetaKey: "true", "version": "v2"}
	case 1:
		inst.Meta = map[string]string{MTLSMetaKey: "false"}
	case 2:
		inst.Meta = map[string]string{"version": "v2"}
	case 3:
		inst.Meta = map[string]string{MTLSMetaKey: "maybe"}
	}
	if r.IntN(20) == 0 {
		inst.Address = "not-an-ip"
	}
	return inst
}

func (w *world) newService(name string) *model.Service {
	svc := &model.Service{Name: name}
	for i := range 1 + w.rng.IntN(4) {
		svc.Instances = append(svc.Instances, w.instance(i))
	}
	model.SortInstances(svc.Instances)
	return svc
}

func (w *world) newPolicy(service string) *policyv1.ServicePolicy {
	r := w.rng
	dest := func() *policyv1.Destination {
		d := &policyv1.Destination{}
		if r.IntN(2) == 0 {
			d.Service = serviceNames[r.IntN(len(serviceNames)-1)]
		}
		if r.IntN(2) == 0 {
			d.Subset = []string{"v2", "canary"}[r.IntN(2)]
		}
		return d
	}
	p := &policyv1.ServicePolicy{Service: service}
	if r.IntN(2) == 0 {
		p.Subsets = []*policyv1.Subset{{Name: "v2", Tags: []string{"v2"}}}
	}
	for i := range r.IntN(3) {
		route := &policyv1.Route{Name: fmt.Sprintf("r%d", i), Match: &policyv1.RouteMatch{Method: &policyv1.RouteMatch_ServicePrefix{ServicePrefix: "/pkg.Svc/"}}}
		if r.IntN(2) == 0 {
			route.Action = &policyv1.Route_Destination{Destination: dest()}
		} else {
			route.Action = &policyv1.Route_Split{Split: &policyv1.WeightedSplit{Destinations: []*policyv1.WeightedDestination{
				{Destination: dest(), Weight: 1 + uint32(r.IntN(3))},
				{Destination: dest(), Weight: uint32(r.IntN(2))},
			}}}
		}
		p.Routes = append(p.Routes, route)
	}
	if r.IntN(3) == 0 {
		p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RingHash{RingHash: &policyv1.RingHash{}}}
	}
	return p
}

func (w *world) newIntention() model.Intention {
	r := w.rng
	pick := func() string {
		if r.IntN(4) == 0 {
			return model.Wildcard
		}
		return serviceNames[r.IntN(len(serviceNames)-1)]
	}
	in := model.Intention{Source: pick(), Destination: pick(), Action: model.IntentionAction(r.IntN(2))}
	in.Precedence = consulPrecedence(in.Source, in.Destination)
	if r.IntN(5) == 0 {
		in.Conditions = []string{"HTTP permissions"}
	}
	return in
}

func (w *world) newSecurity() *Security {
	r := w.rng
	sec := &Security{MTLS: r.IntN(2) == 0, DefaultDeny: r.IntN(2) == 0, Intentions: model.NewIntentions(w.intentions)}
	if r.IntN(4) != 0 {
		sec.TrustDomain = spiffeid.RequireTrustDomainFromString("trellis.test")
	}
	return sec
}

// withIntentions is the current security input with new intentions, as
// trellis server publishes it: a new *Security.
func (w *world) withIntentions() {
	sec := *w.security0()
	sec.Intentions = model.NewIntentions(w.intentions)
	w.security = &sec
}

func (w *world) input() Input {
	services := make(map[string]*model.Service, len(w.services))
	for name, s := range w.services {
		services[name] = s
	}
	policies := make(map[string]*policyv1.ServicePolicy, len(w.policies))
	for name, p := range w.policies {
		policies[name] = p
	}
	if !w.chain {
		return Input{Catalog: &model.Snapshot{Services: services}, Policies: policies, Security: w.security}
	}
	// As the catalog watcher publishes: each snapshot made from the one
	// before, naming what changed; the policy map is kept when no policy
	// changed.
	var changed []string
	if w.last != nil {
		for name, s := range services {
			if w.last.Services[name] != s {
				changed = append(changed, name)
			}
		}
		for name := range w.last.Services {
			if _, ok := services[name]; !ok {
				changed = append(changed, name)
			}
		}
	}
	w.last = w.last.Next(services, changed)
	if maps.Equal(policies, w.lastPolicies) && w.lastPolicies != nil {
		policies = w.lastPolicies
	}
	w.lastPolicies = policies
	return Input{Catalog: w.last, Policies: policies, Security: w.security}
}

// step changes the world at random and reports which service names' own
// resources (client Listener, route, cluster, endpoints) must keep their
// pointers, all other inputs being equal.
func (w *world) step() (kept []string, what string) {
	r := w.rng
	others := func(except ...string) []string {
		var out []string
		for name := range w.services {
			if !slices.Contains(except, name) {
				out = append(out, name)
			}
		}
		return out
	}
	name := serviceNames[r.IntN(len(serviceNames))]
	switch k := r.IntN(10); {
	case k < 4: // one service's instances change, others untouched
		if _, ok := w.services[name]; !ok {
			w.services[name] = w.newService(name)
			return nil, "add " + name
		}
		w.services[name] = w.newService(name)
		if sameDatacenters(w) {
			return others(name), "change " + name
		}
		return nil, "change " + name
	case k == 4: // every service republished with equal content
		for n, s := range w.services {
			c := *s
			c.Instances = slices.Clone(s.Instances)
			w.services[n] = &c
		}
		return others(), "republish all"
	case k == 5:
		if r.IntN(3) == 0 { // the catalog's datacenters may change
			if _, ok := w.services["anchor"]; ok {
				delete(w.services, "anchor")
			} else {
				w.services["anchor"] = anchor()
			}
			return nil, "toggle anchor"
		}
		delete(w.services, name)
		return nil, "remove " + name
	case k == 6:
		if r.IntN(3) == 0 {
			delete(w.policies, name)
		} else {
			w.policies[name] = w.newPolicy(name)
		}
		return nil, "policy " + name
	case k == 7: // an intention to one exact destination
		in := w.newIntention()
		if in.Destination == model.Wildcard {
			in.Destination = name
			in.Precedence = consulPrecedence(in.Source, in.Destination)
		}
		w.intentions = append(w.intentions, in)
		if w.security == nil {
			w.withIntentions()
			return nil, "security with intentions"
		}
		w.withIntentions()
		return others(in.Destination), "intention to " + in.Destination
	case k == 8:
		if len(w.intentions) > 0 {
			w.intentions = slices.Delete(w.intentions, 0, 1)
		} else {
			w.intentions = append(w.intentions, w.newIntention())
		}
		w.withIntentions()
		return nil, "intentions"
	default:
		switch r.IntN(4) {
		case 0:
			w.security = nil
		case 1:
			if w.security == nil {
				w.security = w.newSecurity()
				return nil, "security"
			}
			sec := *w.security
			w.security = &sec // equal content, new pointer
			return others(), "same security, new pointer"
		default:
			w.security = w.newSecurity()
		}
		return nil, "security"
	}
}

func (w *world) security0() *Security {
	if w.security == nil {
		w.security = w.newSecurity()
	}
	return w.security
}

// anchor is a service with instances in both datacenters.
func anchor() *model.Service {
	return &model.Service{Name: "anchor", Instances: []model.Instance{
		{ID: "a1", Node: "n", Address: "10.1.0.1", Port: 80, Datacenter: "dc1", Weights: model.Weights{Passing: 1, Warning: 1}},
		{ID: "a2", Node: "n", Address: "10.1.0.2", Port: 80, Datacenter: "dc2", Weights: model.Weights{Passing: 1, Warning: 1}},
	}}
}

// sameDatacenters reports whether the catalog still has instances in both
// datacenters, which the anchor service guarantees.
func sameDatacenters(w *world) bool { _, ok := w.services["anchor"]; return ok }

// TestTranslatorMatchesTranslate drives random sequences of inputs through
// a Translator and through Translate, and checks that both give the same
// result at every step, and that the services a step did not touch keep
// the very same resource values.
func TestTranslatorMatchesTranslate(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			w := &world{rng: rand.New(rand.NewPCG(seed, 7)), services: map[string]*model.Service{}, policies: map[string]*policyv1.ServicePolicy{},
				chain: seed%2 == 1}
			// The anchor keeps both datacenters in the catalog.
			w.services["anchor"] = anchor()
			for _, name := range serviceNames[:5] {
				w.services[name] = w.newService(name)
			}
			w.security = w.newSecurity()
			tr := NewTranslator(Options{})
			first := tr.Translate(w.input())
			compareResults(t, "initial", Translate(w.input(), Options{}), first)
			if first.Delta != nil {
				t.Fatal("the first call has a Delta; its Resources are to be taken whole")
			}
			// A Translator updates its state in place: keep a copy of each
			// step's to compare the next with.
			prev := copyState(first.Resources.ByTypeURL())
			for i := range 300 {
				kept, what := w.step()
				in := w.input()
				got := tr.Translate(in)
				label := fmt.Sprintf("step %d (%s)", i, what)
				if !compareResults(t, label, Translate(in, Options{}), got) {
					return
				}
				cur := got.Resources.ByTypeURL()
				if got.Delta == nil {
					t.Fatalf("%s: no Delta", label)
				}
				// The previous state with the Delta applied is the new one,
				// value for value.
				if diff := deltaMismatch(prev, got.Delta, cur); diff != "" {
					t.Fatalf("%s: the previous state with the Delta applied is not the new state: %s", label, diff)
				}
				for _, name := range kept {
					if _, ok := in.Catalog.Services[name]; !ok {
						continue
					}
					for typeURL := range cur {
						samePointer(t, label+" "+typeURL, name, prev[typeURL], cur[typeURL])
					}
				}
				prev = copyState(cur)
			}
		})
	}
}

// TestTranslatorReusesEverythingUnchanged checks that translating the same
// input again, or an equal one built anew, hands back every resource
// pointer of the previous result.
func TestTranslatorReusesEverythingUnchanged(t *testing.T) {
	w := &world{rng: rand.New(rand.NewPCG(1, 2)), services: map[string]*model.Service{}, policies: map[string]*policyv1.ServicePolicy{}}
	for _, name := range serviceNames {
		w.services[name] = w.newService(name)
		w.policies[name] = w.newPolicy(name)
	}
	w.intentions = []model.Intention{w.newIntention(), w.newIntention()}
	w.security = w.newSecurity()
	tr := NewTranslator(Options{})
	first := tr.Translate(w.input())
	// Equal content, every pointer new.
	for n, s := range w.services {
		c := *s
		w.services[n] = &c
	}
	for n, p := range w.policies {
		w.policies[n] = proto.CloneOf(p)
	}
	w.withIntentions()
	second := tr.Translate(w.input())
	compareResults(t, "again", first, second)
	for typeURL, byName := range first.Resources.ByTypeURL() {
		for name, r := range byName {
			if second.Resources.ByTypeURL()[typeURL][name] != r {
				t.Errorf("%s %q: a new value for an unchanged input", typeURL, name)
			}
		}
	}
}

// copyState copies a state's maps (not its resources, which are immutable).
func copyState(s map[string]map[string]types.Resource) map[string]map[string]types.Resource {
	out := make(map[string]map[string]types.Resource, len(s))
	for typeURL, m := range s {
		out[typeURL] = maps.Clone(m)
	}
	return out
}

// deltaMismatch applies d to a copy of prev and describes how the outcome
// differs from cur; "" when it is cur exactly (the same values).
func deltaMismatch(prev map[string]map[string]types.Resource, d *Delta, cur map[string]map[string]types.Resource) string {
	next := copyState(prev)
	for typeURL, names := range d.Deleted {
		for _, name := range names {
			if _, ok := next[typeURL][name]; !ok {
				return fmt.Sprintf("%s %q deleted but was not there", typeURL, name)
			}
			delete(next[typeURL], name)
		}
	}
	for typeURL, m := range d.Updated {
		if next[typeURL] == nil {
			next[typeURL] = map[string]types.Resource{}
		}
		for name, r := range m {
			next[typeURL][name] = r
		}
	}
	var diff []string
	for typeURL, m := range cur {
		for name, r := range m {
			if next[typeURL][name] != r {
				diff = append(diff, "wrong or missing "+typeURL+" "+name)
			}
		}
		for name := range next[typeURL] {
			if _, ok := m[name]; !ok {
				diff = append(diff, "extra "+typeURL+" "+name)
			}
		}
	}
	slices.Sort(diff)
	return strings.Join(diff, ", ")
}

func samePointer[M comparable](t *testing.T, label, name string, before, after map[string]M) {
	t.Helper()
	b, ok := before[name]
	if !ok {
		return
	}
	if a, ok := after[name]; ok && a != b {
		t.Errorf("%s: %T %q was translated again though its inputs did not change", label, a, name)
	}
}

// compareResults reports every difference between want (from Translate)
// and got (from a Translator).
func compareResults(t *testing.T, label string, want, got *Result) bool {
	t.Helper()
	ok := true
	check := func(kind string, diff string) {
		if diff != "" {
			t.Errorf("%s: %s differ (-Translate +Translator):\n%s", label, kind, diff)
			ok = false
		}
	}
	check("listeners", protoMapDiff(want.Resources.Listeners, got.Resources.Listeners))
	check("routes", protoMapDiff(want.Resources.Routes, got.Resources.Routes))
	check("clusters", protoMapDiff(want.Resources.Clusters, got.Resources.Clusters))
	check("endpoints", protoMapDiff(want.Resources.Endpoints, got.Resources.Endpoints))
	wantBy, gotBy := want.Resources.ByTypeURL(), got.Resources.ByTypeURL()
	for typeURL := range wantBy {
		check("ByTypeURL "+typeURL, protoMapDiff(wantBy[typeURL], gotBy[typeURL]))
	}
	check("skipped", cmp.Diff(want.Skipped, got.Skipped, cmpopts.EquateEmpty()))
	check("panicking", cmp.Diff(want.Panicking, got.Panicking, cmpopts.EquateEmpty()))
	return ok
}

func protoMapDiff[M proto.Message](want, got map[string]M) string {
	var diff []string
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			diff = append(diff, "missing "+name)
		case !proto.Equal(w, g) && cmp.Diff(w, g, protocmp.Transform()) != "":
			// Not proto.Equal: it compares Any payloads as bytes, and
			// maps inside them are encoded in no fixed order.
			diff = append(diff, "differs "+name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			diff = append(diff, "extra "+name)
		}
	}
	slices.Sort(diff)
	if len(diff) == 0 {
		return ""
	}
	return fmt.Sprint(diff)
}

// TestTranslatorKeepsSkippedWhenUnchanged: a change that alters no
// service's report hands back the very same Skipped slice (consumers rely
// on it to skip going through them again), and one that does, a new one.
func TestTranslatorKeepsSkippedWhenUnchanged(t *testing.T) {
	svc := func(name, addr string, port int) *model.Service {
		return &model.Service{Name: name, Instances: []model.Instance{{ID: name + "-1", Node: "n1", Address: addr, Port: port,
			Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1"}}}
	}
	// a and b register the same address and port: one keeps the server
	// Listener, the other is reported.
	services := map[string]*model.Service{"a": svc("a", "10.0.0.1", 80), "b": svc("b", "10.0.0.1", 80), "c": svc("c", "10.0.0.2", 80)}
	snap := (*model.Snapshot)(nil).Next(maps.Clone(services), nil)
	sec := &Security{}
	tr := NewTranslator(Options{})
	first := tr.Translate(Input{Catalog: snap, Security: sec})
	if len(first.Skipped) == 0 {
		t.Fatal("no skip for the contested server Listener")
	}
	services["c"] = svc("c", "10.0.0.2", 81)
	snap = snap.Next(maps.Clone(services), []string{"c"})
	second := tr.Translate(Input{Catalog: snap, Security: sec})
	compareResults(t, "unrelated change", Translate(Input{Catalog: snap, Security: sec}, Options{}), second)
	if &second.Skipped[0] != &first.Skipped[0] || len(second.Skipped) != len(first.Skipped) {
		t.Error("a change that alters no report gave a new Skipped slice")
	}
	services["b"] = svc("b", "10.0.0.3", 80)
	snap = snap.Next(maps.Clone(services), []string{"b"})
	third := tr.Translate(Input{Catalog: snap, Security: sec})
	compareResults(t, "contest over", Translate(Input{Catalog: snap, Security: sec}, Options{}), third)
	if len(third.Skipped) == len(first.Skipped) && (len(third.Skipped) == 0 || &third.Skipped[0] == &first.Skipped[0]) {
		t.Error("the contest ended and Skipped stayed the same slice")
	}
}
