package policy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// FuzzParseValidateTranslate feeds arbitrary documents through the path of
// a policy: ParseDocuments, Validate (against the other policies of the
// input), Normalize, and translation. Nothing may panic, and the promise
// of Validate must hold: a policy it accepts translates without being
// dropped ("policy not applied") and into resources that pass the envoy
// protos' validation, which is what clients would NACK.
//
// The seeds are testdata/fuzz/FuzzParseValidateTranslate and the example
// policies; `make fuzz` explores from there.
func FuzzParseValidateTranslate(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		policies, err := policy.ParseDocuments(bytes.NewReader(data))
		if err != nil {
			return
		}
		byService := map[string]*policyv1.ServicePolicy{}
		for _, p := range policies {
			byService[p.GetService()] = p
		}
		env := policy.Env{
			KnownService: func(string) bool { return true },
			PolicyOf:     func(service string) *policyv1.ServicePolicy { return byService[service] },
		}
		valid := map[string]*policyv1.ServicePolicy{}
		for _, p := range byService {
			_, err := policy.Validate(p, env)
			n := policy.Normalize(p)
			if _, nerr := policy.Validate(n, env); (err == nil) != (nerr == nil) {
				t.Fatalf("Validate before and after Normalize disagree: %v / %v\n%s", err, nerr, data)
			}
			if err == nil {
				valid[n.GetService()] = n
			}
		}
		if len(valid) == 0 {
			return
		}
		// A policy routing to a subset of a policy that was refused loses
		// that route in translation; that is not the policy's fault.
		for service, p := range valid {
			for _, other := range policy.ReferencedServices(p) {
				if byService[other] != nil && valid[other] == nil {
					delete(valid, service)
				}
			}
		}
		res := translate.Translate(translate.Input{Catalog: catalogFor(valid), Policies: valid}, translate.Options{})
		for _, s := range res.Skipped {
			if strings.HasPrefix(s.Reason, "policy not applied") {
				t.Errorf("a valid policy was not applied: %s\n%s", s, data)
			}
		}
		checkResources(t, &res.Resources)
	})
}

// catalogFor registers every service the policies name, with one instance
// matching each subset and one matching none.
func catalogFor(policies map[string]*policyv1.ServicePolicy) *model.Snapshot {
	names := map[string]bool{}
	for service, p := range policies {
		names[service] = true
		for _, other := range policy.ReferencedServices(p) {
			names[other] = true
		}
	}
	var services []*model.Service
	for name := range names {
		svc := &model.Service{Name: name, Instances: []model.Instance{{
			ID: "plain", Node: "n", Address: "10.0.0.1", Port: 8080, Weights: model.Weights{Passing: 1, Warning: 1},
		}}}
		for i, s := range policies[name].GetSubsets() {
			meta := map[string]string{}
			for k, v := range s.GetMeta() {
				meta[k] = v
			}
			svc.Instances = append(svc.Instances, model.Instance{
				ID: "subset-" + s.GetName(), Node: "n", Address: "10.0.1." + string(rune('1'+i%9)), Port: 8080,
				Weights: model.Weights{Passing: 1, Warning: 1}, Tags: append([]string(nil), s.GetTags()...), Meta: meta,
			})
		}
		services = append(services, svc)
	}
	sort.Slice(services, func(i, j int) bool { return services[i].Name < services[j].Name })
	return model.NewSnapshot(services)
}

func checkResources(t *testing.T, r *translate.Resources) {
	t.Helper()
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
