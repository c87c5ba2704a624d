package translate_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// fuzzCatalog builds a catalog from arbitrary bytes: each service is a
// name, then instances with an address, port, health, weights, zone, tags
// and meta drawn from the input, so that names, addresses and weights
// take values the catalog would never hold as well as ordinary ones.
func fuzzCatalog(data []byte) *model.Snapshot {
	r := &byteReader{b: data}
	names := []string{"echo", "billing", "a.b-c_d", "", "bad/name", "x", "-lead", "ünï"}
	addrs := []string{"10.0.0.1", "::1", "fe80::1%eth0", "", "not-an-ip", "256.0.0.1", "127.0.0.1", "2001:db8::5"}
	tags := []string{"v1", "v2", "blue", "", "canary"}
	var services []*model.Service
	for n := r.next() % 6; n > 0 && !r.done(); n-- {
		svc := &model.Service{Name: pick(r, names)}
		if r.next()%4 == 0 {
			svc.Name = r.text(12)
		}
		for m := r.next() % 5; m > 0; m-- {
			inst := model.Instance{
				ID:         fmt.Sprintf("i%d", len(svc.Instances)),
				Node:       pick(r, []string{"n1", "n2", ""}),
				Address:    pick(r, addrs),
				Port:       int(r.next())*256 + int(r.next()) - int(r.next()%2)*70000,
				Health:     model.Health(int(r.next()%5) - 0),
				Weights:    model.Weights{Passing: int(r.next()) - 10, Warning: int(r.next()) - 10},
				Datacenter: pick(r, []string{"dc1", "dc2", ""}),
				Zone:       pick(r, []string{"", "z1", "z2"}),
			}
			for k := r.next() % 3; k > 0; k-- {
				inst.Tags = append(inst.Tags, pick(r, tags))
			}
			if r.next()%2 == 0 {
				inst.Meta = map[string]string{pick(r, []string{"version", "trellis-weight", "zone"}): r.text(8)}
			}
			svc.Instances = append(svc.Instances, inst)
		}
		services = append(services, svc)
	}
	return model.NewSnapshot(services)
}

type byteReader struct {
	b []byte
	i int
}

func (r *byteReader) done() bool { return r.i >= len(r.b) }

func (r *byteReader) next() byte {
	if r.done() {
		return 0
	}
	c := r.b[r.i]
	r.i++
	return c
}

func (r *byteReader) text(max int) string {
	n := int(r.next()) % (max + 1)
	var s []byte
	for ; n > 0 && !r.done(); n-- {
		s = append(s, r.next())
	}
	return string(s)
}

func pick(r *byteReader, from []string) string { return from[int(r.next())%len(from)] }

// FuzzTranslate translates random catalogs with the policies of a random
// document (parsed, but not validated: translation must be safe even for
// a policy that slipped past validation). Translation never panics, and
// every resource it outputs passes the envoy protos' validation.
func FuzzTranslate(f *testing.F) {
	f.Add([]byte{3, 0, 2, 1, 0, 0, 31, 144, 0, 11, 11, 0, 1, 1, 0, 1, 2, 2, 0, 4, 1, 7}, []byte(`service: echo
subsets: [{name: v2, tags: [v2]}]
routes:
- match: {headers: [{name: x-canary, exact: "1"}]}
  destination: {subset: v2}
load_balancing: {ring_hash: {}}
defaults: {hash_policy: [{header: x-user}]}
`))
	f.Add([]byte{2, 1, 4, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, []byte(`service: billing
routes:
- split: {destinations: [{destination: {service: echo, subset: v2}, weight: 1}, {weight: 0}]}
  settings: {retry: {retry_on: [UNAVAILABLE], num_retries: 9}, timeout: 0s}
outlier_detection: {}
`))
	f.Fuzz(func(t *testing.T, catalog, policies []byte) {
		in := translate.Input{Catalog: fuzzCatalog(catalog)}
		if docs, err := policy.ParseDocuments(bytes.NewReader(policies)); err == nil {
			in.Policies = map[string]*policyv1.ServicePolicy{}
			for _, p := range docs {
				in.Policies[p.GetService()] = p
			}
		}
		for _, opts := range []translate.Options{{}, {ExcludeWarning: true, DisablePanicRouting: true}} {
			res := translate.Translate(in, opts)
			r := &res.Resources
			for name, l := range r.Listeners {
				if err := l.ValidateAll(); err != nil {
					t.Errorf("listener %q: %v", name, err)
				}
			}
			for name, rc := range r.Routes {
				if err := rc.ValidateAll(); err != nil {
					t.Errorf("route configuration %q: %v", name, err)
				}
			}
			for name, c := range r.Clusters {
				if err := c.ValidateAll(); err != nil {
					t.Errorf("cluster %q: %v", name, err)
				}
			}
			for name, cla := range r.Endpoints {
				if err := cla.ValidateAll(); err != nil {
					t.Errorf("endpoints %q: %v", name, err)
				}
			}
		}
	})
}
