package xdscache

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	thriftv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/thrift_proxy/v3"
)

func cmpProto() cmp.Option { return protocmp.Transform() }

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// client drives the cache the way go-control-plane's sotw server does for
// one type on one stream: a watch per request, the subscription carrying
// what was returned.
type client struct {
	t       *testing.T
	w       cache.Cache
	typeURL string
	sub     stream.Subscription
	ch      chan cache.Response
	cancel  func()
	version string
	started bool
}

func newClient(t *testing.T, c *Cache, typeURL string) *client {
	t.Helper()
	cl := &client{t: t, w: c.ConfigWatcher(), typeURL: typeURL, ch: make(chan cache.Response, 1)}
	t.Cleanup(cl.close)
	return cl
}

// request replaces the current watch with one for names, sending the last
// received version as the server would on an ACK.
func (cl *client) request(names ...string) {
	cl.t.Helper()
	if cl.cancel != nil {
		cl.cancel()
	}
	if !cl.started {
		cl.sub = stream.NewSotwSubscription(names, false)
		cl.started = true
	} else {
		cl.sub.SetResourceSubscription(names)
	}
	req := &cache.Request{TypeUrl: cl.typeURL, ResourceNames: names, VersionInfo: cl.version}
	cancel, err := cl.w.CreateWatch(req, cl.sub, cl.ch)
	if err != nil {
		cl.t.Fatalf("CreateWatch(%v): %v", names, err)
	}
	cl.cancel = cancel
}

func (cl *client) close() {
	if cl.cancel != nil {
		cl.cancel()
		cl.cancel = nil
	}
}

// response returns the pending response (the cache answers synchronously,
// so it is there or not at all) and acknowledges it, or nil.
func (cl *client) response() map[string]proto.Message {
	cl.t.Helper()
	select {
	case resp := <-cl.ch:
		out, err := resp.GetDiscoveryResponse()
		if err != nil {
			cl.t.Fatalf("GetDiscoveryResponse: %v", err)
		}
		cl.sub.SetReturnedResources(resp.GetReturnedResources())
		cl.version = out.GetVersionInfo()
		got := make(map[string]proto.Message)
		for _, a := range out.GetResources() {
			m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
			if err != nil {
				cl.t.Fatalf("unmarshal %s: %v", a.GetTypeUrl(), err)
			}
			got[cache.GetResourceName(m)] = m
		}
		return got
	default:
		return nil
	}
}

func (cl *client) wantResponse(names ...string) map[string]proto.Message {
	cl.t.Helper()
	got := cl.response()
	if got == nil {
		cl.t.Fatalf("%s: no response, want one with %v", shortType(cl.typeURL), names)
	}
	var gotNames []string
	for n := range got {
		gotNames = append(gotNames, n)
	}
	slices.Sort(gotNames)
	slices.Sort(names)
	if diff := cmp.Diff(names, gotNames); diff != "" {
		cl.t.Fatalf("%s response names (-want +got):\n%s", shortType(cl.typeURL), diff)
	}
	return got
}

func (cl *client) wantNoResponse() {
	cl.t.Helper()
	if got := cl.response(); got != nil {
		cl.t.Fatalf("%s: unexpected response with %d resources", shortType(cl.typeURL), len(got))
	}
}

func listener(name, statPrefix string) *listenerv3.Listener {
	return &listenerv3.Listener{Name: name, StatPrefix: statPrefix}
}

func cluster(name string, timeoutSec int64) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(0),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		DnsRefreshRate:       &durationpb.Duration{Seconds: timeoutSec},
	}
}

func cla(name string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       "127.0.0.1",
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
					}}},
				}},
			}},
		}},
	}
}

func TestApplyUnchangedNotResent(t *testing.T) {
	c := New(Config{VersionPrefix: "test."})
	state := func(bPort uint32) Resources {
		// Fresh messages on every call: equality must come from content.
		return Resources{
			resource.ClusterType:  {"a": cluster("a", 1), "b": cluster("b", 1)},
			resource.EndpointType: {"a": cla("a", 1000), "b": cla("b", bPort)},
		}
	}
	res := c.Apply(state(2000))
	want := map[string]TypeChange{
		resource.ClusterType:  {Updated: 2, Total: 2},
		resource.EndpointType: {Updated: 2, Total: 2},
	}
	if diff := cmp.Diff(want, res.Types); diff != "" {
		t.Fatalf("first Apply (-want +got):\n%s", diff)
	}

	cdsA := newClient(t, c, resource.ClusterType)
	cdsA.request("a")
	cdsA.wantResponse("a")
	cdsA.request("a") // ACK
	cdsA.wantNoResponse()
	if !strings.HasPrefix(cdsA.version, "test.") {
		t.Errorf("version %q lacks the configured prefix", cdsA.version)
	}
	edsA := newClient(t, c, resource.EndpointType)
	edsA.request("a")
	edsA.wantResponse("a")
	edsA.request("a")
	edsB := newClient(t, c, resource.EndpointType)
	edsB.request("b")
	edsB.wantResponse("b")
	edsB.request("b")

	_, vA, _ := c.Resource(resource.EndpointType, "a")

	// Same content, new messages: nothing is sent.
	res = c.Apply(state(2000))
	if res.Changed() {
		t.Fatalf("identical Apply reported changes: %+v", res.Types)
	}
	cdsA.wantNoResponse()
	edsA.wantNoResponse()
	edsB.wantNoResponse()

	// Only b's endpoints change: only the watch naming b fires, with b only.
	res = c.Apply(state(2001))
	want = map[string]TypeChange{
		resource.ClusterType:  {Total: 2},
		resource.EndpointType: {Updated: 1, Total: 2},
	}
	if diff := cmp.Diff(want, res.Types); diff != "" {
		t.Fatalf("Apply after change (-want +got):\n%s", diff)
	}
	got := edsB.wantResponse("b")
	if port := got["b"].(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); port != 2001 {
		t.Errorf("b port = %d, want 2001", port)
	}
	edsA.wantNoResponse()
	cdsA.wantNoResponse()
	if _, v, _ := c.Resource(resource.EndpointType, "a"); v != vA {
		t.Errorf("unchanged resource version moved from %q to %q", vA, v)
	}
	if _, vB, _ := c.Resource(resource.EndpointType, "b"); vB == vA {
		t.Errorf("different resources share version %q", vB)
	}
}

func TestApplyDeletion(t *testing.T) {
	c := New(Config{})
	c.Apply(Resources{resource.ClusterType: {"a": cluster("a", 1), "b": cluster("b", 1)}})
	cds := newClient(t, c, resource.ClusterType)
	cds.request("a", "b")
	cds.wantResponse("a", "b")
	cds.request("a", "b")

	res := c.Apply(Resources{resource.ClusterType: {"a": cluster("a", 1)}})
	if diff := cmp.Diff(TypeChange{Deleted: 1, Total: 1}, res.Types[resource.ClusterType]); diff != "" {
		t.Errorf("ApplyResult (-want +got):\n%s", diff)
	}
	// CDS is full state: the response lists what is left.
	cds.wantResponse("a")
	if diff := cmp.Diff([]string{"a"}, c.Names(resource.ClusterType)); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
	if _, _, ok := c.Resource(resource.ClusterType, "b"); ok {
		t.Error("deleted resource still returned by Resource")
	}

	// Removing a whole type.
	cds.request("a", "b")
	res = c.Apply(Resources{})
	if diff := cmp.Diff(TypeChange{Deleted: 1}, res.Types[resource.ClusterType]); diff != "" {
		t.Errorf("ApplyResult (-want +got):\n%s", diff)
	}
	cds.wantResponse()
	if v := c.Versions(); len(v) != 0 {
		t.Errorf("Versions after emptying = %v, want none", v)
	}
}

func TestNACKNotAnsweredWithTheSameResources(t *testing.T) {
	tests := []struct {
		name            string
		acceptedVersion string // what the client sends back in its NACK
	}{
		{name: "nothing accepted yet", acceptedVersion: ""},
		{name: "version of another instance", acceptedVersion: "other-instance.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{})
			c.Apply(Resources{resource.ClusterType: {"a": cluster("a", 1)}})
			cds := newClient(t, c, resource.ClusterType)
			cds.request("a")
			cds.wantResponse("a")

			// NACK: the server closes the watch and opens the next one
			// with the client's last accepted version and error detail.
			cds.cancel()
			req := &cache.Request{
				TypeUrl:       resource.ClusterType,
				ResourceNames: []string{"a"},
				VersionInfo:   tt.acceptedVersion,
				ErrorDetail:   &status.Status{Code: 3, Message: "rejected"},
			}
			cancel, err := cds.w.CreateWatch(req, cds.sub, cds.ch)
			if err != nil {
				t.Fatal(err)
			}
			cds.cancel = cancel
			cds.wantNoResponse()

			// The next change is sent.
			c.Apply(Resources{resource.ClusterType: {"a": cluster("a", 2)}})
			cds.wantResponse("a")
		})
	}
}

func TestListenerAliases(t *testing.T) {
	c := New(Config{})
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "v1"), "other": listener("other", "o")}})

	lds := newClient(t, c, resource.ListenerType)
	lds.request("svc:8080")
	got := lds.wantResponse("svc:8080")
	want := listener("svc:8080", "v1")
	if diff := cmp.Diff(want, got["svc:8080"], cmpProto()); diff != "" {
		t.Fatalf("alias (-want +got):\n%s", diff)
	}
	lds.request("svc:8080")
	lds.wantNoResponse()
	if diff := cmp.Diff([]string{"other", "svc", "svc:8080"}, c.Names(resource.ListenerType)); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
	if got := c.Len(resource.ListenerType); got != 3 {
		t.Errorf("Len = %d, want 3 (aliases included)", got)
	}

	// An unrelated change does not touch the alias.
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "v1"), "other": listener("other", "o2")}})
	lds.wantNoResponse()

	// The base changes: the alias follows.
	res := c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "v2"), "other": listener("other", "o2")}})
	if diff := cmp.Diff(TypeChange{Updated: 2, Total: 3}, res.Types[resource.ListenerType]); diff != "" {
		t.Errorf("ApplyResult (-want +got):\n%s", diff)
	}
	got = lds.wantResponse("svc:8080")
	if diff := cmp.Diff(listener("svc:8080", "v2"), got["svc:8080"], cmpProto()); diff != "" {
		t.Fatalf("updated alias (-want +got):\n%s", diff)
	}
	lds.request("svc:8080")

	// The base goes: so does the alias.
	c.Apply(Resources{resource.ListenerType: {"other": listener("other", "o2")}})
	lds.wantResponse()
	if _, _, ok := c.Resource(resource.ListenerType, "svc:8080"); ok {
		t.Error("alias outlived its base")
	}
	lds.request("svc:8080")

	// The base comes back while the alias is still requested.
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "v3"), "other": listener("other", "o2")}})
	got = lds.wantResponse("svc:8080")
	if diff := cmp.Diff(listener("svc:8080", "v3"), got["svc:8080"], cmpProto()); diff != "" {
		t.Fatalf("restored alias (-want +got):\n%s", diff)
	}
}

func TestListenerAliasNotShadowingRealListener(t *testing.T) {
	c := New(Config{})
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "base"), "svc:80": listener("svc:80", "real")}})
	lds := newClient(t, c, resource.ListenerType)
	lds.request("svc:80")
	got := lds.wantResponse("svc:80")
	if diff := cmp.Diff(listener("svc:80", "real"), got["svc:80"], cmpProto()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	lds.request("svc:80")

	// The real listener goes: the name becomes an alias of svc.
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "base")}})
	got = lds.wantResponse("svc:80")
	if diff := cmp.Diff(listener("svc:80", "base"), got["svc:80"], cmpProto()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestListenerAliasEviction(t *testing.T) {
	c := New(Config{})
	state := Resources{resource.ListenerType: {"svc": listener("svc", "v1")}}
	c.Apply(state)
	lds := newClient(t, c, resource.ListenerType)
	lds.request("svc:1")
	lds.wantResponse("svc:1")

	// An ACK cancels the watch and creates the next one: the alias stays
	// and is not sent again.
	lds.request("svc:1")
	lds.wantNoResponse()
	c.Apply(state)
	lds.wantNoResponse()

	lds.close()
	c.Apply(state)
	if _, _, ok := c.Resource(resource.ListenerType, "svc:1"); !ok {
		t.Fatal("alias dropped at the first Apply after its last watch closed")
	}
	c.Apply(state)
	if _, _, ok := c.Resource(resource.ListenerType, "svc:1"); ok {
		t.Fatal("alias kept after two Applies without a watch")
	}

	// Requested again, it comes back.
	lds2 := newClient(t, c, resource.ListenerType)
	lds2.request("svc:1")
	lds2.wantResponse("svc:1")
}

func TestListenerAliasLimit(t *testing.T) {
	c := New(Config{MaxAliases: 1})
	c.Apply(Resources{resource.ListenerType: {"svc": listener("svc", "v1")}})

	a := newClient(t, c, resource.ListenerType)
	a.request("svc:1")
	a.wantResponse("svc:1")
	a.request("svc:1")

	// At the limit with every alias in use: no alias for svc:2.
	b := newClient(t, c, resource.ListenerType)
	b.request("svc:2")
	b.wantResponse() // full-state LDS: an empty answer
	if _, _, ok := c.Resource(resource.ListenerType, "svc:2"); ok {
		t.Fatal("alias beyond the limit was materialized")
	}

	// svc:1 released: it is evicted to make room.
	a.close()
	b.close()
	b2 := newClient(t, c, resource.ListenerType)
	b2.request("svc:2")
	b2.wantResponse("svc:2")
	if diff := cmp.Diff([]string{"svc", "svc:2"}, c.Names(resource.ListenerType)); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
}

func TestSplitHostPort(t *testing.T) {
	tests := []struct {
		name     string
		wantHost string
		wantOK   bool
	}{
		{name: "svc:8080", wantHost: "svc", wantOK: true},
		{name: "svc:1", wantHost: "svc", wantOK: true},
		{name: "svc:65535", wantHost: "svc", wantOK: true},
		{name: "a:b:443", wantHost: "a:b", wantOK: true},
		{name: "[::1]:443", wantHost: "[::1]", wantOK: true},
		{name: "svc"},
		{name: "svc:"},
		{name: ":80"},
		{name: "svc:0"},
		{name: "svc:65536"},
		{name: "svc:-1"},
		{name: "svc:+80"},
		{name: "svc:8o"},
		{name: "svc: 80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, ok := splitHostPort(tt.name)
			if ok != tt.wantOK || host != tt.wantHost {
				t.Errorf("splitHostPort(%q) = %q, %t; want %q, %t", tt.name, host, ok, tt.wantHost, tt.wantOK)
			}
		})
	}
}

func TestApplyRejectsBadResources(t *testing.T) {
	tests := []struct {
		name    string
		res     types.Resource
		wantErr string
	}{
		{name: "nil", res: nil, wantErr: "nil resource"},
		{name: "typed nil", res: (*clusterv3.Cluster)(nil), wantErr: "nil resource"},
		{name: "misnamed", res: cluster("not-a", 1), wantErr: `names itself "not-a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{})
			good := cluster("a", 1)
			c.Apply(Resources{resource.ClusterType: {"a": good}})
			_, v0, _ := c.Resource(resource.ClusterType, "a")

			res := c.Apply(Resources{resource.ClusterType: {"a": tt.res, "b": cluster("b", 1)}})
			if res.Err == nil || !strings.Contains(res.Err.Error(), tt.wantErr) {
				t.Fatalf("Err = %v, want it to contain %q", res.Err, tt.wantErr)
			}
			got, v, ok := c.Resource(resource.ClusterType, "a")
			if !ok || v != v0 || !proto.Equal(got, good) {
				t.Errorf("bad resource replaced the previous one: %v %q", got, v)
			}
			if _, _, ok := c.Resource(resource.ClusterType, "b"); !ok {
				t.Error("good resource next to a bad one was not applied")
			}

			// With no previous version, the bad resource is left out.
			c2 := New(Config{})
			res = c2.Apply(Resources{resource.ClusterType: {"a": tt.res}})
			if res.Err == nil {
				t.Fatal("Err = nil")
			}
			if names := c2.Names(resource.ClusterType); len(names) != 0 {
				t.Errorf("Names = %v, want none", names)
			}
		})
	}
}

func TestUnservedType(t *testing.T) {
	c := New(Config{})
	sub := stream.NewSotwSubscription([]string{"x"}, false)
	_, err := c.ConfigWatcher().CreateWatch(&cache.Request{TypeUrl: "type.googleapis.com/example.Unknown", ResourceNames: []string{"x"}},
		sub, make(chan cache.Response, 1))
	if err == nil {
		t.Fatal("CreateWatch for an unserved type succeeded")
	}

	// Once applied, any type URL is served.
	const typeURL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	c.Apply(Resources{typeURL: {"x": &corev3.TypedExtensionConfig{Name: "x"}}})
	cl := newClient(t, c, typeURL)
	cl.request("x")
	cl.wantResponse("x")
	c.Apply(Resources{resource.ThriftRouteType: {"n": &thriftv3.RouteConfiguration{Name: "n"}}})
	cl2 := newClient(t, c, resource.ThriftRouteType)
	cl2.request("n")
	cl2.wantResponse("n")
}

func TestDefaultVersionPrefixDiffers(t *testing.T) {
	a, b := New(Config{}), New(Config{})
	if a.prefix == b.prefix {
		t.Fatalf("two caches share the version prefix %q", a.prefix)
	}
}

// TestConcurrentUse runs Applies against watches coming and going, for the
// race detector.
func TestConcurrentUse(t *testing.T) {
	c := New(Config{MaxAliases: 8})
	states := []Resources{
		{resource.ListenerType: {"svc": listener("svc", "v1")}, resource.ClusterType: {"a": cluster("a", 1)}},
		{resource.ListenerType: {"svc": listener("svc", "v2")}, resource.ClusterType: {"a": cluster("a", 2)}},
		{resource.ClusterType: {"a": cluster("a", 2)}},
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			w := c.ConfigWatcher()
			for i := range 200 {
				name := fmt.Sprintf("svc:%d", 1+(g*200+i)%16)
				sub := stream.NewSotwSubscription([]string{name}, false)
				ch := make(chan cache.Response, 1)
				cancel, err := w.CreateWatch(&cache.Request{TypeUrl: resource.ListenerType, ResourceNames: []string{name}}, sub, ch)
				if err != nil {
					t.Error(err)
					return
				}
				cancel()
				cancel() // cancel functions may be called more than once
			}
		})
	}
	wg.Go(func() {
		for i := range 300 {
			c.Apply(states[i%len(states)])
			c.Versions()
		}
	})
	wg.Wait()

	// Every watch is gone: two Applies drop every alias.
	c.Apply(states[0])
	c.Apply(states[0])
	if diff := cmp.Diff([]string{"svc"}, c.Names(resource.ListenerType)); diff != "" {
		t.Errorf("Names after all watches closed (-want +got):\n%s", diff)
	}
	if len(c.aliasRefs) != 0 {
		t.Errorf("alias references leaked: %v", c.aliasRefs)
	}
}

// TestContentVersionCanonicalAny checks that the version does not depend on
// how the payload of an Any was encoded, down nested Anys.
func TestContentVersionCanonicalAny(t *testing.T) {
	det := proto.MarshalOptions{Deterministic: true}
	entry := func(k string, v float64) []byte {
		b, err := det.Marshal(&structpb.Struct{Fields: map[string]*structpb.Value{k: structpb.NewNumberValue(v)}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Concatenated encodings merge: both orders decode to {a: 1, b: 2}
	// but differ byte for byte, as non-deterministic map encoding does.
	ab := slices.Concat(entry("a", 1), entry("b", 2))
	ba := slices.Concat(entry("b", 2), entry("a", 1))
	ac := slices.Concat(entry("a", 1), entry("b", 3))
	structURL := "type.googleapis.com/google.protobuf.Struct"

	build := func(structBytes []byte) *listenerv3.Listener {
		hcm := &hcmv3.HttpConnectionManager{
			StatPrefix: "svc",
			HttpFilters: []*hcmv3.HttpFilter{{
				Name:       "custom",
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: structURL, Value: structBytes}},
			}},
		}
		b, err := det.Marshal(hcm)
		if err != nil {
			t.Fatal(err)
		}
		return &listenerv3.Listener{
			Name:        "svc",
			ApiListener: &listenerv3.ApiListener{ApiListener: &anypb.Any{TypeUrl: "type.googleapis.com/" + string(proto.MessageName(hcm)), Value: b}},
		}
	}
	version := func(l *listenerv3.Listener) string {
		v, err := contentVersion(l)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	lab, lba := build(ab), build(ba)
	if proto.Equal(lab, lba) {
		t.Fatal("test inputs are byte-identical; the test proves nothing")
	}
	if version(lab) != version(lba) {
		t.Errorf("equal content encoded differently got different versions")
	}
	if version(lab) == version(build(ac)) {
		t.Errorf("different content got the same version")
	}
	// Hashing does not touch the resource.
	if got := lab.GetApiListener().GetApiListener(); !proto.Equal(got, build(ab).GetApiListener().GetApiListener()) {
		t.Errorf("contentVersion modified its input")
	}

	// An Any of a type the binary does not know is compared as bytes.
	unknown := func(b []byte) *listenerv3.Listener {
		return &listenerv3.Listener{Name: "x", ApiListener: &listenerv3.ApiListener{ApiListener: &anypb.Any{TypeUrl: "type.googleapis.com/unknown.Type", Value: b}}}
	}
	if version(unknown(ab)) == version(unknown(ba)) {
		t.Errorf("unknown Any payloads with different bytes share a version")
	}
}

// TestApplySameValueNotReencoded checks the contract of Apply: a resource
// value applied again under the same name keeps its version without being
// encoded or hashed. The test breaks the contract on purpose (it modifies
// an applied resource) to observe that the cache did not look at it again.
func TestApplySameValueNotReencoded(t *testing.T) {
	c := New(Config{})
	l := listener("svc", "v1")
	c.Apply(Resources{resource.ListenerType: {"svc": l}})
	_, v1, _ := c.Resource(resource.ListenerType, "svc")

	l.StatPrefix = "modified in place" // what callers must never do
	r := c.Apply(Resources{resource.ListenerType: {"svc": l}})
	if _, v, _ := c.Resource(resource.ListenerType, "svc"); v != v1 || r.Changed() {
		t.Fatalf("the same value applied again was re-encoded: version %s -> %s, result %v", v1, v, r.Types)
	}

	// A new value with that content is hashed, and found changed.
	r = c.Apply(Resources{resource.ListenerType: {"svc": proto.CloneOf(l)}})
	if _, v, _ := c.Resource(resource.ListenerType, "svc"); v == v1 || r.Types[resource.ListenerType].Updated != 1 {
		t.Fatalf("a new value with new content kept version %s (result %v)", v, r.Types)
	}
}

// TestResponsesShareEncoding checks that a resource is encoded once per
// version and its bytes shared by every stream's response (go-control-plane
// v0.14's LinearCache encodes a cached resource once, lazily), also after
// an Apply that changed other resources of its type.
func TestResponsesShareEncoding(t *testing.T) {
	c := New(Config{})
	c.Apply(Resources{resource.ListenerType: {"a": listener("a", "v1"), "b": listener("b", "v1")}})
	payload := func(cl *client, name string) []byte {
		t.Helper()
		select {
		case resp := <-cl.ch:
			out, err := resp.GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			cl.sub.SetReturnedResources(resp.GetReturnedResources())
			cl.version = out.GetVersionInfo()
			for _, a := range out.GetResources() {
				m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if cache.GetResourceName(m) == name {
					return a.GetValue()
				}
			}
			t.Fatalf("response without %q", name)
		default:
			t.Fatal("no response")
		}
		return nil
	}
	const streams = 5
	var first []byte
	clients := make([]*client, streams)
	for i := range clients {
		clients[i] = newClient(t, c, resource.ListenerType)
		clients[i].request("a", "b")
		got := payload(clients[i], "a")
		if i == 0 {
			first = got
			continue
		}
		if unsafe.SliceData(got) != unsafe.SliceData(first) {
			t.Fatalf("stream %d got its own encoding of an unchanged resource", i)
		}
	}
	for _, cl := range clients {
		cl.request("a", "b")
	}
	// b changes; LDS responses are full state, so a is sent again: with
	// the bytes encoded at the start.
	c.Apply(Resources{resource.ListenerType: {"a": listener("a", "v1"), "b": listener("b", "v2")}})
	for i, cl := range clients {
		if got := payload(cl, "a"); unsafe.SliceData(got) != unsafe.SliceData(first) {
			t.Fatalf("stream %d: the unchanged resource was encoded again after another changed", i)
		}
	}
}

// TestListenerAliasLimitOnApply checks that aliases materialized by Apply
// (their base appearing after they were requested) follow the same limit
// policy as aliases materialized by a request: at the limit, unreferenced
// aliases make room.
func TestListenerAliasLimitOnApply(t *testing.T) {
	c := New(Config{MaxAliases: 1})
	a := newClient(t, c, resource.ListenerType)
	a.request("svc:1")
	b := newClient(t, c, resource.ListenerType)
	b.request("svc:2")
	state := Resources{resource.ListenerType: {"svc": listener("svc", "v1")}}

	c.Apply(state)
	if diff := cmp.Diff([]string{"svc", "svc:1"}, c.Names(resource.ListenerType)); diff != "" {
		t.Fatalf("Names at the limit (-want +got):\n%s", diff)
	}

	a.close()
	c.Apply(state)
	if diff := cmp.Diff([]string{"svc", "svc:2"}, c.Names(resource.ListenerType)); diff != "" {
		t.Fatalf("Names after svc:1 lost its watch (-want +got):\n%s", diff)
	}
}
