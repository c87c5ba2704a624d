package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// apiToken is the bearer token the policy tests configure.
const apiToken = "integration-test-token"

// startTrellisWithAPI runs a trellis server whose policy API accepts
// apiToken.
func startTrellisWithAPI(t testing.TB, consul *consultest.Agent, extra ...string) *trellisServer {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(apiToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return startTrellis(t, consul.HTTPAddr(), append([]string{"--api-token-file", tokenFile}, extra...)...)
}

// policyClient dials the policy API on the server's admin listener.
func (s *trellisServer) policyClient(t testing.TB) policyv1.PolicyServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(s.adminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return policyv1.NewPolicyServiceClient(conn)
}

// authed returns a context carrying the API token, with a timeout.
func authed(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiToken)
}

// putPolicy parses a policy from JSON (protojson) and stores it through the
// API, failing the test on error. It returns the new revision.
func putPolicy(t testing.TB, api policyv1.PolicyServiceClient, policyJSON string) uint64 {
	t.Helper()
	p := mustPolicy(t, policyJSON)
	resp, err := api.PutPolicy(authed(t), &policyv1.PutPolicyRequest{Policy: p})
	if err != nil {
		t.Fatalf("put policy for %s: %v", p.GetService(), err)
	}
	return resp.GetRevision()
}

func mustPolicy(t testing.TB, policyJSON string) *policyv1.ServicePolicy {
	t.Helper()
	p := &policyv1.ServicePolicy{}
	if err := protojson.Unmarshal([]byte(policyJSON), p); err != nil {
		t.Fatalf("policy JSON: %v\n%s", err, policyJSON)
	}
	return p
}

// waitForShare calls until the share of calls answered by instances for
// which pick returns true is within [lo, hi] over a batch of n calls.
func waitForShare(t testing.TB, conn *grpc.ClientConn, timeout time.Duration, n int, lo, hi float64, pick func(id string) bool, md ...string) callResult {
	t.Helper()
	var last callResult
	waitFor(t, timeout, fmt.Sprintf("share of calls in [%.2f, %.2f]", lo, hi), func() error {
		last = callEcho(t, conn, n, md...)
		if len(last.failures) > 0 {
			return fmt.Errorf("%d failures, first %v", len(last.failures), last.failures[0])
		}
		share := shareOf(last, pick)
		if share < lo || share > hi {
			return fmt.Errorf("share %.3f; counts %v", share, last.byInstance)
		}
		return nil
	})
	return last
}

func shareOf(r callResult, pick func(id string) bool) float64 {
	total, picked := 0, 0
	for id, c := range r.byInstance {
		total += c
		if pick(id) {
			picked += c
		}
	}
	if total == 0 {
		return 0
	}
	return float64(picked) / float64(total)
}
