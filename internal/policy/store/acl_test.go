package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestWatcherSkipsReadsFilteredByACLs runs the watcher against a real
// Consul in default-deny mode with a token that may not read the policy
// prefix: the key list is filtered, so nothing is published (no policy is
// taken for removed) and key:read is reported; once the token may read the
// prefix, the read at the same index is processed and the report clears.
func TestWatcherSkipsReadsFilteredByACLs(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{
		HCL:   []string{`acl { enabled = true, default_policy = "deny", tokens { initial_management = "root", agent = "root" } }`},
		Token: "root",
	})
	root := agent.Client(t)
	if _, err := root.KV().Put(&consulapi.KVPair{Key: "trellis/policies/web", Value: []byte(`{"service":"web"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	policy, _, err := root.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "other-keys", Rules: `key_prefix "other/" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := root.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := consulapi.DefaultNonPooledConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.Datacenter = agent.HTTPAddr(), "http", token.SecretID, ""
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	acl, err := consulwatch.NewACL(consulwatch.ACLConfig{Client: client, API: cfg})
	if err != nil {
		t.Fatal(err)
	}
	w, err := store.NewWatcher(store.WatcherConfig{Client: client, ACL: acl, WaitTime: time.Second, MinDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)

	reported := func() error {
		for _, p := range acl.Problems() {
			if p.Component == "policy" && p.Permission == "key:read on trellis/policies/" {
				return nil
			}
		}
		return fmt.Errorf("key:read not reported: %v", acl.Problems())
	}
	waitFor(t, func() error { return reported() })
	if st := w.Status(); st.Synced || w.Latest() != nil {
		t.Errorf("a read filtered by ACLs was published: synced %t, latest %v", st.Synced, w.Latest())
	}

	policy.Rules = `key_prefix "trellis/policies/" { policy = "read" }`
	if _, _, err := root.ACL().PolicyUpdate(policy, nil); err != nil {
		t.Fatal(err)
	}
	snap := waitSnapshot(t, w, "the policy once the prefix is readable", func(s *store.Snapshot) bool { return s.Policies["web"] != nil })
	if len(snap.Policies) != 1 {
		t.Errorf("policies %v, want web's only", snap.Policies)
	}
	waitFor(t, func() error {
		if reported() == nil {
			return fmt.Errorf("key:read still reported: %v", acl.Problems())
		}
		return nil
	})
}

// waitFor polls cond for up to 20s.
func waitFor(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(strings.TrimSpace(err.Error()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
