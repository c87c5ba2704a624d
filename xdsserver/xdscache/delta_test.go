package xdscache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
)

// TestApplyDeltaMatchesApply drives random sequences of states through two
// caches, one given each whole state (Apply), the other only what changed
// (ApplyDelta), with the same Listener aliases requested from both, and
// checks after every step that they serve exactly the same resources and
// versions, and hand the same values to go-control-plane.
func TestApplyDeltaMatchesApply(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			whole := New(Config{VersionPrefix: "v.", MaxAliases: 3})
			delta := New(Config{VersionPrefix: "v.", MaxAliases: 3})
			// Aliases requested on both, by host:port names.
			for _, c := range []*Cache{whole, delta} {
				release := c.acquireAliases(map[string]struct{}{"l1:80": {}, "l2:80": {}, "l3:443": {}})
				t.Cleanup(release)
			}

			state := Resources{resource.ListenerType: {}, resource.ClusterType: {}, resource.EndpointType: {}}
			whole.Apply(copyResources(state))
			for step := range 200 {
				updated, deleted := Resources{}, map[string][]string{}
				for range 1 + rng.IntN(3) {
					typeURL := []string{resource.ListenerType, resource.ClusterType, resource.EndpointType}[rng.IntN(3)]
					var name string
					switch typeURL {
					case resource.ListenerType:
						name = fmt.Sprintf("l%d", rng.IntN(5))
					case resource.ClusterType:
						name = fmt.Sprintf("c%d", rng.IntN(5))
					default:
						name = fmt.Sprintf("e%d", rng.IntN(5))
					}
					if _, ok := state[typeURL][name]; ok && rng.IntN(3) == 0 {
						delete(state[typeURL], name)
						delete(updated[typeURL], name)
						deleted[typeURL] = append(deleted[typeURL], name)
						continue
					}
					var r types.Resource
					switch typeURL {
					case resource.ListenerType:
						r = listener(name, fmt.Sprint("p", rng.IntN(3)))
					case resource.ClusterType:
						r = cluster(name, int64(1+rng.IntN(3)))
					default:
						r = cla(name, uint32(8000+rng.IntN(3)))
					}
					state[typeURL][name] = r
					if updated[typeURL] == nil {
						updated[typeURL] = map[string]types.Resource{}
					}
					updated[typeURL][name] = r
				}
				wr := whole.Apply(copyResources(state))
				dr := delta.ApplyDelta(updated, deleted)
				label := fmt.Sprintf("step %d", step)
				if wr.Err != nil || dr.Err != nil {
					t.Fatalf("%s: errors %v / %v", label, wr.Err, dr.Err)
				}
				if diff := cmp.Diff(whole.Versions(), delta.Versions()); diff != "" {
					t.Fatalf("%s: served versions differ (-Apply +ApplyDelta):\n%s", label, diff)
				}
				for typeURL, lc := range whole.linear {
					w, d := lc.GetResources(), delta.linear[typeURL].GetResources()
					// Aliases are clones made by each cache: equal, not the same.
					if !maps.EqualFunc(w, d, func(a, b types.Resource) bool { return a == b || proto.Equal(a, b) }) {
						t.Fatalf("%s: %s in the LinearCaches differ: %v / %v", label, typeURL, slices.Sorted(maps.Keys(w)), slices.Sorted(maps.Keys(d)))
					}
				}
				for typeURL, byName := range wr.Types {
					if dr.Types[typeURL].Total != byName.Total {
						t.Fatalf("%s: %s totals differ: %d / %d", label, typeURL, byName.Total, dr.Types[typeURL].Total)
					}
				}
			}
		})
	}
}

func copyResources(r Resources) Resources {
	out := make(Resources, len(r))
	for typeURL, m := range r {
		out[typeURL] = maps.Clone(m)
	}
	return out
}
