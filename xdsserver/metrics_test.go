package xdsserver_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// histogramCounts returns the sample count of every series of the named
// histogram in reg, by its labels as gather writes them.
func histogramCounts(t *testing.T, reg *prometheus.Registry, name string) map[string]uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
			}
			out[key] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// TestStreamMetrics connects real grpc-go xDS clients and checks the
// metrics computed from the streams and the cache: subscriptions by type
// and implementation, resources by type, and the push-to-ACK latency
// histogram, which counts every ACK.
func TestStreamMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	if res := c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)); res.Err != nil {
		t.Fatal(res.Err)
	}
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, c, reg)

	// Before any client: no subscription, the cache's resources counted.
	got := gather(t, reg)
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		if n := got[fmt.Sprintf(`trellis_xds_resources{profile="",type=%q}`, typ)]; n != 1 {
			t.Errorf("trellis_xds_resources{type=%q} = %v before any client, want 1", typ, n)
		}
		if n, ok := got[fmt.Sprintf(`trellis_xds_subscriptions{implementation="grpc-go",type=%q}`, typ)]; ok {
			t.Errorf("trellis_xds_subscriptions{type=%q} = %v before any client, want no series", typ, n)
		}
	}

	for i := range 3 {
		conn := dial(t, addr, fmt.Sprintf("node-%d", i), "xds:///svc")
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("client %d: Check: %v", i, err)
		}
	}
	waitFor(ctx, t, func() string {
		for _, st := range srv.Streams() {
			for _, ts := range st.Types {
				if ts.Pending || ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion || ts.NACKs != 0 {
					return fmt.Sprintf("stream %d %s not ACKed: %+v", st.ID, ts.TypeURL, ts)
				}
			}
		}
		return ""
	})
	got = gather(t, reg)
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		name := fmt.Sprintf(`trellis_xds_subscriptions{implementation="grpc-go",type=%q}`, typ)
		if got[name] != 3 {
			t.Errorf("%s = %v, want 3", name, got[name])
		}
	}
	acks := histogramCounts(t, reg, "trellis_xds_ack_latency_seconds")
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		key := fmt.Sprintf(`type=%q`, typ)
		want := got[fmt.Sprintf(`trellis_xds_acks_total{type=%q}`, typ)]
		if want < 3 || float64(acks[key]) != want {
			t.Errorf("trellis_xds_ack_latency_seconds{%s} count = %d, want trellis_xds_acks_total = %v (at least 3)", key, acks[key], want)
		}
	}

	// A second cluster in the cache is counted at the next scrape.
	next := clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)
	for typeURL, m := range clientResources(t, "other", backend, clusterv3.Cluster_ROUND_ROBIN) {
		for name, r := range m {
			next[typeURL][name] = r
		}
	}
	if res := c.Apply(next); res.Err != nil {
		t.Fatal(res.Err)
	}
	if n := gather(t, reg)[`trellis_xds_resources{profile="",type="cluster"}`]; n != 2 {
		t.Errorf(`trellis_xds_resources{type="cluster"} = %v after adding a service, want 2`, n)
	}
}

// TestResourcesPerProfile counts the caches of the active profiles only.
func TestResourcesPerProfile(t *testing.T) {
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{})
	if err != nil {
		t.Fatal(err)
	}
	backend := startBackend(t)
	first := pc.Profiles()[0].Name
	pc.Apply(map[string]xdscache.Change{first: {Updated: clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)}})
	reg := prometheus.NewRegistry()
	if _, err := xdsserver.New(xdsserver.Config{Watcher: pc.ConfigWatcher(), Versions: pc, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	if n := got[fmt.Sprintf(`trellis_xds_resources{profile=%q,type="listener"}`, first)]; n != 1 {
		t.Errorf("listeners of profile %s = %v, want 1 (metrics: %v)", first, n, got)
	}
	for _, p := range pc.Profiles()[1:] {
		if n, ok := got[fmt.Sprintf(`trellis_xds_resources{profile=%q,type="listener"}`, p.Name)]; ok {
			t.Errorf("inactive profile %s counted: %v", p.Name, n)
		}
	}
}
