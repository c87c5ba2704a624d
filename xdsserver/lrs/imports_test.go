package lrs

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules enforces the package doc: no dependency, direct or not,
// on the catalog, the model, the translator or the xDS cache.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	forbidden := map[string]bool{
		"github.com/trellis-mesh/trellis/internal/catalog":    true,
		"github.com/trellis-mesh/trellis/internal/model":      true,
		"github.com/trellis-mesh/trellis/xdsserver/translate": true,
		"github.com/trellis-mesh/trellis/xdsserver/xdscache":  true,
		"github.com/hashicorp/consul/api":                     true,
	}
	for _, d := range deps {
		if forbidden[d] {
			t.Errorf("depends on %s, which its package doc forbids", d)
		}
	}
}
