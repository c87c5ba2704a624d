// Package archtest checks the import rules that the package docs state:
// data flows one way (catalog -> model -> translate -> cache -> ADS), only
// cmd/ wires, and the packages that must not know Consul or xDS do not
// import them.
package archtest

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/trellis-mesh/trellis/"

// rules: package (module-relative) -> import path prefixes it must not
// import directly.
var rules = map[string][]string{
	"internal/model":       {"github.com/hashicorp/consul", "github.com/envoyproxy", module + "xdsserver", module + "internal/catalog"},
	"internal/consulwatch": {module},
	"internal/catalog":     {module + "xdsserver", module + "identity", module + "cmd", "github.com/envoyproxy"},
	"internal/pipeline":    {"github.com/hashicorp/consul", module + "internal/catalog", module + "cmd"},
	"xdsserver/translate":  {"github.com/hashicorp/consul", module + "xdsserver/xdscache", module + "internal/catalog", module + "internal/pipeline"},
	"xdsserver/xdscache":   {module + "internal/catalog", module + "internal/model", module + "xdsserver/translate", module + "identity"},
	"internal/policy":      {module + "xdsserver", module + "internal/catalog"},
}

// TestImportRules fails when a package imports what its doc forbids, or
// when anything but a main package imports cmd/.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{.Name}} {{join .Imports \" \"}}", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		pkg, name, imports := strings.TrimPrefix(f[0], module), f[1], f[2:]
		seen[pkg] = true
		for _, imp := range imports {
			if strings.HasPrefix(imp, module+"cmd/") && name != "main" {
				t.Errorf("%s imports %s: only cmd/ wires", pkg, imp)
			}
			for _, forbidden := range rules[pkg] {
				if strings.HasPrefix(imp, forbidden) {
					t.Errorf("%s imports %s, which its package doc forbids (%s)", pkg, imp, forbidden)
				}
			}
		}
	}
	for pkg := range rules {
		if !seen[pkg] {
			t.Errorf("rule for %s, which go list does not know", pkg)
		}
	}
}
