package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// Load kinds.
const (
	// KindClosed keeps Concurrency unary calls in flight: a call starts as
	// soon as the previous one of its slot ends.
	KindClosed = "closed"
	// KindOpen starts unary calls at a fixed Rate whatever the latency, and
	// measures each from the time it was meant to start, so that queueing
	// in the client shows in the latency (no coordinated omission).
	KindOpen = "open"
	// KindStream keeps Concurrency bidirectional streams, each sending one
	// message at a time and waiting for its answer.
	KindStream = "stream"
)

// Load is one measured phase of a client.
type Load struct {
	Kind string `json:"kind"`
	// Concurrency is the number of calls (KindClosed) or streams
	// (KindStream) in flight.
	Concurrency int `json:"concurrency,omitempty"`
	// Rate is the number of calls started per second (KindOpen).
	Rate int `json:"rate,omitempty"`
	// Duration is how long the phase runs.
	Duration time.Duration `json:"duration_ns"`
	// Profile, when set, is the file that receives a CPU profile of the
	// client during the phase.
	Profile string `json:"profile,omitempty"`
}

// Name is a short label of the load, such as "closed-16" or "open-1000".
func (l Load) Name() string {
	if l.Kind == KindOpen {
		return fmt.Sprintf("%s-%d", l.Kind, l.Rate)
	}
	return fmt.Sprintf("%s-%d", l.Kind, l.Concurrency)
}

func (l Load) validate() error {
	switch {
	case l.Kind != KindClosed && l.Kind != KindOpen && l.Kind != KindStream:
		return fmt.Errorf("load kind %q: want %s, %s or %s", l.Kind, KindClosed, KindOpen, KindStream)
	case l.Kind == KindOpen && l.Rate <= 0:
		return fmt.Errorf("load %s: rate %d: want at least 1 call/s", l.Kind, l.Rate)
	case l.Kind != KindOpen && l.Concurrency <= 0:
		return fmt.Errorf("load %s: concurrency %d: want at least 1", l.Kind, l.Concurrency)
	case l.Duration <= 0:
		return fmt.Errorf("load %s: duration %s: want more than 0", l.Name(), l.Duration)
	}
	return nil
}

// LoadResult is what a client measured during one Load.
type LoadResult struct {
	// Calls counts successful calls (stream messages for KindStream).
	Calls uint64 `json:"calls"`
	// Errors counts failed calls; FirstError is the first failure's text.
	Errors     uint64 `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// Elapsed is the measured time, from the first call's start to the end
	// of the phase.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Latency holds the latency of every successful call.
	Latency EncodedHistogram `json:"latency"`
}

// callTimeout bounds each call: a call that takes longer is an error.
const callTimeout = 10 * time.Second

// maxOutstanding bounds the calls an open loop keeps in flight; a call
// due while that many are outstanding is counted as an error.
const maxOutstanding = 20000

// payload is the message of every call: 32 bytes.
var payload = strings.Repeat("p", 32)

// recorder collects results from concurrent callers.
type recorder struct {
	mu       sync.Mutex
	hist     Histogram
	calls    uint64
	errors   uint64
	firstErr error
}

func (r *recorder) merge(h *Histogram, calls, errs uint64, firstErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hist.Merge(h)
	r.calls += calls
	r.errors += errs
	if r.firstErr == nil {
		r.firstErr = firstErr
	}
}

func (r *recorder) result(elapsed time.Duration) LoadResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := LoadResult{Calls: r.calls, Errors: r.errors, Elapsed: elapsed, Latency: r.hist.Encode()}
	if r.firstErr != nil {
		res.FirstError = r.firstErr.Error()
	}
	return res
}

// RunLoad runs l against conn and returns what it measured. Cancelling ctx
// ends the phase early.
func RunLoad(ctx context.Context, conn grpc.ClientConnInterface, l Load) (LoadResult, error) {
	if err := l.validate(); err != nil {
		return LoadResult{}, fmt.Errorf("dataplane: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, l.Duration)
	defer cancel()
	switch l.Kind {
	case KindClosed:
		return runClosed(ctx, echov1.NewEchoClient(conn), l.Concurrency), nil
	case KindOpen:
		return runOpen(ctx, echov1.NewEchoClient(conn), l.Rate), nil
	default:
		return runStreams(ctx, conn, l.Concurrency), nil
	}
}

// call makes one unary call, bounded by callTimeout but not by the phase's
// end: a call started in the phase is waited for.
func call(client echov1.EchoClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := client.Echo(ctx, &echov1.EchoRequest{Message: payload})
	return err
}

func runClosed(ctx context.Context, client echov1.EchoClient, concurrency int) LoadResult {
	var rec recorder
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			var h Histogram
			var calls, errs uint64
			var firstErr error
			for ctx.Err() == nil {
				t0 := time.Now()
				if err := call(client); err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				h.Record(time.Since(t0))
				calls++
			}
			rec.merge(&h, calls, errs, firstErr)
		})
	}
	wg.Wait()
	return rec.result(time.Since(start))
}

func runOpen(ctx context.Context, client echov1.EchoClient, rate int) LoadResult {
	var rec recorder
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	sem := make(chan struct{}, maxOutstanding)
	start := time.Now()
	errFull := fmt.Errorf("%d calls outstanding: the client cannot keep up with %d calls/s", maxOutstanding, rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := 0; ctx.Err() == nil; {
		now := time.Now()
		// Start every call that is due, each timed from when it was due.
		for due := start.Add(time.Duration(i) * interval); !due.After(now); due = start.Add(time.Duration(i) * interval) {
			i++
			select {
			case sem <- struct{}{}:
			default:
				rec.merge(nil, 0, 1, errFull)
				continue
			}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := call(client); err != nil {
					rec.merge(nil, 0, 1, err)
					return
				}
				var h Histogram
				h.Record(time.Since(due))
				rec.merge(&h, 1, 0, nil)
			})
		}
		timer.Reset(time.Until(start.Add(time.Duration(i) * interval)))
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
	}
	wg.Wait()
	return rec.result(time.Since(start))
}

// streamDesc describes the PingPong stream for ClientConn.NewStream.
var streamDesc = &grpc.StreamDesc{StreamName: streamMethod, ServerStreams: true, ClientStreams: true}

func runStreams(ctx context.Context, conn grpc.ClientConnInterface, concurrency int) LoadResult {
	var rec recorder
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			var h Histogram
			calls, err := pingPongUntil(ctx, conn, &h)
			var errs uint64
			if err != nil {
				errs = 1
			}
			rec.merge(&h, calls, errs, err)
		})
	}
	wg.Wait()
	return rec.result(time.Since(start))
}

// pingPongUntil opens one stream and exchanges messages on it until ctx
// ends, then closes it cleanly.
func pingPongUntil(ctx context.Context, conn grpc.ClientConnInterface, h *Histogram) (uint64, error) {
	streamCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := conn.NewStream(streamCtx, streamDesc, streamPath)
	if err != nil {
		return 0, fmt.Errorf("open stream: %w", err)
	}
	var calls uint64
	req := &echov1.EchoRequest{Message: payload}
	for ctx.Err() == nil {
		t0 := time.Now()
		if err := stream.SendMsg(req); err != nil {
			return calls, fmt.Errorf("stream send: %w", err)
		}
		if err := stream.RecvMsg(new(echov1.EchoResponse)); err != nil {
			return calls, fmt.Errorf("stream receive: %w", err)
		}
		h.Record(time.Since(t0))
		calls++
	}
	if err := stream.CloseSend(); err != nil {
		return calls, fmt.Errorf("stream close: %w", err)
	}
	if err := stream.RecvMsg(new(echov1.EchoResponse)); err != nil && !errors.Is(err, io.EOF) {
		return calls, fmt.Errorf("stream end: %w", err)
	}
	return calls, nil
}
