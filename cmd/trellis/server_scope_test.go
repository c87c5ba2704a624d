package main

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

func TestCheckXDSScope(t *testing.T) {
	tests := []struct {
		scope, td string
		tls       bool
		wantErr   string
	}{
		{scope: "all"},
		{scope: "intentions", tls: true, td: "t.test"},
		{scope: "intentions", td: "t.test", wantErr: "--xds-scope=intentions needs --xds-tls"},
		{scope: "intentions", tls: true, wantErr: "--xds-scope=intentions needs --trust-domain"},
		{scope: "mine", wantErr: `--xds-scope "mine": accepted: all (every client receives every resource), intentions`},
	}
	for _, tt := range tests {
		err := checkXDSScope(tt.scope, tt.tls, tt.td)
		if (tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("checkXDSScope(%q, %t, %q) = %v, want %q", tt.scope, tt.tls, tt.td, err, tt.wantErr)
		}
	}
}

// TestIntentionScope decides, from a catalog and intentions, what each
// SPIFFE ID may receive, and tells only the peers whose scope changed.
func TestIntentionScope(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("t.test")
	id := func(service string) string { return "spiffe://t.test/ns/default/dc/dc1/svc/" + service }
	var snap atomic.Pointer[model.Snapshot]
	var ins atomic.Pointer[model.Intentions]
	snap.Store(model.NewSnapshot([]*model.Service{
		{Name: "web", Instances: []model.Instance{{ID: "web-1", Address: "10.0.0.1", Port: 8080}}},
		{Name: "echo", Instances: []model.Instance{{ID: "echo-1", Address: "10.0.0.2", Port: 8080}}},
		{Name: "db", Instances: []model.Instance{{ID: "db-1", Address: "10.0.0.3", Port: 5432}}},
		{Name: "cache", Instances: []model.Instance{{ID: "cache-1", Address: "::1", Port: 6379}}},
	}))
	ins.Store(model.NewIntentions([]model.Intention{
		{Source: "web", Destination: "echo", Action: model.IntentionAllow, Precedence: 9},
		{Source: "web", Destination: "db", Action: model.IntentionDeny, Precedence: 9},
		{Source: "web", Destination: "cache", Action: model.IntentionAllow, Precedence: 9, Conditions: []string{"http path /x"}},
		{Source: "*", Destination: "cache", Action: model.IntentionAllow, Precedence: 8},
	}))
	s, err := newXDSScope("intentions", true, "t.test", snap.Load, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.follow(translate.Security{TrustDomain: td, Scheme: identity.DefaultScheme(), DefaultDeny: true}, ins.Load)

	webAllow, webChanged := s.Allow(id("web"))
	dbAllow, dbChanged := s.Allow(id("db"))
	foreignAllow, _ := s.Allow("spiffe://other.test/ns/default/dc/dc1/svc/web")
	oddAllow, _ := s.Allow("spiffe://t.test/workload/web")
	tests := []struct {
		name  string
		allow func(string, string) bool
		typ   string
		res   string
		want  bool
	}{
		{"allowed Listener", webAllow, resource.ListenerType, "echo", true},
		{"allowed Listener with port", webAllow, resource.ListenerType, "echo:8080", true},
		{"allowed route", webAllow, resource.RouteType, "echo", true},
		{"allowed cluster", webAllow, resource.ClusterType, "echo", true},
		{"allowed subset cluster", webAllow, resource.ClusterType, translate.SubsetClusterName("echo", "v2"), true},
		{"allowed endpoints", webAllow, resource.EndpointType, "echo/v2", true},
		{"denied Listener", webAllow, resource.ListenerType, "db", false},
		{"denied cluster", webAllow, resource.ClusterType, "db", false},
		{"intention with conditions denies", webAllow, resource.ListenerType, "cache", false},
		{"default deny", webAllow, resource.ListenerType, "web", false},
		{"own server Listener", webAllow, resource.ListenerType, translate.ServerListenerName("10.0.0.1:8080"), true},
		{"other's server Listener", webAllow, resource.ListenerType, translate.ServerListenerName("10.0.0.2:8080"), false},
		{"unknown type", webAllow, "type.googleapis.com/other", "echo", false},
		{"wildcard source intention", dbAllow, resource.ListenerType, "cache", true},
		{"db may call nothing else", dbAllow, resource.ListenerType, "echo", false},
		{"db's own server Listener", dbAllow, resource.ListenerType, translate.ServerListenerName("10.0.0.3:5432"), true},
		{"other trust domain", foreignAllow, resource.ListenerType, "echo", false},
		{"ID outside the scheme", oddAllow, resource.ListenerType, "echo", false},
	}
	for _, tt := range tests {
		if got := tt.allow(tt.typ, tt.res); got != tt.want {
			t.Errorf("%s: allow(%s, %q) = %t, want %t", tt.name, tt.typ, tt.res, got, tt.want)
		}
	}

	// An intention change that only concerns web tells web, not db.
	ins.Store(model.NewIntentions([]model.Intention{
		{Source: "web", Destination: "echo", Action: model.IntentionAllow, Precedence: 9},
		{Source: "web", Destination: "db", Action: model.IntentionAllow, Precedence: 9},
		{Source: "*", Destination: "cache", Action: model.IntentionAllow, Precedence: 8},
	}))
	s.update()
	select {
	case <-webChanged:
	default:
		t.Fatal("web's scope changed and its channel is open")
	}
	select {
	case <-dbChanged:
		t.Fatal("db's scope did not change and its channel was closed")
	default:
	}
	webAllow, _ = s.Allow(id("web"))
	if !webAllow(resource.ListenerType, "db") || !webAllow(resource.ListenerType, "cache") {
		t.Error("web's new scope does not hold db and cache")
	}
	// A new instance of db adds a server Listener to db's scope only.
	snap.Store(model.NewSnapshot(append(servicesOf(snap.Load()), &model.Service{Name: "db", Instances: []model.Instance{
		{ID: "db-1", Address: "10.0.0.3", Port: 5432}, {ID: "db-2", Address: "10.0.0.4", Port: 5432}}})))
	s.update()
	select {
	case <-dbChanged:
	default:
		t.Fatal("db's scope changed and its channel is open")
	}
	if dbAllow, _ = s.Allow(id("db")); !dbAllow(resource.ListenerType, translate.ServerListenerName("10.0.0.4:5432")) {
		t.Error("db's new instance's server Listener is not in its scope")
	}
}

// servicesOf lists the services of snap except db.
func servicesOf(snap *model.Snapshot) []*model.Service {
	var out []*model.Service
	for name, svc := range snap.Services {
		if name != "db" {
			out = append(out, svc)
		}
	}
	return out
}
