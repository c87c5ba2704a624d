package policy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// examplesDir holds one commented example policy per feature.
const examplesDir = "../../examples/policies"

// TestExamples keeps examples/policies valid: every file parses, and every
// policy in it passes Validate without violations or warnings, with the
// other policies of the same file as the stored ones.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found %d example policies in %s, want at least 10", len(files), examplesDir)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			policies, err := policy.ParseDocuments(f)
			if err != nil {
				t.Fatalf("ParseDocuments: %v", err)
			}
			if len(policies) == 0 {
				t.Fatal("no policy in file")
			}
			byService := map[string]*policyv1.ServicePolicy{}
			for _, p := range policies {
				byService[p.GetService()] = p
			}
			env := policy.Env{
				KnownService: func(name string) bool { return byService[name] != nil },
				PolicyOf:     func(name string) *policyv1.ServicePolicy { return byService[name] },
			}
			for i, p := range policies {
				warnings, err := policy.Validate(p, env)
				if err != nil {
					t.Errorf("document %d: %v", i+1, err)
				}
				for _, w := range warnings {
					t.Errorf("document %d: warning: %s", i+1, w)
				}
				if p.GetService() != "echo" && p.GetService() != "echo-legacy" {
					t.Errorf("document %d: service %q; examples are written for echo", i+1, p.GetService())
				}
			}
		})
	}
}
