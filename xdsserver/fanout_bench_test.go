package xdsserver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/loadgen"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// fanoutService is the one service every stream of BenchmarkFanout
// watches, with 10 instances whose weight follows gen.
func fanoutService(gen int) *model.Service {
	svc := &model.Service{Name: "hot"}
	for i := range 10 {
		svc.Instances = append(svc.Instances, model.Instance{
			ID: fmt.Sprintf("i-%d", i), Node: fmt.Sprintf("node-%d", i),
			Address: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080,
			Weights: model.Weights{Passing: 1 + gen%1000, Warning: 1}, Datacenter: "dc1",
		})
	}
	return svc
}

// BenchmarkFanout measures the push of one changed ClusterLoadAssignment
// to every stream watching it, against a baseline in the same run: the
// same push by a bare ADS server (bareADS) that does only what any gRPC
// server must to deliver it, so that the ratio tells what the Server adds
// to gRPC's own cost and the baseline tells what gRPC costs on this
// machine.
//
// Each side has N real ADS streams (TRELLIS_FANOUT_STREAMS, default 1,000;
// one connection each, as grpc-go clients; each side's streams take two
// file descriptors each in this process) over loopback, its own load
// generator ACKing as grpc-go does, and its own cache fed the same change.
// Each iteration pushes one change through each side, in alternating
// order, and waits for every stream of that side to receive it. Reported:
// each side's wall time per push and CPU per stream (server and generator
// together, on the same cores), and the ratio of the Server's wall time to
// the baseline's. In a CPU profile the goroutines carry the labels
// target=trellis or target=bare, and side=server or side=client
// (pprof -tagfocus).
func BenchmarkFanout(b *testing.B) {
	streams := 1000
	if v := os.Getenv("TRELLIS_FANOUT_STREAMS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TRELLIS_FANOUT_STREAMS=%q: accepted: a positive integer", v)
		}
		streams = n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	trellis := newFanoutSide(b, "trellis")
	var addr string
	// Goroutines inherit their creator's profiler labels: those of the
	// server's connections and streams come from Serve's, the generator's
	// from Add's.
	trellis.do(ctx, "server", func(context.Context) {
		_, addr = serveXDS(b, xdsserver.Config{Cache: trellis.cache})
	})
	trellis.open(ctx, addr, streams)

	bare := newFanoutSide(b, "bare")
	ads := &bareADS{cache: bare.cache}
	bare.do(ctx, "server", func(context.Context) { addr = ads.serve(b) })
	bare.open(ctx, addr, streams)
	bare.afterApply = ads.push

	sides := []*fanoutSide{trellis, bare}
	b.ResetTimer()
	for i := range b.N {
		for _, s := range sides {
			s.pushAndWait(ctx)
		}
		if i%2 == 0 {
			slices.Reverse(sides)
		}
	}
	b.StopTimer()
	for _, s := range sides {
		if err := s.lg.Err(); err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		if st := s.lg.Stats(); st.NACKs > 0 {
			b.Fatalf("%s: %d NACKs", s.name, st.NACKs)
		}
	}
	per := float64(b.N * streams)
	for _, s := range []*fanoutSide{trellis, bare} {
		b.ReportMetric(float64(s.wall.Milliseconds())/float64(b.N), s.name+"-ms/push")
		b.ReportMetric(float64(s.cpu.Microseconds())/per, s.name+"-cpu-µs/stream")
	}
	b.ReportMetric(float64(trellis.wall)/float64(bare.wall), "trellis/bare-ratio")
}

// fanoutSide is one server of BenchmarkFanout with its streams.
type fanoutSide struct {
	tb testing.TB
	// b is tb when it is a benchmark, whose timer is stopped around what
	// is not measured; nil in a test.
	b     *testing.B
	name  string
	tr    *translate.Translator
	cache *xdscache.Cache
	gen   int
	lg    *loadgen.Generator
	// afterApply, when set, runs after each change is applied to the
	// cache (the bare server's push).
	afterApply func() error
	// wall and cpu add up the measured pushes.
	wall, cpu time.Duration
}

func newFanoutSide(tb testing.TB, name string) *fanoutSide {
	b, _ := tb.(*testing.B)
	s := &fanoutSide{tb: tb, b: b, name: name, tr: translate.NewTranslator(translate.Options{}), cache: xdscache.New(xdscache.Config{})}
	s.apply()
	return s
}

// do runs f with the side's profiler labels.
func (s *fanoutSide) do(ctx context.Context, side string, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels("target", s.name, "side", side), f)
}

// apply translates the next change of the hot service into the cache.
func (s *fanoutSide) apply() {
	snap := &model.Snapshot{Services: map[string]*model.Service{"hot": fanoutService(s.gen)}}
	if r := s.cache.Apply(s.tr.Translate(translate.Input{Catalog: snap, Security: &translate.Security{}}).Resources.ByTypeURL()); r.Err != nil {
		s.tb.Fatal(r.Err)
	}
	s.gen++
}

// open starts n streams watching the hot service against addr and waits
// until each has ACKed every type.
func (s *fanoutSide) open(ctx context.Context, addr string, n int) {
	lg, err := loadgen.New(loadgen.Config{Target: addr, MaxEventsPerStream: 64})
	if err != nil {
		s.tb.Fatal(err)
	}
	s.tb.Cleanup(func() { _ = lg.Close() }) // a broken stream is reported by Err
	s.lg = lg
	names := make([]string, n)
	for i := range names {
		names[i] = "hot"
	}
	var addErr error
	s.do(ctx, "client", func(ctx context.Context) { addErr = lg.Add(ctx, names) })
	if addErr != nil {
		s.tb.Fatalf("%s: %v", s.name, addErr)
	}
	readyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := lg.WaitReady(readyCtx); err != nil {
		s.tb.Fatalf("%s: %v", s.name, err)
	}
}

// pushAndWait applies one change and waits for every stream of the side
// to receive the ClusterLoadAssignment it changes.
func (s *fanoutSide) pushAndWait(ctx context.Context) {
	if s.b != nil {
		s.b.StopTimer()
	}
	s.lg.ResetEvents()
	runtime.GC() // the other side's garbage is not this push's cost
	if s.b != nil {
		s.b.StartTimer()
	}
	at := s.lg.Now()
	cpu0 := processCPU(s.tb)
	start := time.Now()
	s.do(ctx, "server", func(context.Context) {
		s.apply()
		if s.afterApply != nil {
			if err := s.afterApply(); err != nil {
				s.tb.Fatalf("%s: %v", s.name, err)
			}
		}
	})
	streams := s.lg.Stats().Streams
	pending := make([]int, streams)
	for i := range pending {
		pending[i] = i
	}
	deadline := time.Now().Add(time.Minute)
	for len(pending) > 0 {
		rest := pending[:0]
		for _, k := range pending {
			if _, ok := s.lg.FirstAfter(k, loadgen.ClusterLoadAssignment, at); !ok {
				rest = append(rest, k)
			}
		}
		pending = rest
		if len(pending) > 0 {
			if time.Now().After(deadline) {
				s.tb.Fatalf("%s: %d of %d streams got no push within a minute", s.name, len(pending), streams)
			}
			time.Sleep(time.Millisecond)
		}
	}
	s.wall += time.Since(start)
	s.cpu += processCPU(s.tb) - cpu0
}

// bareADS is BenchmarkFanout's baseline: an ADS server that does only
// what any server must to push a change to its streams. It answers each
// new subscription with the cache's resources of those names, ignores
// ACKs, and pushes a change as one response, encoded once, sent to every
// stream subscribed to ClusterLoadAssignments. It keeps no watches, tracks
// no ACKs and checks no nonces: a floor for what gRPC itself costs, not a
// server to use.
type bareADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	cache *xdscache.Cache

	mu      sync.Mutex
	streams []*bareStream
}

type bareStream struct {
	// mu serializes Send between the stream's handler and push.
	mu        sync.Mutex
	ads       discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	endpoints bool
}

// serve serves the bare server on a loopback port until the benchmark
// ends, with the transport settings of xdsserver.Server, and returns its
// address.
func (a *bareADS) serve(tb testing.TB) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.SharedWriteBuffer(true),
		grpc.InitialWindowSize(64*1024),
		grpc.InitialConnWindowSize(64*1024),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, a)
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	tb.Cleanup(func() {
		gs.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			tb.Errorf("bare ADS: %v", err)
		}
	})
	return lis.Addr().String()
}

// response is the cache's resources of typeURL named in names.
func (a *bareADS) response(typeURL string, names []string) (*discoveryv3.DiscoveryResponse, error) {
	out := &discoveryv3.DiscoveryResponse{TypeUrl: typeURL}
	for _, name := range names {
		r, version, ok := a.cache.Resource(typeURL, name)
		if !ok {
			continue
		}
		packed, err := anypb.New(r)
		if err != nil {
			return nil, fmt.Errorf("pack %s %q: %w", typeURL, name, err)
		}
		out.VersionInfo = version
		out.Resources = append(out.Resources, packed)
	}
	// The version changes with every change, so it serves as the nonce.
	out.Nonce = out.VersionInfo
	return out, nil
}

// StreamAggregatedResources answers each request that names other
// resources than the last one of its type.
func (a *bareADS) StreamAggregatedResources(ads discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s := &bareStream{ads: ads}
	a.mu.Lock()
	a.streams = append(a.streams, s)
	a.mu.Unlock()
	subscribed := make(map[string][]string)
	for {
		req, err := ads.Recv()
		if err != nil {
			return nil // the stream ended
		}
		if names, ok := subscribed[req.GetTypeUrl()]; ok && slices.Equal(names, req.GetResourceNames()) {
			continue // an ACK
		}
		subscribed[req.GetTypeUrl()] = req.GetResourceNames()
		resp, err := a.response(req.GetTypeUrl(), req.GetResourceNames())
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.endpoints = s.endpoints || req.GetTypeUrl() == resource.EndpointType
		err = ads.Send(resp)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// push sends the hot service's ClusterLoadAssignment, encoded once, to
// every stream subscribed to load assignments, from one goroutine per
// core.
func (a *bareADS) push() error {
	a.mu.Lock()
	streams := slices.Clone(a.streams)
	a.mu.Unlock()
	if len(streams) == 0 {
		return nil
	}
	resp, err := a.response(resource.EndpointType, []string{"hot"})
	if err != nil {
		return err
	}
	var msg grpc.PreparedMsg
	if err := msg.Encode(streams[0].ads, resp); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	workers := runtime.GOMAXPROCS(0)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(streams); i += workers {
				s := streams[i]
				s.mu.Lock()
				if s.endpoints {
					if err := s.ads.SendMsg(&msg); err != nil && errs[w] == nil {
						errs[w] = fmt.Errorf("stream %d: %w", i, err)
					}
				}
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// processCPU is the user and system CPU time this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestFanoutBaseline checks that BenchmarkFanout compares like with like:
// the bare server and the Server deliver every push to every stream, with
// the same usable endpoints, and the streams ACK both without a NACK.
func TestFanoutBaseline(t *testing.T) {
	const streams = 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	trellis := newFanoutSide(t, "trellis")
	_, addr := serveXDS(t, xdsserver.Config{Cache: trellis.cache})
	trellis.open(ctx, addr, streams)
	bare := newFanoutSide(t, "bare")
	ads := &bareADS{cache: bare.cache}
	bare.open(ctx, ads.serve(t), streams)
	bare.afterApply = ads.push

	for _, s := range []*fanoutSide{trellis, bare} {
		for push := range 3 {
			at := s.lg.Now()
			s.pushAndWait(ctx)
			for k := range streams {
				ev, ok := s.lg.FirstAfter(k, loadgen.ClusterLoadAssignment, at)
				if !ok || ev.NACKed || ev.Endpoints != 10 {
					t.Fatalf("%s push %d stream %d: got %+v (found %v), want the load assignment with 10 usable endpoints, ACKed", s.name, push, k, ev, ok)
				}
			}
		}
		if err := s.lg.Err(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if st := s.lg.Stats(); st.NACKs > 0 || st.Failed > 0 {
			t.Fatalf("%s: %d NACKs, %d failed streams", s.name, st.NACKs, st.Failed)
		}
	}
}
