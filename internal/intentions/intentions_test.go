package intentions_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/intentions"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/runtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait: generous, for a loaded 2-core machine.
const testTimeout = 30 * time.Second

func TestConvert(t *testing.T) {
	entry := func(dst string, sources ...*api.SourceIntention) *api.ServiceIntentionsConfigEntry {
		return &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dst, Sources: sources}
	}
	src := func(name string, action api.IntentionAction) *api.SourceIntention {
		return &api.SourceIntention{Name: name, Action: action, Type: api.IntentionSourceConsul}
	}
	allow, deny := api.IntentionActionAllow, api.IntentionActionDeny
	tests := []struct {
		name        string
		entries     []api.ConfigEntry
		want        []model.Intention
		wantIgnored []intentions.Ignored
	}{
		{name: "none"},
		{
			name:    "precedence as Consul computes it",
			entries: []api.ConfigEntry{entry("api", src("web", allow), src("*", deny)), entry("*", src("web", deny), src("*", allow))},
			want: []model.Intention{
				{Source: "web", Destination: "api", Action: model.IntentionAllow, Precedence: 9},
				{Source: "*", Destination: "api", Action: model.IntentionDeny, Precedence: 8},
				{Source: "web", Destination: "*", Action: model.IntentionDeny, Precedence: 6},
				{Source: "*", Destination: "*", Action: model.IntentionAllow, Precedence: 5},
			},
		},
		{
			name: "default namespace and partition spelled out",
			entries: []api.ConfigEntry{&api.ServiceIntentionsConfigEntry{Name: "api", Namespace: "default", Partition: "default",
				Sources: []*api.SourceIntention{{Name: "web", Namespace: "default", Partition: "default", Action: allow}}}},
			want: []model.Intention{{Source: "web", Destination: "api", Action: model.IntentionAllow, Precedence: 9}},
		},
		{
			name: "HTTP permissions kept in order, JWT requirements and unknown permission actions become conditions",
			entries: []api.ConfigEntry{
				entry("api", &api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
					{Action: allow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/x"}},
					{Action: allow, JWT: &api.IntentionJWTRequirement{}},
				}}),
				entry("auth", &api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
					{Action: deny, HTTP: &api.IntentionHTTPPermission{PathExact: "/a.B/C", Methods: []string{"post", "GET"},
						Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Role", Exact: "admin", Invert: true, IgnoreCase: true}, {Name: "X-Trace", Present: true}}}},
					{Action: allow, HTTP: &api.IntentionHTTPPermission{PathRegex: "/a[.]B/.*"}},
					{Action: "maybe"},
				}}),
				&api.ServiceIntentionsConfigEntry{Name: "db", JWT: &api.IntentionJWTRequirement{}, Sources: []*api.SourceIntention{src("api", allow)}},
			},
			want: []model.Intention{
				{Source: "web", Destination: "api", Action: model.IntentionDeny, Precedence: 9, Conditions: []string{intentions.ConditionJWT},
					Permissions: []model.IntentionPermission{
						{Action: model.IntentionAllow, HTTP: &model.IntentionHTTPMatch{PathPrefix: "/x"}},
						{Action: model.IntentionAllow},
					}},
				{Source: "web", Destination: "auth", Action: model.IntentionDeny, Precedence: 9, Conditions: []string{`permission with unknown action "maybe"`},
					Permissions: []model.IntentionPermission{
						{Action: model.IntentionDeny, HTTP: &model.IntentionHTTPMatch{PathExact: "/a.B/C", Methods: []string{"POST", "GET"},
							Headers: []model.IntentionHeaderMatch{{Name: "x-role", Exact: "admin", Invert: true, IgnoreCase: true}, {Name: "x-trace", Present: true}}}},
						{Action: model.IntentionAllow, HTTP: &model.IntentionHTTPMatch{PathRegex: "/a[.]B/.*"}},
						{Action: model.IntentionDeny},
					}},
				{Source: "api", Destination: "db", Action: model.IntentionAllow, Precedence: 9, Conditions: []string{intentions.ConditionJWT}},
			},
		},
		{
			name:    "unknown action denies",
			entries: []api.ConfigEntry{entry("api", src("web", "maybe"))},
			want:    []model.Intention{{Source: "web", Destination: "api", Action: model.IntentionDeny, Precedence: 9, Conditions: []string{`unknown action "maybe"`}}},
		},
		{
			name: "foreign sources and destinations are ignored",
			entries: []api.ConfigEntry{
				entry("api",
					&api.SourceIntention{Name: "web", Peer: "dc9", Action: allow},
					&api.SourceIntention{Name: "web", SamenessGroup: "g", Action: allow},
					&api.SourceIntention{Name: "web", Partition: "p", Action: allow},
					&api.SourceIntention{Name: "web", Namespace: "team", Action: deny},
					&api.SourceIntention{Name: "ext", Type: "external", Action: allow},
					src("batch", deny),
				),
				&api.ServiceIntentionsConfigEntry{Name: "db", Namespace: "team", Sources: []*api.SourceIntention{src("web", allow)}},
			},
			want: []model.Intention{{Source: "batch", Destination: "api", Action: model.IntentionDeny, Precedence: 9}},
			wantIgnored: []intentions.Ignored{
				{Source: "ext", Destination: "api", Reason: `source type "external": accepted: "consul"`},
				{Source: "web", Destination: "api", Reason: `source in cluster peer "dc9": Trellis identifies callers of its own trust domain only`},
				{Source: "web", Destination: "api", Reason: `source in namespace "team": only the default namespace is served`},
				{Source: "web", Destination: "api", Reason: `source in partition "p": only the default partition is served`},
				{Source: "web", Destination: "api", Reason: `source in sameness group "g": Trellis identifies callers of its own trust domain only`},
				{Source: "web", Destination: "db", Reason: `destination in namespace "team": only the default namespace is served`},
			},
		},
		{
			name: "wildcard namespace counts as not exact",
			entries: []api.ConfigEntry{entry("api", &api.SourceIntention{Name: "*", Namespace: "*", Action: deny}),
				&api.ServiceIntentionsConfigEntry{Name: "*", Namespace: "*", Sources: []*api.SourceIntention{{Name: "*", Namespace: "*", Action: allow}}}},
			want: []model.Intention{
				{Source: "*", Destination: "api", Action: model.IntentionDeny, Precedence: 7},
				{Source: "*", Destination: "*", Action: model.IntentionAllow, Precedence: 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ignored := intentions.Convert(tc.entries)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("intentions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantIgnored, ignored); diff != "" {
				t.Errorf("ignored (-want +got):\n%s", diff)
			}
		})
	}
}

// syncBuffer is a log sink safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startWatcher runs w until the test ends and checks that Run returns nil.
func startWatcher(t *testing.T, w *intentions.Watcher) {
	t.Helper()
	runtest.Run(t, testTimeout, w.Run)
}

// waitSnapshot receives snapshots until one satisfies cond.
func waitSnapshot(t *testing.T, w *intentions.Watcher, what string, cond func(*model.Intentions) error) *model.Intentions {
	t.Helper()
	timeout := time.After(testTimeout)
	var last error
	for {
		select {
		case s := <-w.Snapshots():
			if last = cond(s); last == nil {
				return s
			}
		case <-timeout:
			t.Fatalf("no snapshot with %s after %s: %v; status: %+v", what, testTimeout, last, w.Status())
		}
	}
}

func setEntry(t *testing.T, c *api.Client, e api.ConfigEntry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, _, err := c.ConfigEntries().Set(e, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatalf("set %s %s: %v", e.GetKind(), e.GetName(), err)
	}
}

// TestWatcherFollowsConsul runs the watcher against a real Consul agent:
// the first snapshot comes after the first read, changes arrive through
// blocking queries within a second, precedence equals the one Consul
// reports, a change to another kind of config entry publishes nothing, and
// intentions naming unknown services are logged at debug level.
func TestWatcherFollowsConsul(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	client := consul.Client(t)
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	w, err := intentions.New(intentions.Config{
		Client:       client,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   reg,
		KnownService: func(name string) bool { return name != "ghost" },
		WaitTime:     5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)

	first := waitSnapshot(t, w, "the first read", func(s *model.Intentions) error { return nil })
	if first.Len() != 0 || !w.Status().Synced {
		t.Fatalf("first snapshot %v, status %+v; want empty and synced", first.All(), w.Status())
	}

	setEntry(t, client, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api", Sources: []*api.SourceIntention{
		{Name: "web", Action: api.IntentionActionAllow}, {Name: "*", Action: api.IntentionActionDeny},
	}})
	setEntry(t, client, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "*", Sources: []*api.SourceIntention{
		{Name: "batch", Action: api.IntentionActionDeny}, {Name: "*", Action: api.IntentionActionAllow},
	}})
	// L7 intentions need an HTTP-based protocol.
	setEntry(t, client, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "ghost", Protocol: "grpc"})
	written := time.Now()
	setEntry(t, client, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "ghost", Sources: []*api.SourceIntention{
		{Name: "web", Permissions: []*api.IntentionPermission{{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/x"}}}},
	}})
	snap := waitSnapshot(t, w, "every intention", func(s *model.Intentions) error {
		if s.Len() != 5 {
			return fmt.Errorf("%d intentions: %v", s.Len(), s.All())
		}
		return nil
	})
	if d := time.Since(written); d > 2*time.Second {
		t.Errorf("the last change took %s to arrive, want under 2s (blocking queries)", d)
	}

	// Consul's own precedence, as it reports it.
	entries, _, err := client.ConfigEntries().List(api.ServiceIntentions, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]string]int{}
	for _, e := range entries {
		for _, s := range e.(*api.ServiceIntentionsConfigEntry).Sources {
			want[[2]string{s.Name, e.GetName()}] = s.Precedence
		}
	}
	for _, in := range snap.All() {
		if p, ok := want[[2]string{in.Source, in.Destination}]; !ok || p != in.Precedence {
			t.Errorf("intention %s -> %s: precedence %d, Consul says %d (found %t)", in.Source, in.Destination, in.Precedence, p, ok)
		}
	}
	ghost := snap.For("ghost")
	wantPerms := []model.IntentionPermission{{Action: model.IntentionAllow, HTTP: &model.IntentionHTTPMatch{PathPrefix: "/x"}}}
	if in, ok := ghost.Decide("web"); !ok || in.Action != model.IntentionDeny || len(in.Conditions) > 0 || !cmp.Equal(in.Permissions, wantPerms) {
		t.Errorf("L7 intention web -> ghost evaluates to %+v, %t; want a deny carrying its permission %+v", in, ok, wantPerms)
	}
	if !strings.Contains(logs.String(), "an intention names a service not in the catalog") || !strings.Contains(logs.String(), "service=ghost") {
		t.Errorf("no debug log about the unknown service ghost:\n%s", logs.String())
	}

	// Another kind of config entry changes the index but not the
	// intentions: nothing is published.
	setEntry(t, client, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "grpc"})
	index := w.Status().Index
	consultest.WaitFor(t, testTimeout, func() error {
		if w.Status().Index == index {
			return fmt.Errorf("index still %d", index)
		}
		return nil
	})
	select {
	case s := <-w.Snapshots():
		t.Errorf("snapshot published without an intention change: %v", s.All())
	default:
	}

	// Deleting an entry removes its intentions.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := client.ConfigEntries().Delete(api.ServiceIntentions, "*", (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, w, "the wildcard entry deleted", func(s *model.Intentions) error {
		for _, in := range s.All() {
			if in.Destination == model.Wildcard {
				return fmt.Errorf("still %v", in)
			}
		}
		return nil
	})

	metrics, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]float64{}
	for _, mf := range metrics {
		for _, m := range mf.GetMetric() {
			found[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if found["trellis_intentions_intentions"] != 3 || found["trellis_intentions_snapshots_total"] < 3 {
		t.Errorf("metrics %v; want 3 intentions and at least 3 snapshots", found)
	}
}

// TestWatcherKeepsLastWhileConsulIsDown: a paused Consul makes queries fail;
// nothing is published, the status says so, and the watcher reads again
// once Consul is back.
func TestWatcherKeepsLastWhileConsulIsDown(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	client := consul.Client(t)
	w, err := intentions.New(intentions.Config{Client: client, WaitTime: time.Second, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w)
	waitSnapshot(t, w, "the first read", func(*model.Intentions) error { return nil })

	consul.Pause(t)
	consultest.WaitFor(t, testTimeout, func() error {
		if w.Status().Reachable {
			return fmt.Errorf("still reachable")
		}
		return nil
	})
	select {
	case s := <-w.Snapshots():
		t.Errorf("published %v while Consul was down", s.All())
	default:
	}
	if w.Latest() == nil {
		t.Error("the last snapshot was dropped")
	}
	consul.Resume(t)
	setEntry(t, client, &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api", Sources: []*api.SourceIntention{
		{Name: "web", Action: api.IntentionActionAllow},
	}})
	waitSnapshot(t, w, "the intention written after the outage", func(s *model.Intentions) error {
		if s.Len() != 1 {
			return fmt.Errorf("%v", s.All())
		}
		return nil
	})
	if st := w.Status(); !st.Reachable || st.LastError != "" {
		t.Errorf("status after recovery %+v", st)
	}
}

func TestNewRequiresClient(t *testing.T) {
	if _, err := intentions.New(intentions.Config{}); err == nil || !strings.Contains(err.Error(), "Client is required") {
		t.Errorf("New without client: %v", err)
	}
}
