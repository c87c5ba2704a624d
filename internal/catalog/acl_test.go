package catalog

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestACLFilteredReadsNeverEmptyAService runs the Watcher against a real
// Consul in default-deny mode. A token without node:read: the first
// snapshot is not held back, but no service is in it (none was ever read
// whole), every one is listed as hidden and node:read is reported. A token
// that loses node:read while the service is served: a new instance makes
// the Watcher read the service again, the read is filtered, and the
// service keeps its last complete read instead of an empty one; once
// node:read is back it is read whole again.
func TestACLFilteredReadsNeverEmptyAService(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{
		HCL:   []string{`acl { enabled = true, default_policy = "deny", tokens { initial_management = "root", agent = "root" } }`},
		Token: "root",
	})
	root := consul.Client(t)
	consul.RegisterService(t, &api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 9001})
	waitCatalog(t, root, map[string]int{"web": 1})

	const full = `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`
	const noNode = `service_prefix "" { policy = "read" }`
	token := func(name, rules string) (*api.ACLPolicy, string) {
		t.Helper()
		p, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := root.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p, tok.SecretID
	}
	watch := func(secret string, watches int) (*Watcher, *consulwatch.ACL) {
		t.Helper()
		tr := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}
		t.Cleanup(tr.CloseIdleConnections)
		client, err := api.NewClient(&api.Config{Address: consul.HTTPAddr(), Scheme: "http", Token: secret, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		acl, err := consulwatch.NewACL(consulwatch.ACLConfig{Client: client, API: &api.Config{Address: consul.HTTPAddr(), Token: secret}})
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Client: client, ACL: acl, MaxBackoff: 200 * time.Millisecond}
		if watches > 0 {
			cfg.Watches, cfg.WatchClient = watches, client
		}
		return startWatcher(t, cfg), acl
	}
	nodeReadReported := func(acl *consulwatch.ACL) error {
		for _, p := range acl.Problems() {
			if p.Component == "catalog" && p.Permission == consulwatch.PermNodeRead && p.Source == aclSourceReads {
				return nil
			}
		}
		return fmt.Errorf("node:read from service reads not reported: %v", acl.Problems())
	}

	t.Run("never read whole", func(t *testing.T) {
		_, secret := token("no-node", noNode)
		w, acl := watch(secret, 0)
		snap := nextSnapshot(t, w, 20*time.Second, func(*model.Snapshot) error { return nil })
		if len(snap.Services) != 0 {
			t.Errorf("first snapshot holds %d services read through a filter, want none", len(snap.Services))
		}
		st := waitStatus(t, w, 10*time.Second, func(st Status) error {
			if !slices.Contains(st.Hidden, "web") || !slices.Contains(st.Hidden, "consul") {
				return fmt.Errorf("hidden %v, want consul and web", st.Hidden)
			}
			return nodeReadReported(acl)
		})
		if !st.Synced {
			t.Error("not synced: hidden services held the first snapshot back")
		}
	})

	for _, watches := range []int{0, 10} {
		name := "loses node:read while served"
		if watches > 0 {
			// Its own watch answers filtered: reads take over, and the
			// first whole one watches it again. (Consul checks a
			// blocking query's token when the query starts: the one
			// waiting when node:read goes may answer web-2 whole; the
			// next, web-3, is filtered.)
			name += " and watched"
		}
		t.Run(name, func(t *testing.T) {
			policy, secret := token(fmt.Sprintf("full-%d", watches), full)
			w, acl := watch(secret, watches)
			nextSnapshot(t, w, 20*time.Second, hasPorts(map[string][]int{"web": {9001}}))
			if watches > 0 {
				waitStatus(t, w, 10*time.Second, func(st Status) error {
					if st.Watches != st.Services {
						return fmt.Errorf("%d of %d services watched", st.Watches, st.Services)
					}
					return nil
				})
			}

			policy.Rules = noNode
			if _, _, err := root.ACL().PolicyUpdate(policy, nil); err != nil {
				t.Fatal(err)
			}
			id2, id3 := fmt.Sprintf("web-2-%d", watches), fmt.Sprintf("web-3-%d", watches)
			consul.RegisterService(t, &api.AgentServiceRegistration{ID: id2, Name: "web", Address: "127.0.0.1", Port: 9002})
			consul.RegisterService(t, &api.AgentServiceRegistration{ID: id3, Name: "web", Address: "127.0.0.1", Port: 9003})
			waitStatus(t, w, 20*time.Second, func(st Status) error {
				if !slices.Contains(st.Hidden, "web") {
					return fmt.Errorf("hidden %v, want web", st.Hidden)
				}
				return nodeReadReported(acl)
			})
			got := ports(w.Latest(), "web")
			if !slices.Equal(got, []int{9001}) && (watches == 0 || !slices.Equal(got, []int{9001, 9002})) {
				t.Errorf("web's ports while its read is filtered: %v, want its last complete read ([9001], or [9001 9002] answered to a watch under the old token)", got)
			}

			policy.Rules = full
			if _, _, err := root.ACL().PolicyUpdate(policy, nil); err != nil {
				t.Fatal(err)
			}
			nextSnapshot(t, w, 20*time.Second, hasPorts(map[string][]int{"web": {9001, 9002, 9003}}))
			waitStatus(t, w, 10*time.Second, func(st Status) error {
				if len(st.Hidden) != 0 {
					return fmt.Errorf("hidden %v after node:read is back", st.Hidden)
				}
				if err := nodeReadReported(acl); err == nil {
					return fmt.Errorf("node:read still reported: %v", acl.Problems())
				}
				if watches > 0 && st.Watches != st.Services {
					return fmt.Errorf("%d of %d services watched after node:read is back", st.Watches, st.Services)
				}
				return nil
			})
			// The next run starts from web-1 alone.
			consul.DeregisterService(t, id2)
			consul.DeregisterService(t, id3)
			nextSnapshot(t, w, 20*time.Second, hasPorts(map[string][]int{"web": {9001}}))
		})
	}
}
