package names

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules enforces the package doc: names is a leaf.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, "github.com/trellis-mesh/trellis/") && d != "github.com/trellis-mesh/trellis/internal/names" {
			t.Errorf("depends on %s; names must not import other Trellis packages", d)
		}
	}
}
