package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// TestPeersZonesAndFailover: grpc-js-xds and C-core 1.51 clients in zone a
// accept and follow load assignments with several priorities: their own
// zone (priority 0), the other zone (1) and a failover datacenter (2).
// With zone a's instances critical their calls go to zone b; with zone
// b's too, to dc2; every response is ACKed.
func TestPeersZonesAndFailover(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", NodeName: "node-2", JoinWAN: dc1})
	trellis := startTrellisWithAPI(t, dc1)
	for _, impl := range []peerImpl{nodePeer, pythonPeer} {
		t.Run(impl.name, func(t *testing.T) {
			svc := impl.name + "-zoned"
			checks := map[string]string{}
			for _, zone := range []string{"a", "b"} {
				for i := 1; i <= 2; i++ {
					id := fmt.Sprintf("%s-%s-%d", svc, zone, i)
					_, checks[id] = startBackend(t, dc1, svc, id, backendOptions{meta: map[string]string{"zone": zone}})
				}
			}
			startBackend(t, dc2, svc, svc+"-dc2-1", backendOptions{})
			putPolicy(t, trellis.policyClient(t), `{"service": "`+svc+`", "failover": {"datacenters": ["dc2"]},
				"defaults": {"retry": {"retry_on": ["unavailable"], "num_retries": 3}}}`)
			eds := watchEDS(t, trellis, "eds-"+svc, "a", svc)
			eds.waitLayout(t, 20*time.Second, "dc1/a@0:2 dc1/b@1:2 dc2/@2:1")

			nodeID := "peer-" + impl.name + "-zone-a"
			client := startPeer(t, impl, "client", writePeerBootstrap(t, trellis, impl, nodeID, "--zone", "a"))
			only := func(ids ...string) func(peerResult) error {
				return func(r peerResult) error {
					n := 0
					for _, id := range ids {
						n += r.ByInstance[id]
					}
					if r.failed() > 0 || n != r.ok() || r.ok() == 0 {
						return fmt.Errorf("want every call answered by %v", ids)
					}
					return nil
				}
			}
			call := peerCall{Target: "xds:///" + svc, Calls: 40}
			client.waitPeer(t, 30*time.Second, "calls in zone a", call, only(svc+"-a-1", svc+"-a-2"))

			for _, id := range []string{svc + "-a-1", svc + "-a-2"} {
				dc1.SetTTL(t, checks[id], api.HealthCritical)
			}
			eds.waitLayout(t, 10*time.Second, "dc1/b@0:2 dc2/@1:1")
			client.waitPeer(t, 30*time.Second, "calls in zone b", call, only(svc+"-b-1", svc+"-b-2"))

			for _, id := range []string{svc + "-b-1", svc + "-b-2"} {
				dc1.SetTTL(t, checks[id], api.HealthCritical)
			}
			eds.waitLayout(t, 10*time.Second, "dc2/@0:1")
			client.waitPeer(t, 30*time.Second, "calls in dc2", call, only(svc+"-dc2-1"))

			for _, check := range checks {
				dc1.SetTTL(t, check, api.HealthPassing)
			}
			eds.waitLayout(t, 10*time.Second, "dc1/a@0:2 dc1/b@1:2 dc2/@2:1")
			client.waitPeer(t, 30*time.Second, "calls back in zone a", call, only(svc+"-a-1", svc+"-a-2"))
			trellis.requirePeerStreams(t, impl, nodeID)
		})
	}
}
