package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// writeEntry writes a config entry given as `consul config write` JSON.
func writeEntry(t testing.TB, client *api.Client, entryJSON string) {
	t.Helper()
	entry, err := api.DecodeConfigEntryFromJSON([]byte(entryJSON))
	if err != nil {
		t.Fatalf("config entry: %v\n%s", err, entryJSON)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := client.ConfigEntries().Set(entry, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatalf("write %s/%s: %v", entry.GetKind(), entry.GetName(), err)
	}
}

// readyz returns the server's /readyz body.
func (s *trellisServer) readyz(t testing.TB) string {
	t.Helper()
	_, body, err := s.get("/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	return body
}

// TestConsulConfigEntries: Consul's own entries route real grpc-go xDS
// clients: a service-router's header and method routes, a service-splitter's
// 90/10 split between subsets a service-resolver defines by bexpr filters,
// the resolver's default subset; an entry change reaches the client within
// 1s; a query parameter route is reported by name and not sent; a Trellis
// policy replaces the chain and /readyz says so; every version is ACKed.
func TestConsulConfigEntries(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	client := consul.Client(t)
	for _, b := range []struct {
		id, version string
		tags        []string
	}{{"v1-a", "v1", nil}, {"v1-b", "v1", nil}, {"v2-a", "v2", []string{"canary"}}, {"v2-old", "v2", nil}} {
		startBackend(t, consul, "echo", b.id, backendOptions{meta: map[string]string{"version": b.version}, tags: b.tags})
	}
	writeEntry(t, client, `{"Kind": "service-defaults", "Name": "echo", "Protocol": "grpc"}`)
	// v2 is the canary-tagged v2 instance only: v2-old has the meta but
	// not the tag.
	writeEntry(t, client, `{"Kind": "service-resolver", "Name": "echo", "DefaultSubset": "v1", "Subsets": {
		"v1": {"Filter": "Service.Meta.version == v1"},
		"v2": {"Filter": "Service.Meta.version == v2 and \"canary\" in Service.Tags"}}}`)

	trellis := startTrellisWithAPI(t, consul)
	conn := dialXDS(t, trellis.bootstrapFor(t, "chain-client"), "xds:///echo")
	isV1 := func(id string) bool { return strings.HasPrefix(id, "v1-") }
	isCanary := func(id string) bool { return id == "v2-a" }

	// The default subset: only v1 answers.
	waitForShare(t, conn, 20*time.Second, 60, 1, 1, isV1)

	writeEntry(t, client, `{"Kind": "service-splitter", "Name": "echo", "Splits": [
		{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}`)
	writeEntry(t, client, `{"Kind": "service-router", "Name": "echo", "Routes": [
		{"Match": {"HTTP": {"QueryParam": [{"Name": "debug", "Present": true}]}}, "Destination": {"ServiceSubset": "v2"}},
		{"Match": {"HTTP": {"Header": [{"Name": "X-Version", "Exact": "v2"}]}}, "Destination": {"ServiceSubset": "v2"}},
		{"Match": {"HTTP": {"PathExact": "/trellis.echo.v1.Echo/Reverse"}}, "Destination": {"ServiceSubset": "v2"}}]}`)

	t.Run("header route", func(t *testing.T) {
		waitForShare(t, conn, 10*time.Second, 50, 1, 1, isCanary, "x-version", "v2")
	})
	t.Run("method route", func(t *testing.T) {
		echo := echov1.NewEchoClient(conn)
		byInstance := map[string]int{}
		for range 50 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := echo.Reverse(ctx, &echov1.EchoRequest{Message: "abc"})
			cancel()
			if err != nil {
				t.Fatalf("Reverse: %v", err)
			}
			byInstance[resp.GetInstanceId()]++
		}
		if byInstance["v2-a"] != 50 {
			t.Errorf("Reverse answered by %v, want only v2-a", byInstance)
		}
	})
	t.Run("split 90/10", func(t *testing.T) {
		// Measure once the split is in effect (a share only the split
		// gives, twice).
		waitForShare(t, conn, 10*time.Second, 300, 0.03, 0.2, isCanary)
		waitForShare(t, conn, 10*time.Second, 300, 0.03, 0.2, isCanary)
		res := callEcho(t, conn, 2000)
		if len(res.failures) > 0 {
			t.Fatalf("%d calls failed: %v", len(res.failures), res.failures[0])
		}
		share := shareOf(res, isCanary)
		t.Logf("90/10 split: v2 share %.3f over 2000 calls (%v)", share, res.byInstance)
		if share < 0.07 || share > 0.13 {
			t.Errorf("v2 got %.3f of 2000 calls, want 0.10 +- 0.03; counts %v", share, res.byInstance)
		}
		if res.byInstance["v2-old"] > 0 {
			t.Errorf("v2-old (no canary tag) answered %d calls; the filter leaves it out", res.byInstance["v2-old"])
		}
	})
	t.Run("redirect", func(t *testing.T) {
		// legacy has an instance of its own, but its resolver redirects
		// every call to echo's v1 subset.
		startBackend(t, consul, "legacy", "legacy-1", backendOptions{})
		writeEntry(t, client, `{"Kind": "service-defaults", "Name": "legacy", "Protocol": "grpc"}`)
		writeEntry(t, client, `{"Kind": "service-resolver", "Name": "legacy", "Redirect": {"Service": "echo", "ServiceSubset": "v1"}}`)
		legacy := dialXDS(t, trellis.bootstrapFor(t, "chain-legacy-client"), "xds:///legacy")
		waitForShare(t, legacy, 20*time.Second, 50, 1, 1, isV1)
		res := callEcho(t, legacy, 200)
		if len(res.failures) > 0 || shareOf(res, isV1) != 1 {
			t.Errorf("calls to legacy: %v, failures %v; want all on echo's v1 instances", res.byInstance, res.failures)
		}
	})
	t.Run("unsupported field reported", func(t *testing.T) {
		want := "consul config entry not sent: service-router/echo: Routes[0].Match.HTTP.QueryParam: "
		waitFor(t, 10*time.Second, "the query parameter route on /readyz", func() error {
			if body := trellis.readyz(t); !strings.Contains(body, want) {
				return fmt.Errorf("no %q in /readyz:\n%s", want, body)
			}
			return nil
		})
		if log := trellis.Log(); !strings.Contains(log, "Routes[0].Match.HTTP.QueryParam") {
			t.Errorf("the unsupported field is not logged")
		}
		_, metrics, err := trellis.get("/metrics")
		if err != nil || !strings.Contains(metrics, `trellis_consulconfig_unsupported_fields{kind="service-router"} 1`) {
			t.Errorf("metrics lack trellis_consulconfig_unsupported_fields{kind=\"service-router\"} 1 (%v)", err)
		}
		// That it is not sent is shown by the conversion's golden files
		// (internal/consulconfig/testdata): gRPC clients skip such a
		// route without NACKing it, so no call here could tell.
	})
	t.Run("entry change within 1s", func(t *testing.T) {
		loop := startTraffic(t, conn, 5*time.Millisecond)
		writeEntry(t, client, `{"Kind": "service-splitter", "Name": "echo", "Splits": [{"Weight": 100, "ServiceSubset": "v2"}]}`)
		written := time.Now()
		time.Sleep(1500 * time.Millisecond)
		loop.mu.Lock()
		lastV1 := loop.lastSeen["v1-a"]
		if b := loop.lastSeen["v1-b"]; b.After(lastV1) {
			lastV1 = b
		}
		loop.mu.Unlock()
		d := lastV1.Sub(written)
		t.Logf("v1 last answered %s after the splitter moved every call to v2", d)
		if d > time.Second {
			t.Errorf("v1 still answered %s after the splitter moved to v2, want within 1s", d)
		}
		loop.reset()
		time.Sleep(300 * time.Millisecond)
		counts, failures := loop.snapshot()
		loop.Stop()
		if len(failures) > 0 || counts["v2-a"] == 0 || counts["v1-a"]+counts["v1-b"]+counts["v2-old"] > 0 {
			t.Errorf("after the change: counts %v, failures %v; want all calls on v2-a", counts, failures)
		}
	})
	t.Run("trellis policy overrides", func(t *testing.T) {
		putPolicy(t, trellis.policyClient(t), `{"service": "echo", "subsets": [{"name": "old", "filter": "Service.ID == \"v2-old\""}],
			"routes": [{"destination": {"subset": "old"}}]}`)
		waitForShare(t, conn, 10*time.Second, 50, 1, 1, func(id string) bool { return id == "v2-old" }, "x-version", "v2")
		if body := trellis.readyz(t); !strings.Contains(body, "consul config entries overridden by the trellis policy of echo") {
			t.Errorf("/readyz does not show the override:\n%s", body)
		}
	})
	trellis.requireAllACKed(t)
	trellis.requireNoNACKsInMetrics(t)
}
