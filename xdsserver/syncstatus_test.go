package xdsserver_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// TestStreamSyncDetails checks, with a real grpc-go client, what the status
// records besides ACKs: the bootstrap's locality, every NACK with its text,
// and the content versions of what was sent.
func TestStreamSyncDetails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_MAGLEV))
	srv, addr := startServer(t, c, prometheus.NewRegistry())
	builder, err := xds.NewXDSResolverWithConfigForTesting(fmt.Appendf(nil, `{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "located", "locality": {"region": "eu-west", "zone": "eu-west-1b", "sub_zone": "rack-7"}}
}`, addr))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///svc", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Connect()

	cds := func() (xdsserver.StreamStatus, xdsserver.TypeStatus, bool) {
		for _, st := range srv.Streams() {
			for _, ts := range st.Types {
				if ts.TypeURL == resource.ClusterType {
					return st, ts, true
				}
			}
		}
		return xdsserver.StreamStatus{}, xdsserver.TypeStatus{}, false
	}
	waitFor(ctx, t, func() string {
		if _, ts, ok := cds(); !ok || ts.NACKs == 0 {
			return fmt.Sprintf("no CDS NACK: %+v", srv.Streams())
		}
		return ""
	})
	st, ts, _ := cds()
	if l := st.Locality; l == nil || *l != (xdsserver.Locality{Region: "eu-west", Zone: "eu-west-1b", SubZone: "rack-7"}) {
		t.Errorf("Locality = %+v", st.Locality)
	}
	if len(ts.NACKHistory) != 1 || !strings.Contains(ts.NACKHistory[0].Error, "MAGLEV") || ts.NACKHistory[0].Version != ts.SentVersion || ts.NACKHistory[0].At.IsZero() {
		t.Errorf("NACKHistory = %+v, want the one NACK of %s about MAGLEV", ts.NACKHistory, ts.SentVersion)
	}
	_, rejected, _ := c.Resource(resource.ClusterType, "svc")
	if ts.SentContent["svc"] != rejected || rejected == "" {
		t.Errorf("SentContent = %v, want svc: %s", ts.SentContent, rejected)
	}

	c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN))
	_, fixed, _ := c.Resource(resource.ClusterType, "svc")
	if fixed == rejected {
		t.Fatal("the fixed cluster has the rejected cluster's content version")
	}
	waitFor(ctx, t, func() string {
		_, ts, _ := cds()
		if ts.Pending || ts.AckedVersion != ts.SentVersion || ts.SentContent["svc"] != fixed {
			return fmt.Sprintf("fixed cluster not ACKed with its content version %s: %+v", fixed, ts)
		}
		return ""
	})
	if _, ts, _ := cds(); len(ts.NACKHistory) != 1 {
		t.Errorf("NACKHistory after the ACK = %+v, want the earlier NACK kept", ts.NACKHistory)
	}
}
