package integration

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/dashboard"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

var dashboardScreenshot = flag.String("dashboard-screenshot", "", "write the dashboard browser test's screenshot to this PNG file (e.g. ../docs/dashboard.png)")

// chromiumPath is Debian's chromium, or $TRELLIS_CHROMIUM.
func chromiumPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TRELLIS_CHROMIUM"); p != "" {
		return p
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the dashboard test needs Debian's chromium: run make test-deps (as root), or set TRELLIS_CHROMIUM: %v", err)
	}
	return p
}

// browser starts a headless chromium with a fresh profile for the test.
func browser(t testing.TB) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	return ctx
}

// TestDashboard loads the dashboard of a running mesh in a real headless
// browser: it lists the services with their instances and the clients, shows
// a client that NACKs in red, draws the service graph from what the clients
// report over LRS, follows an instance going away without being reloaded,
// shows a client's NACKs with their texts and times, and Consul going
// unreachable (with the error) and coming back.
func TestDashboard(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{tags: []string{"blue"}})
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	startBackend(t, consul, "billing", "billing-1", backendOptions{})
	s := startTrellisWithAPI(t, consul, "--load-reporting-interval", "1s")
	putPolicy(t, s.policyClient(t), `{"service": "echo", "subsets": [{"name": "blue", "tags": ["blue"]}]}`)

	conn := dialXDS(t, s.bootstrapForService(t, "dash-good", "web"), "xds:///echo")
	if r := callEcho(t, conn, 4); r.ok() != 4 {
		t.Fatalf("calls through xDS: %v", r.failures)
	}
	startRawADS(t, s.xdsAddr,
		&corev3.Node{Id: "dash-nacker", UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"}},
		map[string][]string{resource.ListenerType: {"echo"}},
		func(*discoveryv3.DiscoveryResponse) (bool, string) {
			return true, "listener echo: rejected by the dashboard test"
		})

	ctx := browser(t)
	url := "http://" + s.adminAddr + "/ui/"
	if err := chromedp.Do(ctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="echo"] li[data-instance="echo-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="echo"] li[data-instance="echo-2"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="billing"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-node="dash-good"][data-state="SYNCED"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-node="dash-nacker"][data-state="NACKED"]`)),
		// The service graph: web calls echo, as its client reported.
		chromedp.WaitVisible(chromedp.CSS(`tr[data-edge="web->echo"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#graph g.edge[data-source="web"][data-destination="echo"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#graph g.node[data-side="destination"][data-service="echo"]`)),
	); err != nil {
		t.Fatalf("dashboard at %s: %v\n%s", url, err, pageText(ctx))
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	nackedBackground, err := chromedp.Run(ctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector('tr[data-node="dash-nacker"] td')).backgroundColor`))
	if err != nil {
		t.Fatal(err)
	}
	if nackedBackground != "rgb(253, 231, 231)" {
		t.Errorf("NACKed client row background %q, want red (rgb(253, 231, 231))", nackedBackground)
	}
	if why, want := text(`tr[data-node="dash-nacker"] td.why`), "listener echo: rejected by the dashboard test"; !strings.Contains(why, want) {
		t.Errorf("NACKed client row says %q, want the NACK text %q", why, want)
	}
	if subsets := text(`tr[data-service="echo"] td:nth-child(3)`); subsets != "blue" {
		t.Errorf("echo's subsets %q, want blue", subsets)
	}
	if n := text(`tr[data-edge="web->echo"] td.succeeded`); n != "4" {
		t.Errorf("web->echo succeeded calls %q, want 4", n)
	}
	if ratio := text(`tr[data-edge="web->echo"] td.error-ratio`); ratio != "0.0%" {
		t.Errorf("web->echo error ratio %q, want 0.0%%", ratio)
	}
	label, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#graph g.edge[data-source="web"] text').textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(label, "/s, 0.0% errors") {
		t.Errorf("web->echo arrow label %q, want a rate and 0.0%% errors", label)
	}
	if badge := text(`#consul`); badge != "Consul: reachable" {
		t.Errorf("Consul badge %q, want reachable", badge)
	}
	if *dashboardScreenshot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(*dashboardScreenshot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// An instance goes away: the page follows without a reload (the
	// marker set on the window survives).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.trellisTestMarker = 42`)); err != nil {
		t.Fatal(err)
	}
	if err := consul.Client(t).Agent().ServiceDeregister("echo-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector('tr[data-service="echo"] li[data-instance="echo-2"]') === null &&
		document.querySelector('tr[data-service="echo"] li[data-instance="echo-1"]') !== null`, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("echo-2 still listed after its deregistration: %v\n%s", err, pageText(ctx))
	}
	marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.trellisTestMarker || 0`))
	if err != nil {
		t.Fatal(err)
	}
	if marker != 42 {
		t.Fatalf("the page was reloaded (marker %d) instead of updating itself", marker)
	}

	// A client picked in the list shows its detail: every NACK with its
	// text and time. (A click in the page itself: the list is redrawn
	// every poll, so a node found first may be replaced before a click
	// from outside lands.)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('tr[data-node="dash-nacker"] button.client-link').click(), true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#client-detail table.nacks tr[data-nack="LDS"]`))); err != nil {
		t.Fatalf("no NACK in the client's detail: %v\n%s", err, pageText(ctx))
	}
	if nackText := text(`#client-detail table.nacks tr[data-nack="LDS"] td.error`); !strings.Contains(nackText, "listener echo: rejected by the dashboard test") {
		t.Errorf("client detail NACK text %q, want the client's error detail", nackText)
	}
	if at := text(`#client-detail table.nacks tr[data-nack="LDS"] td.at`); at == "" || at == "-" {
		t.Errorf("client detail NACK time %q, want when it came", at)
	}
	if why := text(`#client-detail table.types tr[data-type="LDS"] td.why`); !strings.Contains(why, "rejected") {
		t.Errorf("client detail LDS row says %q, want why it is NACKED", why)
	}

	// Consul goes silent: the badge says so and the problems say why;
	// once it answers again, so does the badge.
	consul.Pause(t)
	paused := true
	defer func() {
		if paused {
			consul.Resume(t)
		}
	}()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("consul").textContent === "Consul: unreachable" &&
		!document.getElementById("problems").hidden && document.getElementById("problems").textContent.includes("Consul: ")`,
		chromedp.WithPollingTimeout(45*time.Second))); err != nil {
		t.Fatalf("a paused Consul is not shown as unreachable with its error: %v\n%s", err, pageText(ctx))
	}
	consul.Resume(t)
	paused = false
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("consul").textContent === "Consul: reachable"`,
		chromedp.WithPollingTimeout(45*time.Second))); err != nil {
		t.Fatalf("Consul not shown as reachable again after it resumed: %v\n%s", err, pageText(ctx))
	}
}

// TestDashboardTenThousandClients loads, in a real headless browser, the
// dashboard of a server with 10,000 clients and 10,000 services (stream
// statuses made up in the test: 10,000 real xDS clients do not fit the
// machine running it) and Consul ACL problems: the page shows one page of
// clients with the summary of all, pages forward, filters the NACKed ones,
// counts the services it does not list, and shows the ACL problems.
func TestDashboardTenThousandClients(t *testing.T) {
	const n = 10_000
	now := time.Now()
	services := make([]dashboard.Service, 0, n)
	streams := make([]xdsserver.StreamStatus, 0, n)
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		services = append(services, dashboard.Service{Name: name, Instances: []dashboard.Instance{{ID: name + "-1", Address: "10.0.0.1", Port: 8080, Health: "passing"}}})
		st := xdsserver.StreamStatus{ID: int64(i + 1), NodeID: fmt.Sprintf("node-%05d", i), UserAgent: "gRPC Go 1.85.0", Profile: "grpc-go", OpenedAt: now}
		for _, typeURL := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType} {
			ts := xdsserver.TypeStatus{TypeURL: typeURL, ResourceNames: []string{name}, SentVersion: "v1", SentAt: now, AckedVersion: "v1", ACKs: 1}
			if typeURL == resource.ListenerType && i%10 == 0 {
				ts.AckedVersion, ts.NACKs, ts.LastNACKVersion, ts.LastNACKError, ts.LastNACKAt = "", 1, "v1", "listener "+name+": bad", now
			}
			st.Types = append(st.Types, ts)
		}
		streams = append(streams, st)
	}
	api, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Replica: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := dashboard.New(dashboard.Config{
		Services: func() []dashboard.Service { return services },
		Clients:  api.ListClients,
		Client:   api.GetClient,
		Consul: func() dashboard.Consul {
			return dashboard.Consul{Reachable: true, Synced: true, LastContact: time.Now(), Problems: []string{
				"ACL: catalog lacks node:read (instances of other nodes are hidden)",
				"ACL: policy lacks key:write on trellis/policies/",
			}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	ctx := browser(t)
	start := time.Now()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-node="node-00000"][data-state="NACKED"]`)),
	); err != nil {
		t.Fatalf("dashboard: %v\n%s", err, pageText(ctx))
	}
	t.Logf("page of 10,000 clients loaded in %s", time.Since(start).Round(time.Millisecond))
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	rows := func() int {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#clients tbody tr").length`))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got, want := text("#clients-summary"), "(10000: 9000 synced, 0 stale, 1000 nacked)"; got != want {
		t.Errorf("clients summary %q, want %q", got, want)
	}
	if got := rows(); got != dashboard.DefaultClientsPerPage {
		t.Errorf("%d client rows, want one page of %d", got, dashboard.DefaultClientsPerPage)
	}
	if got, want := text("#services-more"), fmt.Sprintf("and %d more services", n-dashboard.DefaultMaxServices); got != want {
		t.Errorf("services note %q, want %q", got, want)
	}
	if got := text("#services-count"); got != "(10000)" {
		t.Errorf("services count %q, want (10000)", got)
	}
	problems := text("#problems")
	for _, want := range []string{"catalog lacks node:read", "policy lacks key:write"} {
		if !strings.Contains(problems, want) {
			t.Errorf("problems %q lack the ACL problem %q", problems, want)
		}
	}

	// The next page, in the page itself (see TestDashboard).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("next-page").click(), true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr[data-node="node-%05d"]`, dashboard.DefaultClientsPerPage)))); err != nil {
		t.Fatalf("second page: %v\n%s", err, pageText(ctx))
	}
	// The NACKed clients alone.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const s = document.getElementById("state-filter"); s.value = "nacked"; s.dispatchEvent(new Event("change")); return true; })()`)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`(() => { const r = [...document.querySelectorAll("#clients tbody tr")];
		return r.length === 50 && r.every((e) => e.dataset.state === "NACKED") && r[0].dataset.node === "node-00000"; })()`,
		chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("NACKed filter: %v\n%s", err, pageText(ctx))
	}
}

// pageText is the page's text, for failure messages.
func pageText(ctx context.Context) string {
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	text, err := chromedp.Run(tctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return fmt.Sprintf("(page text unavailable: %v)", err)
	}
	return text
}
