package integration

import (
	"context"
	"flag"
	"fmt"
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
// report over LRS, and follows an instance going away without being
// reloaded.
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
