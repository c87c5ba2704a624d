package loadgen_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/loadgen"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// xdsFixture is Trellis's real xDS cache and ADS server, in process, fed
// with translated catalogs.
type xdsFixture struct {
	t     *testing.T
	cache *xdscache.Cache
	srv   *xdsserver.Server
	addr  string
}

func startXDS(t *testing.T, snap *model.Snapshot) *xdsFixture {
	t.Helper()
	f := &xdsFixture{t: t, cache: xdscache.New(xdscache.Config{})}
	f.apply(snap)
	srv, err := xdsserver.New(xdsserver.Config{Cache: f.cache})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds server: %v", err)
		}
	})
	return f
}

func (f *xdsFixture) apply(snap *model.Snapshot) {
	f.t.Helper()
	res := translate.Translate(translate.Input{Catalog: snap}, translate.Options{})
	if r := f.cache.Apply(res.Resources.ByTypeURL()); r.Err != nil {
		f.t.Fatalf("apply: %v", r.Err)
	}
}

// catalog builds services svc-0..svc-(n-1) with instances[i] passing
// instances each.
func catalog(instances ...int) *model.Snapshot {
	var services []*model.Service
	for i, n := range instances {
		svc := &model.Service{Name: fmt.Sprintf("svc-%d", i)}
		for j := range n {
			svc.Instances = append(svc.Instances, model.Instance{
				ID: fmt.Sprintf("svc-%d-%d", i, j), Node: "node-1",
				Address: fmt.Sprintf("10.0.%d.%d", i, j+1), Port: 8080,
				Health: model.HealthPassing, Weights: model.Weights{Passing: 1, Warning: 1},
			})
		}
		services = append(services, svc)
	}
	return model.NewSnapshot(services)
}

func newGenerator(t *testing.T, cfg loadgen.Config) *loadgen.Generator {
	t.Helper()
	g, err := loadgen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return g
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or 10 s have passed.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamsSubscribeTheChainAndACKEverything(t *testing.T) {
	f := startXDS(t, catalog(2, 3, 1))
	g := newGenerator(t, loadgen.Config{Target: f.addr, StreamsPerConn: 2, NodeIDPrefix: "client"})
	services := []string{"svc-0", "svc-1", "svc-2", "svc-0", "svc-1"}
	if err := g.Add(ctxTimeout(t, 10*time.Second), services); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitReady(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}

	st := g.Stats()
	if st.Streams != 5 || st.Conns != 3 || st.Ready != 5 || st.Failed != 0 || st.NACKs != 0 {
		t.Errorf("stats = %+v, want 5 streams over 3 connections, all ready, no failure, no NACK", st)
	}
	if st.ACKs != st.Responses || st.Responses < 20 {
		t.Errorf("stats = %+v, want every one of at least 20 responses ACKed", st)
	}
	wantEndpoints := map[string]uint16{"svc-0": 2, "svc-1": 3, "svc-2": 1}
	for i, svc := range services {
		var types []loadgen.Type
		for _, ev := range g.Events(i) {
			types = append(types, ev.Type)
			if ev.Type == loadgen.ClusterLoadAssignment && ev.Endpoints != wantEndpoints[svc] {
				t.Errorf("stream %d (%s): EDS event with %d endpoints, want %d", i, svc, ev.Endpoints, wantEndpoints[svc])
			}
			if ev.Bytes == 0 || ev.Resources != 1 || ev.NACKed {
				t.Errorf("stream %d (%s): event %+v, want one resource, a size, no NACK", i, svc, ev)
			}
		}
		slices.Sort(types)
		want := []loadgen.Type{loadgen.Listener, loadgen.RouteConfiguration, loadgen.Cluster, loadgen.ClusterLoadAssignment}
		if !slices.Equal(types, want) {
			t.Errorf("stream %d (%s): received %v, want one response of each type %v", i, svc, types, want)
		}
	}

	// What the server saw: one stream per node, each subscribed to its
	// service's four resources, with every response ACKed.
	waitFor(t, "server sees every response ACKed", func() error {
		streams := f.srv.Streams()
		if len(streams) != len(services) {
			return fmt.Errorf("%d streams, want %d", len(streams), len(services))
		}
		for _, s := range streams {
			var i int
			if _, err := fmt.Sscanf(s.NodeID, "client-%d", &i); err != nil || i < 0 || i >= len(services) {
				return fmt.Errorf("node ID %q, want client-<index>", s.NodeID)
			}
			if s.UserAgent != "gRPC Go "+loadgen.DefaultUserAgentVersion {
				return fmt.Errorf("stream %s: user agent %q", s.NodeID, s.UserAgent)
			}
			if len(s.Types) != 4 {
				return fmt.Errorf("stream %s: %d types requested, want 4", s.NodeID, len(s.Types))
			}
			for _, ts := range s.Types {
				if !slices.Equal(ts.ResourceNames, []string{services[i]}) {
					return fmt.Errorf("stream %s %s: names %v, want [%s]", s.NodeID, ts.TypeURL, ts.ResourceNames, services[i])
				}
				if ts.Pending || ts.ACKs != 1 || ts.NACKs != 0 || ts.AckedVersion != ts.SentVersion {
					return fmt.Errorf("stream %s %s: %+v, want the one response ACKed", s.NodeID, ts.TypeURL, ts)
				}
			}
		}
		return nil
	})
}

func TestAChangeReachesOnlyTheStreamsWatchingIt(t *testing.T) {
	f := startXDS(t, catalog(2, 2, 2))
	g := newGenerator(t, loadgen.Config{Target: f.addr})
	services := []string{"svc-0", "svc-1", "svc-2", "svc-1"}
	if err := g.Add(ctxTimeout(t, 10*time.Second), services); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitReady(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "server sees every response ACKed", func() error {
		if tot := f.srv.Totals(); tot.ACKs != 16 {
			return fmt.Errorf("server totals %+v, want 16 ACKs", tot)
		}
		return nil
	})
	before := f.srv.Totals()
	g.ResetEvents()

	at := g.Now()
	f.apply(catalog(2, 3, 2))
	for _, i := range []int{1, 3} {
		waitFor(t, fmt.Sprintf("stream %d receives the new endpoint", i), func() error {
			ev, ok := g.FirstAfter(i, loadgen.ClusterLoadAssignment, at)
			if !ok {
				return errors.New("no EDS response yet")
			}
			if ev.Endpoints != 3 {
				return fmt.Errorf("EDS response with %d endpoints, want 3", ev.Endpoints)
			}
			return nil
		})
		if n, b := g.CountAfter(i, at); n != 1 || b == 0 {
			t.Errorf("stream %d: %d responses (%d bytes) since the change, want exactly one", i, n, b)
		}
	}
	waitFor(t, "server sees both pushes ACKed", func() error {
		tot := f.srv.Totals()
		if tot.Responses-before.Responses != 2 || tot.ACKs-before.ACKs != 2 {
			return fmt.Errorf("server sent %d responses and received %d ACKs since the change, want 2 and 2",
				tot.Responses-before.Responses, tot.ACKs-before.ACKs)
		}
		return nil
	})
	for _, i := range []int{0, 2} {
		if evs := g.Events(i); len(evs) != 0 {
			t.Errorf("stream %d (%s) received %v after a change to svc-1", i, services[i], evs)
		}
	}
}

func TestStreamsFollowARemovedCluster(t *testing.T) {
	f := startXDS(t, catalog(1, 1))
	g := newGenerator(t, loadgen.Config{Target: f.addr})
	if err := g.Add(ctxTimeout(t, 10*time.Second), []string{"svc-1"}); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitReady(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	g.ResetEvents()
	// svc-1 leaves the catalog: its Listener is gone from the state of
	// the world and the stream unsubscribes the rest of the chain.
	f.apply(catalog(1))
	waitFor(t, "the stream sees its Listener removed and unsubscribes the chain", func() error {
		for _, s := range f.srv.Streams() {
			for _, ts := range s.Types {
				if ts.TypeURL != loadgen.Listener.URL() && len(ts.ResourceNames) != 0 {
					return fmt.Errorf("%s still subscribed to %v", ts.TypeURL, ts.ResourceNames)
				}
			}
		}
		return nil
	})
	// The server removes the Listener and the Cluster in responses of
	// their own, in either order.
	evs := g.Events(0)
	if !slices.ContainsFunc(evs, func(ev loadgen.Event) bool { return ev.Type == loadgen.Listener && ev.Resources == 0 }) {
		t.Errorf("events %+v, want an empty Listener response", evs)
	}
}

// nackServer is an ADS server that answers the first request with a
// Listener the client cannot use and records the client's next request.
type nackServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	next chan *discoveryv3.DiscoveryRequest
}

func (s *nackServer) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	bad, err := anypb.New(&listenerv3.Listener{Name: "svc-0"}) // no api_listener
	if err != nil {
		return err
	}
	if err := stream.Send(&discoveryv3.DiscoveryResponse{
		TypeUrl: loadgen.Listener.URL(), VersionInfo: "v1", Nonce: "n1", Resources: []*anypb.Any{bad},
	}); err != nil {
		return err
	}
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	s.next <- req
	<-stream.Context().Done()
	return nil
}

func TestUnusableResourceIsNACKed(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	fake := &nackServer{next: make(chan *discoveryv3.DiscoveryRequest, 1)}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, fake)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	g := newGenerator(t, loadgen.Config{Target: lis.Addr().String()})
	if err := g.Add(ctxTimeout(t, 10*time.Second), []string{"svc-0"}); err != nil {
		t.Fatal(err)
	}
	var req *discoveryv3.DiscoveryRequest
	select {
	case req = <-fake.next:
	case <-time.After(10 * time.Second):
		t.Fatal("no request after the unusable Listener")
	}
	if req.GetResponseNonce() != "n1" || req.GetVersionInfo() != "" || !strings.Contains(req.GetErrorDetail().GetMessage(), "api_listener") {
		t.Errorf("request after an unusable Listener = %v, want a NACK: nonce n1, the previous (empty) version, an error naming api_listener", req)
	}
	waitFor(t, "the NACK is counted", func() error {
		if st := g.Stats(); st.NACKs != 1 || st.ACKs != 0 || st.Ready != 0 {
			return fmt.Errorf("stats %+v, want one NACK, no ACK, not ready", st)
		}
		return nil
	})
	if evs := g.Events(0); len(evs) != 1 || !evs[0].NACKed {
		t.Errorf("events %+v, want one NACKed response", evs)
	}
	// A stream that cannot get its configuration is not ready.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := g.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady = %v, want the context's deadline", err)
	}
}

func TestStreamFailureIsReported(t *testing.T) {
	f := startXDS(t, catalog(1))
	g := newGenerator(t, loadgen.Config{Target: f.addr})
	if err := g.Add(ctxTimeout(t, 10*time.Second), []string{"svc-0"}); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitReady(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// A second stream to an address where nothing listens fails.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	g2 := newGenerator(t, loadgen.Config{Target: dead})
	if err := g2.Add(ctxTimeout(t, 10*time.Second), []string{"svc-0"}); err != nil {
		// Opening may fail at once or on the first receive.
		t.Logf("Add: %v", err)
	}
	err = g2.WaitReady(ctxTimeout(t, 30*time.Second))
	if err == nil || !strings.Contains(err.Error(), "stream 0 (svc-0)") {
		t.Errorf("WaitReady = %v, want the stream's failure", err)
	}
	if st := g2.Stats(); st.Failed != 1 {
		t.Errorf("stats %+v, want one failed stream", st)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     loadgen.Config
		wantErr string
	}{
		{name: "no target", cfg: loadgen.Config{}, wantErr: "Config.Target is required"},
		{name: "negative streams per conn", cfg: loadgen.Config{Target: "127.0.0.1:1", StreamsPerConn: -1}, wantErr: "Config.StreamsPerConn -1"},
		{name: "negative events", cfg: loadgen.Config{Target: "127.0.0.1:1", MaxEventsPerStream: -2}, wantErr: "Config.MaxEventsPerStream -2"},
		{name: "defaults", cfg: loadgen.Config{Target: "127.0.0.1:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := loadgen.New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if err := g.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
