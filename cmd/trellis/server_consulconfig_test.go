package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// TestConsulConfigCombiner: the pipeline gets the store's policies and the
// chains' policies in one snapshot, the store's winning for a service
// with both; /readyz and the metrics name the override and every field not
// sent.
func TestConsulConfigCombiner(t *testing.T) {
	raw, err := os.ReadFile("../../internal/consulconfig/testdata/unsupported.chains.json")
	if err != nil {
		t.Fatal(err)
	}
	var chains map[string]*consulconfig.Chain
	if err := json.Unmarshal(raw, &chains); err != nil {
		t.Fatal(err)
	}
	raw, err = os.ReadFile("../../internal/consulconfig/testdata/routes.chains.json")
	if err != nil {
		t.Fatal(err)
	}
	var more map[string]*consulconfig.Chain
	if err := json.Unmarshal(raw, &more); err != nil {
		t.Fatal(err)
	}
	chains["echo"] = more["echo"]

	// Without --consul-config-entries nothing watches Consul; publish is
	// driven here with fixed inputs instead.
	s, err := newConsulConfigServer(consulConfigOptions{enabled: false}, nil, slog.New(slog.DiscardHandler), prometheus.NewRegistry(), nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	own := &policyv1.ServicePolicy{Service: "echo", Routes: []*policyv1.Route{{Name: "all"}}}
	s.publish(&store.Snapshot{Policies: map[string]*policyv1.ServicePolicy{"echo": own}, Revisions: map[string]uint64{"echo": 7}},
		&consulconfig.Snapshot{Chains: chains, Converted: consulconfig.Convert(chains)})
	got := <-s.snapshots()
	if !proto.Equal(got.Policies["echo"], own) || got.Revisions["echo"] != 7 {
		t.Errorf("echo: %v (revision %d), want the stored policy at revision 7", got.Policies["echo"], got.Revisions["echo"])
	}
	if got.Policies["shop"] == nil {
		t.Errorf("shop's chain policy is not passed on: %v", got.Policies)
	}
	if n := testutil.ToFloat64(s.overridden); n != 1 {
		t.Errorf("overridden services %v, want 1", n)
	}
	if n := testutil.ToFloat64(s.unsupported.WithLabelValues("service-router")); n == 0 {
		t.Error("no unsupported service-router fields counted")
	}
	s.mu.Lock()
	m := s.merged
	s.mu.Unlock()
	var detail strings.Builder
	writeMerged(&detail, m)
	for _, want := range []string{
		"policies from consul config entries: shop\n",
		"consul config entries overridden by the trellis policy of echo\n",
		"consul config entry not sent: service-router/shop: Routes[0].Match.HTTP.QueryParam: ",
	} {
		if !strings.Contains(detail.String(), want) {
			t.Errorf("/readyz detail lacks %q:\n%s", want, detail.String())
		}
	}
}
