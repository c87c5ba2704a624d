package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// zoneShare is the share of r's calls answered in zone (instance IDs
// "<zone>-echo-N").
func zoneShare(r callResult, zone string) float64 {
	if r.ok() == 0 {
		return 0
	}
	return float64(callsBy(r.byInstance, zone+"-")) / float64(r.ok())
}

// TestZoneAwareRouting: three instances of echo in zone a, three in zone
// b; a client whose bootstrap says zone a keeps its calls in a; with two
// of a's instances critical (33 % healthy, below the default 50 %), its
// calls spill over both zones by healthy weight; a policy lowering the
// threshold to 30 % keeps them in a again. A client in zone b is not
// affected, and one without a zone spreads over both zones.
func TestZoneAwareRouting(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	checks := map[string]string{}
	for _, zone := range []string{"a", "b"} {
		for i := 1; i <= 3; i++ {
			id := fmt.Sprintf("%s-echo-%d", zone, i)
			_, checks[id] = startBackend(t, consul, "echo", id, backendOptions{meta: map[string]string{"zone": zone}})
		}
	}
	trellis := startTrellisWithAPI(t, consul)
	eds := watchEDS(t, trellis, "eds-watch-a", "a", "echo")
	eds.waitLayout(t, 15*time.Second, "dc1/a@0:3 dc1/b@1:3")

	bootFor := func(nodeID, zone string) []byte {
		t.Helper()
		raw, err := bootstrap.Generate(bootstrap.Config{Servers: []string{trellis.xdsAddr}, NodeID: nodeID, Zone: zone})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	inA := dialXDS(t, bootFor("client-a", "a"), "xds:///echo")
	inB := dialXDS(t, bootFor("client-b", "b"), "xds:///echo")
	nowhere := dialXDS(t, bootFor("client-none", ""), "xds:///echo")
	waitForInstances(t, inA, 30*time.Second, "a-echo-1", "a-echo-2", "a-echo-3")

	const n = 2000
	r := callEcho(t, inA, n)
	if len(r.failures) > 0 {
		t.Fatalf("client in zone a: %d failed calls: %v", len(r.failures), r.failures[0])
	}
	if share := zoneShare(r, "a"); share < 0.99 {
		t.Errorf("client in zone a: %.1f %% of %d calls in zone a, want >= 99 %% (%v)", 100*share, n, r.byInstance)
	}
	t.Logf("zone a client, all healthy: %.2f %% of %d calls in zone a", 100*zoneShare(r, "a"), n)
	if rb := callEcho(t, inB, 300); zoneShare(rb, "b") < 0.99 {
		t.Errorf("client in zone b: %v, want >= 99 %% in zone b", rb.byInstance)
	}
	if rn := callEcho(t, nowhere, 600); zoneShare(rn, "a") < 0.35 || zoneShare(rn, "a") > 0.65 {
		t.Errorf("client without a zone: %.1f %% in zone a, want both zones (%v)", 100*zoneShare(rn, "a"), rn.byInstance)
	}

	// Two of zone a's three instances turn critical: 33 % healthy.
	consul.SetTTL(t, checks["a-echo-1"], api.HealthCritical)
	consul.SetTTL(t, checks["a-echo-2"], api.HealthCritical)
	eds.waitLayout(t, 10*time.Second, "dc1/a@0:1 dc1/b@0:3")
	var spilled callResult
	waitFor(t, 10*time.Second, "zone a's client spilling to zone b", func() error {
		spilled = callEcho(t, inA, 400)
		// Locality weights 1 (a) and 3 (b): about 75 % in b.
		if share := zoneShare(spilled, "b"); share < 0.6 || share > 0.9 {
			return fmt.Errorf("%.1f %% in zone b (%v)", 100*share, spilled.byInstance)
		}
		return nil
	})
	if len(spilled.failures) > 0 || spilled.byInstance["a-echo-1"]+spilled.byInstance["a-echo-2"] > 0 {
		t.Errorf("spilled: %v, failures %v; want no call to a critical instance and none failed", spilled.byInstance, firstErr(spilled.failures))
	}
	t.Logf("zone a client, 1 of 3 healthy: %.1f %% of %d calls in zone b", 100*zoneShare(spilled, "b"), spilled.ok())
	if rb := callEcho(t, inB, 300); zoneShare(rb, "b") < 0.99 {
		t.Errorf("client in zone b while zone a is degraded: %v, want >= 99 %% in zone b", rb.byInstance)
	}

	// The service's own threshold: 30 % keeps zone a's client at home.
	putPolicy(t, trellis.policyClient(t), `{"service": "echo", "locality": {"min_healthy_percent": 30}}`)
	eds.waitLayout(t, 10*time.Second, "dc1/a@0:1 dc1/b@1:3")
	// A batch of calls can straddle the client's switch to the new
	// assignment: wait for one entirely after it.
	var home callResult
	waitFor(t, 10*time.Second, "every call of zone a's client on a-echo-3", func() error {
		home = callEcho(t, inA, 400)
		if home.byInstance["a-echo-3"] != 400 {
			return fmt.Errorf("answered by %v, failures %v", home.byInstance, firstErr(home.failures))
		}
		return nil
	})
	trellis.requireAllACKed(t)
	for _, l := range strings.Split(trellis.Log(), "\n") {
		if strings.Contains(l, "zone cache refused") {
			t.Errorf("server log: %s", l)
		}
	}
}

// TestZoneThresholdFromMeta: the zone spill threshold set by the
// instances' meta (trellis-zone-min-healthy-percent=30) keeps zone a's
// client in zone a with one of its three instances healthy, where the
// default 50 % would spill; an instance with a meta value that is not a
// percentage is reported by name with the accepted values; a policy's
// threshold wins over the meta.
func TestZoneThresholdFromMeta(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	checks := map[string]string{}
	for _, zone := range []string{"a", "b"} {
		for i := 1; i <= 3; i++ {
			id := fmt.Sprintf("%s-echo-%d", zone, i)
			threshold := "30"
			if id == "b-echo-3" {
				threshold = "most"
			}
			_, checks[id] = startBackend(t, consul, "echo", id, backendOptions{meta: map[string]string{"zone": zone, "trellis-zone-min-healthy-percent": threshold}})
		}
	}
	trellis := startTrellisWithAPI(t, consul)
	eds := watchEDS(t, trellis, "eds-watch-a", "a", "echo")
	eds.waitLayout(t, 15*time.Second, "dc1/a@0:3 dc1/b@1:3")
	waitFor(t, 5*time.Second, "the invalid meta reported", func() error {
		for _, l := range strings.Split(trellis.Log(), "\n") {
			if strings.Contains(l, `trellis-zone-min-healthy-percent=\"most\"`) && strings.Contains(l, "b-echo-3") && strings.Contains(l, "accepted: an integer percentage from 0 to 100") {
				return nil
			}
		}
		return fmt.Errorf("no warning about b-echo-3's meta in the server log")
	})

	raw, err := bootstrap.Generate(bootstrap.Config{Servers: []string{trellis.xdsAddr}, NodeID: "client-a", Zone: "a"})
	if err != nil {
		t.Fatal(err)
	}
	inA := dialXDS(t, raw, "xds:///echo")
	waitForInstances(t, inA, 30*time.Second, "a-echo-1", "a-echo-2", "a-echo-3")

	// Two of zone a's three instances turn critical: 33 % healthy, above
	// the meta's 30 %.
	consul.SetTTL(t, checks["a-echo-1"], api.HealthCritical)
	consul.SetTTL(t, checks["a-echo-2"], api.HealthCritical)
	eds.waitLayout(t, 10*time.Second, "dc1/a@0:1 dc1/b@1:3")
	var home callResult
	waitFor(t, 10*time.Second, "zone a's client on a-echo-3 only", func() error {
		home = callEcho(t, inA, 300)
		if n := home.byInstance["a-echo-3"]; n != 300 {
			return fmt.Errorf("answered by %v, failures %v", home.byInstance, firstErr(home.failures))
		}
		return nil
	})

	// A policy's threshold wins over the meta: 50 % spills.
	putPolicy(t, trellis.policyClient(t), `{"service": "echo", "locality": {"min_healthy_percent": 50}}`)
	eds.waitLayout(t, 10*time.Second, "dc1/a@0:1 dc1/b@0:3")
	var spilled callResult
	waitFor(t, 10*time.Second, "zone a's client spilling to zone b", func() error {
		spilled = callEcho(t, inA, 400)
		if share := zoneShare(spilled, "b"); share < 0.6 || share > 0.9 {
			return fmt.Errorf("%.1f %% in zone b (%v)", 100*share, spilled.byInstance)
		}
		return nil
	})
	t.Logf("meta 30 %%: %v; policy 50 %%: %.1f %% of %d calls in zone b", home.byInstance, 100*zoneShare(spilled, "b"), spilled.ok())
	trellis.requireAllACKed(t)
}
