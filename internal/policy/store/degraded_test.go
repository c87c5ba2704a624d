package store_test

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func TestSnapshotDegradedDetail(t *testing.T) {
	snap := &store.Snapshot{
		Policies: map[string]*policyv1.ServicePolicy{
			"src": routingTo("src", "dep", "s1"),
			"dep": withSubset("dep", "s2"),
			"ok":  routingTo("ok", "dep", "s2"),
		},
		Revisions: map[string]uint64{"src": 12, "dep": 13, "ok": 14},
	}
	got := snap.DegradedDetail()
	want := `policy of service "src" (revision 12) is in effect without routes[0] (canary): subset "s1" of service "dep" is not defined`
	if len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Errorf("DegradedDetail = %q, want one line starting %q", got, want)
	}
	var none *store.Snapshot
	if none.DegradedDetail() != nil {
		t.Error("DegradedDetail of a nil snapshot is not empty")
	}
}
