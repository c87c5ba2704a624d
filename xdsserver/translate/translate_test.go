package translate

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// goldenInput is the YAML form of a test case: translation options and a
// catalog.
type goldenInput struct {
	Options  Options           `json:"options"`
	Services []goldenService   `json:"services"`
	Policies []json.RawMessage `json:"policies"`
}

func (in goldenInput) policies(t *testing.T) map[string]*policyv1.ServicePolicy {
	t.Helper()
	out := map[string]*policyv1.ServicePolicy{}
	for i, raw := range in.Policies {
		p := &policyv1.ServicePolicy{}
		if err := protojson.Unmarshal(raw, p); err != nil {
			t.Fatalf("policies[%d]: %v", i, err)
		}
		out[p.GetService()] = p
	}
	return out
}

type goldenService struct {
	Name      string           `json:"name"`
	Instances []goldenInstance `json:"instances"`
}

type goldenInstance struct {
	ID         string            `json:"id"`
	Node       string            `json:"node"`
	Address    string            `json:"address"`
	Port       int               `json:"port"`
	Health     string            `json:"health"`
	Weights    *model.Weights    `json:"weights"`
	Datacenter string            `json:"datacenter"`
	Zone       string            `json:"zone"`
	Tags       []string          `json:"tags"`
	Meta       map[string]string `json:"meta"`
}

func (in goldenInput) snapshot(t *testing.T) *model.Snapshot {
	t.Helper()
	health := map[string]model.Health{
		"": model.HealthPassing, "passing": model.HealthPassing, "warning": model.HealthWarning,
		"critical": model.HealthCritical, "maintenance": model.HealthMaintenance,
	}
	var services []*model.Service
	for _, s := range in.Services {
		svc := &model.Service{Name: s.Name}
		for _, i := range s.Instances {
			h, ok := health[i.Health]
			if !ok {
				t.Fatalf("instance %s: unknown health %q", i.ID, i.Health)
			}
			w := model.Weights{Passing: 1, Warning: 1}
			if i.Weights != nil {
				w = *i.Weights
			}
			node := i.Node
			if node == "" {
				node = "node-1"
			}
			dc := i.Datacenter
			if dc == "" {
				dc = "dc1"
			}
			svc.Instances = append(svc.Instances, model.Instance{
				ID: i.ID, Node: node, Address: i.Address, Port: i.Port, Health: h, Weights: w,
				Datacenter: dc, Zone: i.Zone, Tags: i.Tags, Meta: i.Meta,
			})
		}
		services = append(services, svc)
	}
	return model.NewSnapshot(services)
}

// TestGolden translates every testdata/<case>.in.yaml, with the security
// settings trellis server uses by default, and compares each
// resource type with testdata/<case>.<type>.golden.json. Every generated
// resource also passes the envoy protos' validation. Run with -update to
// rewrite the golden files.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no golden inputs in testdata")
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var in goldenInput
			if err := yaml.UnmarshalStrict(raw, &in); err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			// The zero Security is what trellis server runs with by
			// default (see Security).
			res := Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: &Security{}}, in.Options)
			compareResult(t, name, res)
		})
	}
}

// compareResult validates every resource of res and compares each type, and
// the report of what was skipped or panic-routed, with the golden files of
// case name.
func compareResult(t *testing.T, name string, res *Result) {
	t.Helper()
	for typeName, resources := range map[string]map[string]proto.Message{
		"listeners": asMessages(res.Resources.Listeners),
		"routes":    asMessages(res.Resources.Routes),
		"clusters":  asMessages(res.Resources.Clusters),
		"endpoints": asMessages(res.Resources.Endpoints),
	} {
		for rname, m := range resources {
			if err := m.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
				t.Errorf("%s %q fails validation: %v", typeName, rname, err)
			}
		}
		compareGolden(t, filepath.Join("testdata", name+"."+typeName+".golden.json"), encodeResources(t, resources))
	}
	report := struct {
		Skipped   []string `json:"skipped"`
		Panicking []string `json:"panicking"`
	}{Skipped: []string{}, Panicking: res.Panicking}
	for _, s := range res.Skipped {
		report.Skipped = append(report.Skipped, s.Kind.String()+": "+s.String())
	}
	if report.Panicking == nil {
		report.Panicking = []string{}
	}
	got, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, filepath.Join("testdata", name+".report.golden.json"), append(got, '\n'))
}

func asMessages[M proto.Message](in map[string]M) map[string]proto.Message {
	out := make(map[string]proto.Message, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// encodeResources renders resources as indented JSON sorted by name. The
// protojson output is re-indented because protojson's spacing is
// deliberately unstable.
func encodeResources(t *testing.T, resources map[string]proto.Message) []byte {
	t.Helper()
	names := make([]string, 0, len(resources))
	for n := range resources {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	buf.WriteString("[")
	for i, n := range names {
		raw, err := protojson.Marshal(resources[n])
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			buf.WriteString(",")
		}
		buf.Write(raw)
	}
	buf.WriteString("]")
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got):\n%s", path, diff)
	}
}

// TestRenamedAndRemovedServices checks that a service renamed or removed in
// the catalog loses all four of its resources and that the others are
// untouched.
func TestRenamedAndRemovedServices(t *testing.T) {
	inst := func(id, addr string) model.Instance {
		return model.Instance{ID: id, Node: "n", Address: addr, Port: 80, Weights: model.Weights{Passing: 1, Warning: 1}}
	}
	before := Translate(Input{Catalog: model.NewSnapshot([]*model.Service{
		{Name: "orders", Instances: []model.Instance{inst("o1", "10.0.0.1")}},
		{Name: "payments", Instances: []model.Instance{inst("p1", "10.0.0.2")}},
		{Name: "legacy", Instances: []model.Instance{inst("l1", "10.0.0.3")}},
	})}, Options{})
	after := Translate(Input{Catalog: model.NewSnapshot([]*model.Service{
		{Name: "orders", Instances: []model.Instance{inst("o1", "10.0.0.1")}},
		{Name: "payments-v2", Instances: []model.Instance{inst("p1", "10.0.0.2")}},
	})}, Options{})

	want := []string{"orders", "payments-v2"}
	for typeURL, byName := range after.Resources.ByTypeURL() {
		var got []string
		for n := range byName {
			got = append(got, n)
		}
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s names after rename (-want +got):\n%s", typeURL, diff)
		}
	}
	if !proto.Equal(before.Resources.Endpoints["orders"], after.Resources.Endpoints["orders"]) ||
		!proto.Equal(before.Resources.Listeners["orders"], after.Resources.Listeners["orders"]) {
		t.Error("an unchanged service's resources changed")
	}
}

// TestDeterministic checks that equal catalogs translate to byte-identical
// resources, which content-hash versions rely on.
func TestDeterministic(t *testing.T) {
	build := func(order []int) *model.Snapshot {
		all := []model.Instance{
			{ID: "a", Node: "n1", Address: "10.0.0.1", Port: 80, Datacenter: "dc1", Zone: "z2", Weights: model.Weights{Passing: 1, Warning: 1}},
			{ID: "b", Node: "n2", Address: "10.0.0.2", Port: 80, Datacenter: "dc1", Zone: "z1", Weights: model.Weights{Passing: 1, Warning: 1}},
			{ID: "c", Node: "n3", Address: "10.0.0.3", Port: 80, Datacenter: "dc2", Zone: "z1", Weights: model.Weights{Passing: 1, Warning: 1}},
		}
		var insts []model.Instance
		for _, i := range order {
			insts = append(insts, all[i])
		}
		return model.NewSnapshot([]*model.Service{{Name: "svc", Instances: insts}})
	}
	a := Translate(Input{Catalog: build([]int{0, 1, 2})}, Options{})
	b := Translate(Input{Catalog: build([]int{2, 0, 1})}, Options{})
	marshal := proto.MarshalOptions{Deterministic: true}
	for typeURL, byName := range a.Resources.ByTypeURL() {
		for name, r := range byName {
			ra, err := marshal.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			rb, err := marshal.Marshal(b.Resources.ByTypeURL()[typeURL][name])
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ra, rb) {
				t.Errorf("%s %q differs between equal catalogs", typeURL, name)
			}
		}
	}
}
