package consulconfig_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// FuzzConvert feeds arbitrary chains (seeded with the chains captured from
// Consul) through Convert and Merge: nothing may panic, and every policy
// served must pass validation against the others, whatever the chain.
func FuzzConvert(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.chains.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed chains: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var chains map[string]*consulconfig.Chain
		if json.Unmarshal(data, &chains) != nil {
			return
		}
		m := consulconfig.Merge(nil, consulconfig.Convert(chains), nil)
		for svc, p := range m.Policies {
			if _, err := policy.Validate(p, policy.Env{PolicyOf: func(s string) *policyv1.ServicePolicy { return m.Policies[s] }}); err != nil {
				t.Fatalf("served policy of %s is invalid: %v", svc, err)
			}
		}
	})
}
