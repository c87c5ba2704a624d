package xdsserver_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

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
// to every stream watching it: N real ADS streams (TRELLIS_FANOUT_STREAMS,
// default 1,000; one connection each, as grpc-go clients) over loopback,
// the load generator ACKing as grpc-go does. Each iteration applies one
// change and waits for every stream to receive it. Reported per stream:
// the wall time of the whole push and the CPU of the process (server and
// generator together, on the same cores). In a CPU profile of the
// benchmark the server's goroutines carry the label side=server and the
// generator's side=client (pprof -tagfocus side=server); the rest is the
// runtime (garbage collection) and the benchmark's own polling.
func BenchmarkFanout(b *testing.B) {
	streams := 1000
	if v := os.Getenv("TRELLIS_FANOUT_STREAMS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TRELLIS_FANOUT_STREAMS=%q: accepted: a positive integer", v)
		}
		streams = n
	}
	tr := translate.NewTranslator(translate.Options{})
	sec := &translate.Security{}
	c := xdscache.New(xdscache.Config{})
	gen := 0
	apply := func() {
		snap := &model.Snapshot{Services: map[string]*model.Service{"hot": fanoutService(gen)}}
		if r := c.Apply(tr.Translate(translate.Input{Catalog: snap, Security: sec}).Resources.ByTypeURL()); r.Err != nil {
			b.Fatal(r.Err)
		}
		gen++
	}
	apply()
	// Goroutines inherit their creator's profiler labels: those of the
	// server's connections and streams come from Serve's, the generator's
	// from Add's.
	var addr string
	pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) {
		_, addr = serveXDS(b, xdsserver.Config{Cache: c})
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lg, err := loadgen.New(loadgen.Config{Target: addr, MaxEventsPerStream: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer lg.Close()
	names := make([]string, streams)
	for i := range names {
		names[i] = "hot"
	}
	var addErr error
	pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) { addErr = lg.Add(ctx, names) })
	if err := addErr; err != nil {
		b.Fatal(err)
	}
	readyCtx, readyCancel := context.WithTimeout(ctx, 2*time.Minute)
	defer readyCancel()
	if err := lg.WaitReady(readyCtx); err != nil {
		b.Fatal(err)
	}

	var wall time.Duration
	cpu0 := processCPU(b)
	b.ResetTimer()
	for range b.N {
		lg.ResetEvents()
		at := lg.Now()
		start := time.Now()
		apply()
		pending := make([]int, streams)
		for i := range pending {
			pending[i] = i
		}
		deadline := time.Now().Add(time.Minute)
		for len(pending) > 0 {
			rest := pending[:0]
			for _, k := range pending {
				if _, ok := lg.FirstAfter(k, loadgen.ClusterLoadAssignment, at); !ok {
					rest = append(rest, k)
				}
			}
			pending = rest
			if len(pending) > 0 {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d streams got no push within a minute", len(pending), streams)
				}
				time.Sleep(time.Millisecond)
			}
		}
		wall += time.Since(start)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	if err := lg.Err(); err != nil {
		b.Fatal(err)
	}
	if st := lg.Stats(); st.NACKs > 0 {
		b.Fatalf("%d NACKs", st.NACKs)
	}
	per := float64(b.N * streams)
	b.ReportMetric(float64(wall.Microseconds())/per, "wall-µs/stream")
	b.ReportMetric(float64(cpu.Microseconds())/per, "cpu-µs/stream")
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N), "ms/push")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
