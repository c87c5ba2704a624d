package translate

import (
	"maps"
	"reflect"
	"slices"
	"sort"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Translator is a memoising Translate: each call gives exactly what
// Translate(in, opts) gives, but re-translates only the services whose
// inputs changed since the previous call, and hands back the very same
// resource values (pointers) for the others, so that the xDS cache neither
// re-encodes nor re-hashes them.
//
// A service is re-translated when any of these changed:
//   - its *model.Service (compared by content when the pointer differs:
//     the catalog publishes a new pointer only for a changed service);
//   - its policy (by pointer, then by content);
//   - the mesh-wide security settings (trust domain, SPIFFE ID scheme,
//     mTLS default, intention default, Security present or not);
//   - an intention whose destination is the service or "*";
//   - the catalog's datacenters, when the service has an instance without
//     a datacenter (or none at all);
//   - whether a cluster its policy routes to exists.
//
// Which service keeps a server Listener address registered for several
// services, and the skips that concern the input as a whole, are worked
// out again on every call, at a cost that follows what changed.
//
// A Translator keeps its resources up to date in place, so that a call
// costs what changed, not what the catalog holds: the Resources of a Result
// it returns are its current state, valid until its next call, which
// updates them. Result.Delta says what that call changed, for a consumer
// (the xDS cache) that follows the state change by change; a consumer that
// needs an earlier state must copy it.
//
// Everything a Translator returns, and everything handed to it, is shared
// and must not be modified. Translate may be called from several
// goroutines; calls are serialized.
type Translator struct {
	opts Options

	mu sync.Mutex
	// st is the state of the previous call; nil before the first.
	// Guarded by mu.
	st *memoState
}

// NewTranslator returns a Translator translating with opts.
func NewTranslator(opts Options) *Translator {
	return &Translator{opts: opts}
}

// securityKey is what, in a Security, every service's translation reads.
type securityKey struct {
	present     bool
	trustDomain spiffeid.TrustDomain
	template    string
	mtls        bool
	defaultDeny bool
}

func keyOf(s *Security) securityKey {
	if s == nil {
		return securityKey{}
	}
	return securityKey{present: true, trustDomain: s.TrustDomain, template: s.scheme().Template(), mtls: s.MTLS, defaultDeny: s.DefaultDeny}
}

// memoEntry is one service's memoised translation and the inputs it was
// made from.
type memoEntry struct {
	svc    *model.Service
	pol    *policyv1.ServicePolicy
	secGen uint64
	// dcs are the service's instance datacenters (instanceDatacenters).
	dcs []string
	// usesCatalogDCs is set when the translation may read the catalog's
	// datacenters: an instance without a datacenter, or none with one.
	usesCatalogDCs bool
	dcGen          uint64
	// dests are the clusters the policy routes to, and whether each
	// existed when the entry was made.
	dests   []string
	destHas []bool

	t serviceTranslation
	// report is what the service contributes to Result.Skipped and
	// Result.Panicking, kept so that they are gathered again only when a
	// service's report changed.
	report entryReport
}

// entryReport is one service's part of a Result's skips and panicking
// clusters.
type entryReport struct {
	skips     []Skip
	panicking []string
}

func (r entryReport) empty() bool { return len(r.skips) == 0 && len(r.panicking) == 0 }

func (r entryReport) equal(o entryReport) bool {
	return slices.Equal(r.skips, o.skips) && slices.Equal(r.panicking, o.panicking)
}

// memoState is what a Translator keeps between calls.
type memoState struct {
	entries map[string]*memoEntry
	// names are the keys of entries, sorted.
	names []string

	secKey     securityKey
	secGen     uint64
	intentions *model.Intentions

	// dcCount counts, per datacenter, the services with an instance there.
	dcCount     map[string]int
	datacenters []string
	dcGen       uint64

	// candidates lists, per server Listener name, the services (sorted)
	// whose translation has it; the first keeps it.
	candidates map[string][]string
	// contested are the server Listener names with several candidates.
	contested map[string]bool

	// catalog and policies are the previous call's inputs.
	catalog  *model.Snapshot
	policies map[string]*policyv1.ServicePolicy
	// withDests are the services whose policy routes to a cluster.
	withDests map[string]bool
	// skipped and panicking are what the services reported (Result),
	// catalogSkips aside.
	skipped   []Skip
	panicking []string
	// result is the previous call's Result.Skipped, catalogSkips those it
	// added to skipped: handed back again when neither changed.
	result       []Skip
	catalogSkips []Skip

	res    Resources
	byType map[string]map[string]types.Resource

	// delta collects what the current call changes: by type URL and
	// name, the new resource, or nil for a removed one.
	delta map[string]map[string]types.Resource
}

// Translate translates in as Translate(in, opts) does, reusing the
// translation of every service whose inputs did not change.
//
// What it looks at follows what changed: when the catalog says which
// services changed since the previous call's (model.Snapshot.ChangedSince),
// only those, the services whose policy changed (the policies are compared
// name by name only when the map is a new one), the destinations of
// changed intentions and, when services came or went or a policy changed,
// the services whose policy routes to a cluster are considered; every service is
// considered otherwise, and when the mesh-wide settings or the catalog's
// datacenters change.
func (t *Translator) Translate(in Input) *Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	if in.Catalog == nil {
		t.st = nil
		return Translate(in, t.opts)
	}
	first := t.st == nil
	if first {
		t.st = &memoState{
			entries:    map[string]*memoEntry{},
			dcCount:    map[string]int{},
			candidates: map[string][]string{},
			contested:  map[string]bool{},
			withDests:  map[string]bool{},
			res: Resources{
				Listeners: map[string]*listenerv3.Listener{},
				Routes:    map[string]*routev3.RouteConfiguration{},
				Clusters:  map[string]*clusterv3.Cluster{},
				Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
			},
			byType: map[string]map[string]types.Resource{
				resource.ListenerType: {}, resource.RouteType: {}, resource.ClusterType: {}, resource.EndpointType: {},
			},
		}
	}
	st := t.st
	st.delta = map[string]map[string]types.Resource{}

	// Mesh-wide security settings and intentions.
	everything := first
	if k := keyOf(in.Security); first || k != st.secKey {
		st.secKey = k
		st.secGen++
		everything = true
	}
	var intentionsChanged map[string]bool // destinations; "*" means all
	if in.Security != nil {
		if cur := in.Security.Intentions; cur != st.intentions {
			if !cur.Equal(st.intentions) {
				intentionsChanged = changedDestinations(st.intentions, cur)
			}
			st.intentions = cur
		}
	} else {
		st.intentions = nil
	}
	if intentionsChanged[model.Wildcard] {
		everything = true
	}

	// Which services changed, and the catalog's datacenters.
	svcChanged := map[string]bool{}
	membership := first
	dcsChanged := false
	countDCs := func(dcs []string, delta int) {
		for _, dc := range dcs {
			n := st.dcCount[dc] + delta
			if n == 0 {
				delete(st.dcCount, dc)
				dcsChanged = true
			} else {
				if st.dcCount[dc] == 0 {
					dcsChanged = true
				}
				st.dcCount[dc] = n
			}
		}
	}
	var removed []string
	// look brings the entry of name up to date with the catalog.
	look := func(name string) {
		svc, inCatalog := in.Catalog.Services[name]
		e, ok := st.entries[name]
		switch {
		case !inCatalog:
			if ok && !slices.Contains(removed, name) {
				countDCs(e.dcs, -1)
				removed = append(removed, name)
				membership = true
			}
			return
		case !ok:
			membership = true
			e = &memoEntry{svc: svc}
			st.entries[name] = e
		case e.svc == svc:
			return
		case serviceEqual(e.svc, svc):
			e.svc = svc
			return
		default:
			countDCs(e.dcs, -1)
			e.svc = svc
		}
		svcChanged[name] = true
		e.dcs, e.usesCatalogDCs = serviceDatacenters(svc)
		countDCs(e.dcs, +1)
	}
	if names, ok := in.Catalog.ChangedSince(st.catalog); ok && !first {
		for _, name := range names {
			look(name)
		}
	} else {
		for name := range in.Catalog.Services {
			look(name)
		}
		if len(st.entries) != len(in.Catalog.Services)+len(removed) {
			for name := range st.entries {
				look(name)
			}
		}
	}
	st.catalog = in.Catalog
	if dcsChanged || first {
		st.datacenters = slices.Sorted(maps.Keys(st.dcCount))
		st.dcGen++
		everything = true
	}
	var datacenters []string
	if in.Security != nil {
		datacenters = st.datacenters
	}

	// The services to look at again: every one, or those whose inputs may
	// have changed.
	var consider func(yield func(string) bool)
	if everything {
		consider = func(yield func(string) bool) {
			for name := range st.entries {
				if !yield(name) {
					return
				}
			}
		}
	} else {
		cands := maps.Clone(svcChanged)
		polChanged := policiesChanged(st.policies, in.Policies)
		for name := range polChanged {
			cands[name] = true
		}
		for name := range intentionsChanged {
			cands[name] = true
		}
		// Which clusters exist follows the services and the policies'
		// subsets.
		if membership || len(polChanged) > 0 {
			for name := range st.withDests {
				cands[name] = true
			}
		}
		consider = maps.Keys(cands)
	}
	st.policies = in.Policies

	// Re-translate what needs it.
	clusters := newClusterIndex(in)
	type rebuilt struct {
		name string
		old  serviceTranslation
	}
	var changed []rebuilt
	for name := range consider {
		e, ok := st.entries[name]
		if !ok {
			continue
		}
		svc, ok := in.Catalog.Services[name]
		if !ok {
			continue
		}
		pol := in.Policies[name]
		stale := svcChanged[name] || e.secGen != st.secGen ||
			(pol != e.pol && !proto.Equal(pol, e.pol)) ||
			(in.Security != nil && (intentionsChanged[name] || intentionsChanged[model.Wildcard])) ||
			(in.Security != nil && e.usesCatalogDCs && e.dcGen != st.dcGen)
		if !stale {
			for i, d := range e.dests {
				if clusters.has(d) != e.destHas[i] {
					stale = true
					break
				}
			}
		}
		if !stale {
			e.pol = pol
			continue
		}
		changed = append(changed, rebuilt{name: name, old: e.t})
		e.pol, e.secGen, e.dcGen = pol, st.secGen, st.dcGen
		e.dests = policyDestinations(name, pol)
		if len(e.dests) > 0 {
			st.withDests[name] = true
		} else {
			delete(st.withDests, name)
		}
		e.destHas = make([]bool, len(e.dests))
		for i, d := range e.dests {
			e.destHas[i] = clusters.has(d)
		}
		e.t = translateEntry(name, svc, pol, in.Security, datacenters, clusters, t.opts)
	}
	reportsChanged := first
	if membership {
		for _, name := range removed {
			reportsChanged = reportsChanged || !st.entries[name].report.empty()
			changed = append(changed, rebuilt{name: name, old: st.entries[name].t})
			delete(st.entries, name)
			delete(st.withDests, name)
			if i, ok := slices.BinarySearch(st.names, name); ok {
				st.names = slices.Delete(st.names, i, i+1)
			}
		}
		if first {
			st.names = slices.Sorted(maps.Keys(st.entries))
		} else {
			for name := range svcChanged {
				if i, ok := slices.BinarySearch(st.names, name); !ok {
					st.names = slices.Insert(st.names, i, name)
				}
			}
		}
	}

	// Bring the resources up to date in place, noting what changed.
	// recheck are the services whose report may have changed: those
	// translated again, and those competing for a server Listener name
	// whose owner was settled again.
	recheck := map[string]bool{}
	if len(changed) > 0 {
		affected := map[string]bool{}
		for _, c := range changed {
			recheck[c.name] = true
			var cur *serviceResources
			if e, ok := st.entries[c.name]; ok {
				cur = e.t.out
			}
			if c.old.out != nil {
				st.remove(c.name, c.old.out, cur, affected)
			}
			if cur != nil {
				st.add(c.name, cur, affected)
			}
		}
		for l := range affected {
			st.settle(l)
			for _, cand := range st.candidates[l] {
				recheck[cand] = true
			}
		}
	}
	for name := range recheck {
		e, ok := st.entries[name]
		if !ok {
			continue // removed: accounted for above
		}
		if r := st.reportOf(name, e); !r.equal(e.report) {
			e.report = r
			reportsChanged = true
		}
	}

	res := &Result{Resources: st.res}
	res.Resources.byType = st.byType
	if !first {
		res.Delta = st.takeDelta()
	}
	st.delta = nil
	if reportsChanged || st.skipped == nil {
		// What the services report, in name order: gathered again only
		// when a service's report changed.
		st.skipped, st.panicking = []Skip{}, nil
		for _, name := range st.names {
			r := st.entries[name].report
			st.skipped = append(st.skipped, r.skips...)
			st.panicking = append(st.panicking, r.panicking...)
		}
		st.result = nil
	}
	res.Panicking = st.panicking
	if cs := catalogSkips(in); st.result == nil || !slices.Equal(cs, st.catalogSkips) {
		st.catalogSkips = cs
		st.result = append(slices.Clip(st.skipped), cs...)
	}
	// The very slice of the previous call when nothing changed, so that a
	// consumer can tell at a glance.
	res.Skipped = st.result
	return res
}

// reportOf gathers what the service's translation reports, its server
// Listeners kept by other services included.
func (st *memoState) reportOf(name string, e *memoEntry) entryReport {
	var r entryReport
	r.skips = append(r.skips, e.t.pre...)
	if e.t.out != nil {
		r.panicking = e.t.out.panicking
		if len(st.contested) > 0 {
			r.skips = append(r.skips, st.ownershipSkips(name, e.t.out.servers)...)
		}
	}
	r.skips = append(r.skips, e.t.post...)
	return r
}

// policiesChanged returns the names whose policy differs (by pointer)
// between a and b; nothing when they are the same map.
func policiesChanged(a, b map[string]*policyv1.ServicePolicy) map[string]bool {
	if len(a) == len(b) && (len(a) == 0 || reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()) {
		return nil
	}
	out := map[string]bool{}
	for name, p := range a {
		if b[name] != p {
			out[name] = true
		}
	}
	for name, p := range b {
		if a[name] != p {
			out[name] = true
		}
	}
	return out
}

// remove takes the resources of service out of the state, noting the
// server Listener names whose owner must be settled again. Names that next
// (the service's new resources, added right after; nil when none) has too
// are left for add to replace: deleting a key of a large map only to put
// it back costs a rehash now and then.
func (st *memoState) remove(service string, out, next *serviceResources, affected map[string]bool) {
	var kept map[string]bool // "type\x00name" of next's resources
	if next != nil {
		kept = make(map[string]bool, 2+len(next.clusters)+len(next.clas))
		kept[resource.ListenerType+"\x00"+next.listener.GetName()] = true
		kept[resource.RouteType+"\x00"+next.route.GetName()] = true
		for _, c := range next.clusters {
			kept[resource.ClusterType+"\x00"+c.GetName()] = true
		}
		for _, cla := range next.clas {
			kept[resource.EndpointType+"\x00"+cla.GetClusterName()] = true
		}
	}
	gone := func(typeURL, name string) bool { return !kept[typeURL+"\x00"+name] }
	if name := out.listener.GetName(); gone(resource.ListenerType, name) {
		st.del(resource.ListenerType, name)
		delete(st.res.Listeners, name)
	}
	if name := out.route.GetName(); gone(resource.RouteType, name) {
		st.del(resource.RouteType, name)
		delete(st.res.Routes, name)
	}
	for _, c := range out.clusters {
		if name := c.GetName(); gone(resource.ClusterType, name) {
			st.del(resource.ClusterType, name)
			delete(st.res.Clusters, name)
		}
	}
	for _, cla := range out.clas {
		if name := cla.GetClusterName(); gone(resource.EndpointType, name) {
			st.del(resource.EndpointType, name)
			delete(st.res.Endpoints, name)
		}
	}
	for _, l := range out.servers {
		name := l.GetName()
		st.candidates[name] = slices.DeleteFunc(st.candidates[name], func(s string) bool { return s == service })
		affected[name] = true
	}
}

// add puts the resources of service into the state, noting the server
// Listener names whose owner must be settled again.
func (st *memoState) add(service string, out *serviceResources, affected map[string]bool) {
	st.res.Listeners[out.listener.GetName()] = out.listener
	st.set(resource.ListenerType, out.listener.GetName(), out.listener)
	st.res.Routes[out.route.GetName()] = out.route
	st.set(resource.RouteType, out.route.GetName(), out.route)
	for _, c := range out.clusters {
		st.res.Clusters[c.GetName()] = c
		st.set(resource.ClusterType, c.GetName(), c)
	}
	for _, cla := range out.clas {
		st.res.Endpoints[cla.GetClusterName()] = cla
		st.set(resource.EndpointType, cla.GetClusterName(), cla)
	}
	for _, l := range out.servers {
		name := l.GetName()
		cands := st.candidates[name]
		i, found := slices.BinarySearch(cands, service)
		if !found {
			st.candidates[name] = slices.Insert(cands, i, service)
		}
		affected[name] = true
	}
}

func (st *memoState) del(typeURL, name string) {
	delete(st.byType[typeURL], name)
	st.note(typeURL, name, nil)
}

// set serves res under typeURL and name.
func (st *memoState) set(typeURL, name string, res types.Resource) {
	st.byType[typeURL][name] = res
	st.note(typeURL, name, res)
}

// note records in the delta of the current call that name now holds res,
// nil when it is gone.
func (st *memoState) note(typeURL, name string, res types.Resource) {
	if st.delta == nil {
		return
	}
	m := st.delta[typeURL]
	if m == nil {
		m = map[string]types.Resource{}
		st.delta[typeURL] = m
	}
	m[name] = res
}

// takeDelta returns what the current call changed. A resource taken out
// and put back as the very same value may be listed as updated: the cache
// recognises the value and does nothing for it.
func (st *memoState) takeDelta() *Delta {
	d := &Delta{Updated: map[string]map[string]types.Resource{}, Deleted: map[string][]string{}}
	for typeURL, m := range st.delta {
		for name, r := range m {
			if r == nil {
				d.Deleted[typeURL] = append(d.Deleted[typeURL], name)
				continue
			}
			if d.Updated[typeURL] == nil {
				d.Updated[typeURL] = map[string]types.Resource{}
			}
			d.Updated[typeURL][name] = r
		}
	}
	for _, names := range d.Deleted {
		slices.Sort(names)
	}
	return d
}

// settle serves the server Listener name of its first candidate, or none.
func (st *memoState) settle(name string) {
	cands := st.candidates[name]
	if len(cands) > 1 {
		st.contested[name] = true
	} else {
		delete(st.contested, name)
	}
	if len(cands) == 0 {
		delete(st.candidates, name)
		delete(st.res.Listeners, name)
		st.del(resource.ListenerType, name)
		return
	}
	for _, l := range st.entries[cands[0]].t.out.servers {
		if l.GetName() == name {
			st.res.Listeners[name] = l
			st.set(resource.ListenerType, name, l)
			return
		}
	}
}

// ownershipSkips reports the server Listeners of service that another
// service keeps, as addServerListeners does.
func (st *memoState) ownershipSkips(service string, servers []*listenerv3.Listener) []Skip {
	var lost []*listenerv3.Listener
	owners := map[string]string{}
	for _, l := range servers {
		if cands := st.candidates[l.GetName()]; st.contested[l.GetName()] && cands[0] != service {
			lost = append(lost, l)
			owners[l.GetName()] = cands[0]
		}
	}
	if len(lost) == 0 {
		return nil
	}
	return addServerListeners(&Resources{Listeners: map[string]*listenerv3.Listener{}}, service, lost, owners)
}

// serviceDatacenters returns the instance datacenters of svc, and whether
// its translation may read the catalog's datacenters instead (see
// Security.forService and serviceSecurity.apply).
func serviceDatacenters(svc *model.Service) ([]string, bool) {
	dcs := instanceDatacenters(svc)
	uses := len(dcs) == 0
	for _, inst := range svc.Instances {
		if inst.Datacenter == "" {
			uses = true
			break
		}
	}
	return dcs, uses
}

// policyDestinations lists the clusters the routes of p name, as
// routeAction resolves them.
func policyDestinations(service string, p *policyv1.ServicePolicy) []string {
	var out []string
	for _, r := range p.GetRoutes() {
		switch a := r.GetAction().(type) {
		case *policyv1.Route_Destination:
			out = append(out, destinationCluster(service, a.Destination))
		case *policyv1.Route_Split:
			for _, d := range a.Split.GetDestinations() {
				out = append(out, destinationCluster(service, d.GetDestination()))
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// changedDestinations returns the destinations of the intentions that
// differ between a and b.
func changedDestinations(a, b *model.Intentions) map[string]bool {
	type pair struct{ src, dst string }
	prev := make(map[pair]model.Intention, a.Len())
	for _, in := range a.All() {
		prev[pair{in.Source, in.Destination}] = in
	}
	out := map[string]bool{}
	for _, in := range b.All() {
		k := pair{in.Source, in.Destination}
		p, ok := prev[k]
		if !ok || !p.SameDecision(in) {
			out[in.Destination] = true
		}
		delete(prev, k)
	}
	for k := range prev {
		out[k.dst] = true
	}
	return out
}

// serviceEqual reports whether a and b hold the same service: every field
// of every instance, so that a field added to the model is never missed.
func serviceEqual(a, b *model.Service) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && reflect.DeepEqual(a.Instances, b.Instances)
}
