package translate

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules enforces the package doc: translate must not depend on
// Consul's API, the xDS cache or the server, directly or not.
func TestImportRules(t *testing.T) {
	checkDeps(t, ".", "github.com/hashicorp/consul/api", "github.com/trellis-mesh/trellis/xdsserver/xdscache",
		"github.com/trellis-mesh/trellis/xdsserver", "github.com/trellis-mesh/trellis/internal/catalog")
}

// checkDeps fails when the package in dir depends on one of forbidden.
func checkDeps(t *testing.T, dir string, forbidden ...string) {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f {
				t.Errorf("depends on %s, which its package doc forbids", d)
			}
		}
	}
}
