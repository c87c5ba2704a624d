package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// versionedMesh runs echo with two v1 instances and one v2 instance, a
// trellis server with the policy API, and a client of xds:///echo.
type versionedMesh struct {
	consul   *consultest.Agent
	trellis  *trellisServer
	api      policyv1.PolicyServiceClient
	conn     *grpc.ClientConn
	backends map[string]*echoBackend
}

func startVersionedMesh(t *testing.T) *versionedMesh {
	t.Helper()
	m := &versionedMesh{consul: consultest.Start(t, consultest.Options{}), backends: map[string]*echoBackend{}}
	for _, b := range []struct{ id, version string }{{"v1-a", "v1"}, {"v1-b", "v1"}, {"v2-a", "v2"}} {
		m.backends[b.id], _ = startBackend(t, m.consul, "echo", b.id, backendOptions{meta: map[string]string{"version": b.version}})
	}
	m.trellis = startTrellisWithAPI(t, m.consul)
	m.api = m.trellis.policyClient(t)
	m.conn = dialXDS(t, m.trellis.bootstrapFor(t, "policy-client"), "xds:///echo")
	waitForInstances(t, m.conn, 30*time.Second, "v1-a", "v1-b", "v2-a")
	return m
}

func isV2(id string) bool { return strings.HasPrefix(id, "v2") }

const subsets = `"subsets": [{"name": "v1", "meta": {"version": "v1"}}, {"name": "v2", "meta": {"version": "v2"}}]`

// TestRetries: backends fail every other call with UNAVAILABLE. Without a
// retry policy about half the calls fail; with 3 retries under 1% do.
func TestRetries(t *testing.T) {
	m := startVersionedMesh(t)
	for _, b := range m.backends {
		var mu sync.Mutex
		n := 0
		b.setBehaviour(func(context.Context, string) error {
			mu.Lock()
			defer mu.Unlock()
			n++
			if n%2 == 0 {
				return status.Error(codes.Unavailable, "injected failure")
			}
			return nil
		})
	}
	without := callEcho(t, m.conn, 1000)
	if f := len(without.failures); f < 350 || f > 650 {
		t.Errorf("without retries %d of 1000 calls failed, want about half", f)
	}

	putPolicy(t, m.api, `{"service": "echo", "defaults": {"retry": {"retryOn": ["UNAVAILABLE"], "numRetries": 3, "baseInterval": "0.001s", "maxInterval": "0.005s"}}}`)
	waitFor(t, 10*time.Second, "retry policy in effect", func() error {
		if r := callEcho(t, m.conn, 50); len(r.failures) > 1 {
			return fmt.Errorf("%d of 50 failed", len(r.failures))
		}
		return nil
	})
	with := callEcho(t, m.conn, 1000)
	t.Logf("failed calls out of 1000: %d without retries, %d with 3 retries", len(without.failures), len(with.failures))
	if f := len(with.failures); f >= 10 {
		t.Errorf("with 3 retries %d of 1000 calls failed, want under 1%%; first: %v", f, with.failures[0])
	}
	m.trellis.requireAllACKed(t)
}

// TestTrafficSplit: 80/20 between subsets v1 and v2 within 5 points over
// 2000 calls; then 0/100, and every new call goes to v2 within a second.
func TestTrafficSplit(t *testing.T) {
	m := startVersionedMesh(t)
	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [{"split": {"destinations": [
		{"destination": {"subset": "v1"}, "weight": 80}, {"destination": {"subset": "v2"}, "weight": 20}]}}]}`)
	// Before the policy, v2 gets a third of the calls (1 of 3 instances):
	// wait for a share that only the split gives, twice in a row, so that
	// the measurement starts once the client has switched.
	waitForShare(t, m.conn, 10*time.Second, 400, 0.08, 0.28, isV2)
	waitForShare(t, m.conn, 10*time.Second, 400, 0.08, 0.28, isV2)
	res := callEcho(t, m.conn, 2000)
	if len(res.failures) > 0 {
		t.Fatalf("%d calls failed: %v", len(res.failures), res.failures[0])
	}
	t.Logf("80/20 split: v2 share %.3f over 2000 calls", shareOf(res, isV2))
	if share := shareOf(res, isV2); share < 0.15 || share > 0.25 {
		t.Errorf("v2 got %.3f of 2000 calls, want 0.20 +- 0.05; counts %v", share, res.byInstance)
	}

	loop := startTraffic(t, m.conn, 5*time.Millisecond)
	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [{"split": {"destinations": [
		{"destination": {"subset": "v1"}, "weight": 0}, {"destination": {"subset": "v2"}, "weight": 100}]}}]}`)
	written := time.Now()
	time.Sleep(time.Second)
	loop.mu.Lock()
	lastV1 := loop.lastSeen["v1-a"]
	if b := loop.lastSeen["v1-b"]; b.After(lastV1) {
		lastV1 = b
	}
	loop.mu.Unlock()
	if d := lastV1.Sub(written); d > time.Second {
		t.Errorf("v1 still answered %s after the split moved to v2, want within 1s", d)
	}
	loop.reset()
	time.Sleep(500 * time.Millisecond)
	counts, failures := loop.snapshot()
	loop.Stop()
	if len(failures) > 0 || counts["v1-a"]+counts["v1-b"] > 0 || counts["v2-a"] == 0 {
		t.Errorf("after the change: counts %v, failures %v; want all calls on v2", counts, failures)
	}
	m.trellis.requireAllACKed(t)
}

// TestHeaderAndMethodRoutes: x-canary: true goes only to v2; the Reverse
// method goes only to v1; everything else is spread over all instances.
func TestHeaderAndMethodRoutes(t *testing.T) {
	m := startVersionedMesh(t)
	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [
		{"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "destination": {"subset": "v2"}},
		{"name": "reverse", "match": {"methodExact": "/trellis.echo.v1.Echo/Reverse"}, "destination": {"subset": "v1"}}]}`)
	waitForShare(t, m.conn, 10*time.Second, 60, 1, 1, isV2, "x-canary", "true")

	canary := callEcho(t, m.conn, 100, "x-canary", "true")
	if share := shareOf(canary, isV2); share != 1 || len(canary.failures) > 0 {
		t.Errorf("x-canary calls: v2 share %.2f, counts %v, failures %v; want all on v2", share, canary.byInstance, canary.failures)
	}
	plain := callEcho(t, m.conn, 150)
	if share := shareOf(plain, isV2); share < 0.15 || share > 0.5 {
		t.Errorf("plain calls: v2 share %.2f (%v); want them spread over all instances", share, plain.byInstance)
	}
	client := echov1.NewEchoClient(m.conn)
	reversed := map[string]int{}
	for i := 0; i < 60; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := client.Reverse(ctx, &echov1.EchoRequest{Message: "abc"})
		cancel()
		if err != nil {
			t.Fatalf("Reverse: %v", err)
		}
		reversed[resp.GetInstanceId()]++
	}
	if reversed["v2-a"] > 0 || reversed["v1-a"] == 0 || reversed["v1-b"] == 0 {
		t.Errorf("Reverse answered by %v, want only (both) v1 instances", reversed)
	}
	m.trellis.requireAllACKed(t)
}

// TestTimeoutAndFaults: a slow method ends with DEADLINE_EXCEEDED near its
// route timeout; an abort fault returns the configured status; a delay
// fault adds the configured delay.
func TestTimeoutAndFaults(t *testing.T) {
	m := startVersionedMesh(t)
	for _, b := range m.backends {
		b.setBehaviour(func(ctx context.Context, method string) error {
			if method == "/trellis.echo.v1.Echo/Reverse" {
				select {
				case <-time.After(2 * time.Second):
				case <-ctx.Done():
				}
			}
			return nil
		})
	}
	putPolicy(t, m.api, `{"service": "echo", "routes": [
		{"name": "slow", "match": {"methodExact": "/trellis.echo.v1.Echo/Reverse"}, "settings": {"timeout": "0.3s"}},
		{"name": "aborted", "match": {"headers": [{"name": "x-fault", "exact": "abort"}]}, "settings": {"fault": {"abort": {"code": "RESOURCE_EXHAUSTED", "percent": 100}}}},
		{"name": "delayed", "match": {"headers": [{"name": "x-fault", "exact": "delay"}]}, "settings": {"fault": {"delay": {"fixedDelay": "0.4s", "percent": 100}}}}]}`)
	client := echov1.NewEchoClient(m.conn)

	waitFor(t, 10*time.Second, "abort fault in effect", func() error {
		r := callEcho(t, m.conn, 1, "x-fault", "abort")
		if len(r.failures) == 1 && statusCode(r.failures[0]) == codes.ResourceExhausted {
			return nil
		}
		return fmt.Errorf("got %v %v", r.byInstance, r.failures)
	})
	aborted := callEcho(t, m.conn, 20, "x-fault", "abort")
	for _, err := range aborted.failures {
		if statusCode(err) != codes.ResourceExhausted {
			t.Errorf("aborted call: %v, want RESOURCE_EXHAUSTED", err)
		}
	}
	if aborted.ok() > 0 {
		t.Errorf("%d calls passed a 100%% abort fault", aborted.ok())
	}

	for i := 0; i < 3; i++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.Reverse(ctx, &echov1.EchoRequest{Message: "slow"})
		cancel()
		took := time.Since(start)
		t.Logf("slow call ended after %s with %v", took.Round(time.Millisecond), statusCode(err))
		if statusCode(err) != codes.DeadlineExceeded {
			t.Errorf("slow call: %v, want DEADLINE_EXCEEDED", err)
		}
		if took < 250*time.Millisecond || took > 1500*time.Millisecond {
			t.Errorf("slow call ended after %s, want near the 300ms route timeout", took)
		}
	}

	for i := 0; i < 3; i++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "x-fault", "delay")
		_, err := client.Echo(ctx, &echov1.EchoRequest{Message: "delayed"})
		cancel()
		took := time.Since(start)
		t.Logf("delayed call took %s", took.Round(time.Millisecond))
		if err != nil {
			t.Errorf("delayed call: %v", err)
		}
		if took < 400*time.Millisecond || took > 2*time.Second {
			t.Errorf("delayed call took %s, want about 400ms more than usual", took)
		}
	}
	m.trellis.requireAllACKed(t)
}

// TestRingHashAffinity: with ring hash on a header, calls carrying the same
// value always reach the same instance; different values spread.
func TestRingHashAffinity(t *testing.T) {
	m := startVersionedMesh(t)
	putPolicy(t, m.api, `{"service": "echo", "loadBalancing": {"ringHash": {"minimumRingSize": 64, "maximumRingSize": 1024}},
		"defaults": {"hashPolicy": [{"header": "x-user"}]}}`)
	waitFor(t, 10*time.Second, "ring hash in effect", func() error {
		r := callEcho(t, m.conn, 20, "x-user", "probe")
		if len(r.byInstance) != 1 {
			return fmt.Errorf("one user reached %v", r.byInstance)
		}
		return nil
	})
	used := map[string]bool{}
	for u := 0; u < 20; u++ {
		user := fmt.Sprintf("user-%d", u)
		r := callEcho(t, m.conn, 15, "x-user", user)
		if len(r.failures) > 0 || len(r.byInstance) != 1 {
			t.Errorf("%s reached %v (failures %v), want exactly one instance", user, r.byInstance, r.failures)
		}
		for id := range r.byInstance {
			used[id] = true
		}
	}
	if len(used) < 2 {
		t.Errorf("20 users all hashed to %v, want them spread", used)
	}
	m.trellis.requireAllACKed(t)
}

// TestCircuitBreaking: with at most 2 concurrent requests, a third
// concurrent call fails fast.
func TestCircuitBreaking(t *testing.T) {
	m := startVersionedMesh(t)
	var (
		gateMu sync.Mutex
		gate   = make(chan struct{})
	)
	openGate := func() {
		gateMu.Lock()
		close(gate)
		gate = make(chan struct{})
		gateMu.Unlock()
	}
	for _, b := range m.backends {
		b.setBehaviour(func(ctx context.Context, method string) error {
			if method != "/trellis.echo.v1.Echo/Reverse" {
				return nil
			}
			gateMu.Lock()
			g := gate
			gateMu.Unlock()
			select {
			case <-g:
			case <-ctx.Done():
			}
			return nil
		})
	}
	putPolicy(t, m.api, `{"service": "echo", "circuitBreaker": {"maxRequests": 2}}`)
	client := echov1.NewEchoClient(m.conn)

	// Two calls held in the backends, then a third: once the limit is in
	// effect it fails fast instead of reaching a backend.
	waitFor(t, 20*time.Second, "circuit breaker in effect", func() error {
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				client.Reverse(ctx, &echov1.EchoRequest{Message: "hold"})
			}()
		}
		defer wg.Wait()
		defer openGate()
		waitBackendCalls(t, m, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err := client.Reverse(ctx, &echov1.EchoRequest{Message: "third"})
		took := time.Since(start)
		if statusCode(err) != codes.Unavailable || took > time.Second {
			return fmt.Errorf("third concurrent call: %v after %s, want UNAVAILABLE at once", err, took)
		}
		return nil
	})
	// Below the limit, calls pass.
	if r := callEcho(t, m.conn, 20); len(r.failures) > 0 {
		t.Errorf("sequential calls under the limit failed: %v", r.failures[0])
	}
	m.trellis.requireAllACKed(t)
}

// waitBackendCalls waits until the backends hold n calls at once.
func waitBackendCalls(t *testing.T, m *versionedMesh, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for inFlight(m) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// inFlight counts calls currently blocked in backends.
func inFlight(m *versionedMesh) int {
	n := 0
	for _, b := range m.backends {
		b.mu.Lock()
		n += b.inFlight
		b.mu.Unlock()
	}
	return n
}

// TestOutlierDetection: an instance failing most calls is ejected and the
// others take its traffic.
func TestOutlierDetection(t *testing.T) {
	m := startVersionedMesh(t)
	var mu sync.Mutex
	n := 0
	m.backends["v1-a"].setBehaviour(func(context.Context, string) error {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%10 != 0 {
			return status.Error(codes.Internal, "broken instance")
		}
		return nil
	})
	putPolicy(t, m.api, `{"service": "echo", "outlierDetection": {"interval": "0.5s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
		"failurePercentage": {"threshold": 50, "minimumHosts": 3, "requestVolume": 10}}}`)
	waitFor(t, 20*time.Second, "v1-a ejected", func() error {
		r := callEcho(t, m.conn, 60)
		if r.byInstance["v1-a"] > 0 || len(r.failures) > 0 {
			return fmt.Errorf("v1-a still called: %v, %d failures", r.byInstance, len(r.failures))
		}
		return nil
	})
	r := callEcho(t, m.conn, 90)
	if r.byInstance["v1-a"] > 0 || r.byInstance["v1-b"] == 0 || r.byInstance["v2-a"] == 0 || len(r.failures) > 0 {
		t.Errorf("after ejection: %v, failures %d; want v1-a ejected and the others serving", r.byInstance, len(r.failures))
	}
	m.trellis.requireAllACKed(t)
}

// TestInvalidPolicyRefused: a bad policy is refused with InvalidArgument
// naming each field; the previous policy stays in force; nothing is NACKed.
func TestInvalidPolicyRefused(t *testing.T) {
	m := startVersionedMesh(t)
	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [{"destination": {"subset": "v2"}}]}`)
	waitForShare(t, m.conn, 10*time.Second, 30, 1, 1, isV2)

	bad := mustPolicy(t, `{"service": "echo", `+subsets+`, "routes": [
		{"match": {"methodRegex": "(unclosed"}, "destination": {"subset": "v3"}},
		{"settings": {"timeout": "0s", "retry": {"retryOn": ["NOT_FOUND"], "numRetries": 9}}}]}`)
	_, err := m.api.PutPolicy(authed(t), &policyv1.PutPolicyRequest{Policy: bad})
	if statusCode(err) != codes.InvalidArgument {
		t.Fatalf("bad policy: %v, want InvalidArgument", err)
	}
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	for _, want := range []string{"routes[0].match.method_regex", "routes[0].destination.subset", "routes[1].settings.timeout", "routes[1].settings.retry.retry_on", "routes[1].settings.retry.num_retries"} {
		found := false
		for _, f := range fields {
			if strings.Contains(f, want) || strings.Contains(f, camel(want)) {
				found = true
			}
		}
		if !found {
			t.Errorf("violations %v do not name %s", fields, want)
		}
	}
	got, err := m.api.GetPolicy(authed(t), &policyv1.GetPolicyRequest{Service: "echo"})
	if err != nil || len(got.GetPolicy().GetRoutes()) != 1 {
		t.Errorf("stored policy after a refused write: %v, %v", got, err)
	}
	if r := callEcho(t, m.conn, 30); shareOf(r, isV2) != 1 {
		t.Errorf("the previous policy no longer applies: %v", r.byInstance)
	}

	// Without a token, or with a wrong one.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.api.ListPolicies(ctx, &policyv1.ListPoliciesRequest{}); statusCode(err) != codes.Unauthenticated {
		t.Errorf("no token: %v, want Unauthenticated", err)
	}
	wrong := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer nope")
	if _, err := m.api.ListPolicies(wrong, &policyv1.ListPoliciesRequest{}); statusCode(err) != codes.PermissionDenied {
		t.Errorf("wrong token: %v, want PermissionDenied", err)
	}
	m.trellis.requireAllACKed(t)
}

// camel turns a snake_case field path into lowerCamel, for APIs that
// report JSON names.
func camel(path string) string {
	var b strings.Builder
	up := false
	for _, r := range path {
		if r == '_' {
			up = true
			continue
		}
		if up {
			b.WriteString(strings.ToUpper(string(r)))
			up = false
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TestConcurrentWriters: two writers each do 50 read-modify-write cycles
// on the same policy with expected revisions; all 100 updates survive.
func TestConcurrentWriters(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellisWithAPI(t, consul)
	api := trellis.policyClient(t)
	putPolicy(t, api, `{"service": "echo"}`)

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				for attempt := 0; ; attempt++ {
					if attempt > 200 {
						errs <- fmt.Errorf("writer %d update %d: too many conflicts", w, i)
						return
					}
					cur, err := api.GetPolicy(authed(t), &policyv1.GetPolicyRequest{Service: "echo"})
					if err != nil {
						errs <- err
						return
					}
					p := cur.GetPolicy()
					p.Routes = append(p.Routes, &policyv1.Route{
						Name:   fmt.Sprintf("w%d-%d", w, i),
						Match:  &policyv1.RouteMatch{Method: &policyv1.RouteMatch_MethodExact{MethodExact: fmt.Sprintf("/w%d.S/M%d", w, i)}},
						Action: &policyv1.Route_Destination{Destination: &policyv1.Destination{}},
					})
					rev := cur.GetRevision()
					_, err = api.PutPolicy(authed(t), &policyv1.PutPolicyRequest{Policy: p, ExpectedRevision: &rev})
					if err == nil {
						break
					}
					if c := statusCode(err); c != codes.Aborted && c != codes.FailedPrecondition {
						errs <- fmt.Errorf("writer %d: %v", w, err)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final, err := api.GetPolicy(authed(t), &policyv1.GetPolicyRequest{Service: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range final.GetPolicy().GetRoutes() {
		names[r.GetName()] = true
	}
	if len(names) != 100 {
		t.Errorf("%d distinct updates survived, want 100", len(names))
	}
}

// TestReplicasShareOnePolicy: a policy written through one trellis server
// reaches clients of another.
func TestReplicasShareOnePolicy(t *testing.T) {
	m := startVersionedMesh(t)
	other := startTrellisWithAPI(t, m.consul)
	conn := dialXDS(t, other.bootstrapFor(t, "replica-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "v1-a", "v1-b", "v2-a")

	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [{"destination": {"subset": "v2"}}]}`)
	waitForShare(t, conn, 10*time.Second, 30, 1, 1, isV2)
	other.requireAllACKed(t)
	m.trellis.requireAllACKed(t)
}

// TestPolicyChangeTouchesOnlyItsService: a policy change for echo sends
// nothing new to a client that only watches another service.
func TestPolicyChangeTouchesOnlyItsService(t *testing.T) {
	m := startVersionedMesh(t)
	startBackend(t, m.consul, "other", "other-1", backendOptions{})
	other := dialXDS(t, m.trellis.bootstrapFor(t, "other-client"), "xds:///other")
	waitForInstances(t, other, 30*time.Second, "other-1")
	m.trellis.requireAllACKed(t)
	sentTo := func(node string) map[string]string {
		out := map[string]string{}
		for _, st := range m.trellis.streams(t) {
			if st.NodeID != node {
				continue
			}
			for _, ty := range st.Types {
				out[ty.TypeURL] = ty.SentVersion + "/" + ty.SentNonce
			}
		}
		return out
	}
	before := sentTo("other-client")
	if len(before) != 4 {
		t.Fatalf("other-client was sent %d types, want 4: %v", len(before), before)
	}

	putPolicy(t, m.api, `{"service": "echo", `+subsets+`, "routes": [{"destination": {"subset": "v2"}}]}`)
	waitForShare(t, m.conn, 10*time.Second, 30, 1, 1, isV2)
	m.trellis.requireAllACKed(t)
	if after := sentTo("other-client"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a policy change for echo sent new responses to a client of other:\nbefore %v\nafter  %v", before, after)
	}
}
