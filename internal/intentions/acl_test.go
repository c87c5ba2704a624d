package intentions_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/intentions"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestWatcherSkipsReadsFilteredByACLs runs the watcher against a real
// Consul in default-deny mode with a token whose intentions read is
// denied: the config entries are filtered, so nothing is published (no
// hidden deny is taken for absent) and intention:read is reported; once the
// token may read them, the read at the same index is processed and the
// report clears.
func TestWatcherSkipsReadsFilteredByACLs(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{
		HCL:   []string{`acl { enabled = true, default_policy = "deny", tokens { initial_management = "root", agent = "root" } }`},
		Token: "root",
	})
	root := agent.Client(t)
	setEntry(t, root, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "db",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionDeny}}})
	policy, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: "no-intentions", Rules: `service_prefix "" { policy = "read" intentions = "deny" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := root.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.Datacenter = agent.HTTPAddr(), "http", token.SecretID, ""
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	acl, err := consulwatch.NewACL(consulwatch.ACLConfig{Client: client, API: cfg})
	if err != nil {
		t.Fatal(err)
	}
	w, err := intentions.New(intentions.Config{Client: client, ACL: acl, WaitTime: time.Second, MinDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)

	reported := func() bool {
		for _, p := range acl.Problems() {
			if p.Component == "intentions" && p.Permission == consulwatch.PermIntentionRead {
				return true
			}
		}
		return false
	}
	poll(t, func() error {
		if !reported() {
			return fmt.Errorf("intention:read not reported: %v", acl.Problems())
		}
		return nil
	})
	if st := w.Status(); st.Synced || w.Latest() != nil {
		t.Errorf("a read filtered by ACLs was published: synced %t", st.Synced)
	}

	policy.Rules = `service_prefix "" { policy = "read" intentions = "read" }`
	if _, _, err := root.ACL().PolicyUpdate(policy, nil); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, w, "db's deny once intentions are readable", func(in *model.Intentions) error {
		if in.Len() != 1 {
			return fmt.Errorf("%d intentions, want 1", in.Len())
		}
		return nil
	})
	poll(t, func() error {
		if reported() {
			return fmt.Errorf("intention:read still reported: %v", acl.Problems())
		}
		return nil
	})
}

// poll retries cond for up to testTimeout.
func poll(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
