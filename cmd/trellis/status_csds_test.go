package main

import (
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	csdsv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"

	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
)

// TestCompareResource covers the verdicts on what a client holds, the ones
// a well-behaved client against Trellis cannot produce on demand included
// (NACKED, a resource no longer served).
func TestCompareResource(t *testing.T) {
	rr := mustAny(t, &clusterv3.Cluster{Name: "echo", LbPolicy: clusterv3.Cluster_ROUND_ROBIN})
	// The same content, encoded again: equal by content, not by bytes.
	rr2 := mustAny(t, &clusterv3.Cluster{Name: "echo", LbPolicy: clusterv3.Cluster_ROUND_ROBIN})
	lr := mustAny(t, &clusterv3.Cluster{Name: "echo", LbPolicy: clusterv3.Cluster_LEAST_REQUEST})
	held := func(status adminv3.ClientResourceStatus, res *anypb.Any) *csdsv3.ClientConfig_GenericXdsConfig {
		return &csdsv3.ClientConfig_GenericXdsConfig{TypeUrl: resource.ClusterType, Name: "echo", VersionInfo: "7", ClientStatus: status, XdsConfig: res}
	}
	served := &statusv1.ServedResource{TypeUrl: resource.ClusterType, Name: "echo", Served: true, ContentVersion: "c1", Resource: rr2}
	notServed := &statusv1.ServedResource{TypeUrl: resource.ClusterType, Name: "echo"}
	nacked := held(adminv3.ClientResourceStatus_NACKED, rr)
	nacked.ErrorState = &adminv3.UpdateFailureState{Details: "unsupported lb_policy", VersionInfo: "8"}
	for _, tc := range []struct {
		name   string
		held   *csdsv3.ClientConfig_GenericXdsConfig
		served *statusv1.ServedResource
		want   string
		detail string
	}{
		{"same content", held(adminv3.ClientResourceStatus_ACKED, rr), served, csdsSame, ""},
		{"other content", held(adminv3.ClientResourceStatus_ACKED, lr), served, csdsDiffers, "other content"},
		{"no longer served", held(adminv3.ClientResourceStatus_ACKED, rr), notServed, csdsDiffers, "no longer serves"},
		{"requested, served", held(adminv3.ClientResourceStatus_REQUESTED, nil), served, csdsMissing, "the client does not hold it"},
		{"does not exist, served now", held(adminv3.ClientResourceStatus_DOES_NOT_EXIST, nil), served, csdsMissing, "told it does not exist"},
		{"not served", held(adminv3.ClientResourceStatus_DOES_NOT_EXIST, nil), notServed, csdsMissing, "does not serve it"},
		{"nacked", nacked, served, csdsNacked, "rejected version 8: unsupported lb_policy; it keeps the version it had before"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compareResource(tc.held, tc.served)
			if got.Result != tc.want || !strings.Contains(got.Detail, tc.detail) || (tc.detail == "" && got.Detail != "") {
				t.Errorf("result %s (%q), want %s (%q)", got.Result, got.Detail, tc.want, tc.detail)
			}
			if got.Type != "CDS" || got.ClientVersion != "7" || got.TrellisVersion != tc.served.GetContentVersion() {
				t.Errorf("row %+v", got)
			}
		})
	}
}
