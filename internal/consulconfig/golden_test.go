package consulconfig_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

var (
	update  = flag.Bool("update", false, "rewrite the golden files from the committed chains")
	capture = flag.Bool("capture", false, "rewrite testdata/*.chains.json from a real Consul agent ($TRELLIS_CONSUL_BIN), writing each case's entries")
)

// Each case is testdata/<case>.entries.json, the config entries as
// `consul config write` takes them (a JSON array); <case>.chains.json, the
// compiled chains Consul 1.16.1 returned for them (captured by
// `go test ./internal/consulconfig -run TestGolden -capture`); and
// <case>.golden.json, what Convert and Merge make of the chains.
func cases(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.entries.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases in testdata: %v", err)
	}
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(filepath.Base(f), ".entries.json"))
	}
	return out
}

func TestGolden(t *testing.T) {
	if *capture {
		captureChains(t)
	}
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", name+".chains.json"))
			if err != nil {
				t.Fatalf("%v (capture with -capture)", err)
			}
			var chains map[string]*consulconfig.Chain
			if err := json.Unmarshal(raw, &chains); err != nil {
				t.Fatal(err)
			}
			converted := consulconfig.Convert(chains)
			merged := consulconfig.Merge(nil, converted, nil)
			got := render(t, merged)
			golden := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (write with -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("conversion differs from %s (rerun with -update if intended):\n%s", golden, got)
			}
			// Valid by construction: every policy passes validation
			// against the others, and translates into resources that
			// pass the Envoy protos' validation.
			for svc, p := range merged.Policies {
				if _, err := policy.Validate(p, policy.Env{PolicyOf: func(s string) *policyv1.ServicePolicy { return merged.Policies[s] }}); err != nil {
					t.Errorf("policy of %s is invalid: %v", svc, err)
				}
			}
			res := translate.Translate(translate.Input{Catalog: catalogFor(chains), Policies: merged.Policies}, translate.Options{})
			for _, sk := range res.Skipped {
				if sk.Kind != translate.SkipWarning {
					t.Errorf("translation left something out: %+v", sk)
				}
			}
			for n, l := range res.Resources.Listeners {
				if err := l.ValidateAll(); err != nil {
					t.Errorf("listener %s: %v", n, err)
				}
			}
			for n, r := range res.Resources.Routes {
				if err := r.ValidateAll(); err != nil {
					t.Errorf("route %s: %v", n, err)
				}
			}
			for n, c := range res.Resources.Clusters {
				if err := c.ValidateAll(); err != nil {
					t.Errorf("cluster %s: %v", n, err)
				}
			}
			for n, e := range res.Resources.Endpoints {
				if err := e.ValidateAll(); err != nil {
					t.Errorf("endpoints %s: %v", n, err)
				}
			}
		})
	}
}

// catalogFor has one passing instance for every service the chains name.
func catalogFor(chains map[string]*consulconfig.Chain) *model.Snapshot {
	names := map[string]bool{}
	for svc, ch := range chains {
		names[svc] = true
		for _, tg := range ch.Targets {
			names[tg.Service] = true
		}
	}
	var services []*model.Service
	port := 20000
	for n := range names {
		port++
		services = append(services, &model.Service{Name: n, Instances: []model.Instance{{
			ID: n + "-1", Node: "node-1", Address: "127.0.0.1", Port: port, Datacenter: "dc1",
			Meta: map[string]string{"version": "v1"},
		}}})
	}
	return model.NewSnapshot(services)
}

// render writes the merge deterministically: policies as protojson.
func render(t *testing.T, m *consulconfig.Merged) []byte {
	t.Helper()
	type out struct {
		Policies    map[string]json.RawMessage `json:"policies"`
		FromChains  []string                   `json:"fromChains"`
		Unsupported []string                   `json:"unsupported"`
	}
	o := out{Policies: map[string]json.RawMessage{}, FromChains: m.FromChains, Unsupported: []string{}}
	for svc, p := range m.Policies {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, b); err != nil {
			t.Fatal(err)
		}
		o.Policies[svc] = compact.Bytes()
	}
	for _, u := range m.Unsupported {
		o.Unsupported = append(o.Unsupported, u.String())
	}
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// captureChains writes each case's entries to a fresh real Consul agent
// and records the compiled chain of every service they name.
func captureChains(t *testing.T) {
	for _, name := range cases(t) {
		raw, err := os.ReadFile(filepath.Join("testdata", name+".entries.json"))
		if err != nil {
			t.Fatal(err)
		}
		var docs []json.RawMessage
		if err := json.Unmarshal(raw, &docs); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		agent := consultest.Start(t, consultest.Options{})
		client := agent.Client(t)
		services := map[string]bool{}
		for i, d := range docs {
			entry, err := api.DecodeConfigEntryFromJSON(d)
			if err != nil {
				t.Fatalf("%s: entry %d: %v", name, i, err)
			}
			if _, _, err := client.ConfigEntries().Set(entry, nil); err != nil {
				t.Fatalf("%s: write %s/%s: %v", name, entry.GetKind(), entry.GetName(), err)
			}
			if entry.GetKind() != api.ProxyDefaults {
				services[entry.GetName()] = true
			}
		}
		chains := map[string]json.RawMessage{}
		var names []string
		for s := range services {
			names = append(names, s)
		}
		sort.Strings(names)
		for _, s := range names {
			var resp struct{ Chain json.RawMessage }
			if _, err := client.Raw().Query("/v1/discovery-chain/"+s, &resp, nil); err != nil {
				t.Fatalf("%s: chain of %s: %v", name, s, err)
			}
			chains[s] = resp.Chain
		}
		b, err := json.MarshalIndent(chains, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", name+".chains.json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		agent.Stop(t)
	}
}
