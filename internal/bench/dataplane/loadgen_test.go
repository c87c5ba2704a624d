package dataplane

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// startInProcess serves the benchmark services on loopback.
func startInProcess(t *testing.T) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	registerServices(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestRunLoad(t *testing.T) {
	conn := startInProcess(t)
	tests := []struct {
		load Load
		// wantAtLeast is a lower bound on the calls that any machine makes.
		wantAtLeast uint64
	}{
		{Load{Kind: KindClosed, Concurrency: 4, Duration: 300 * time.Millisecond}, 4},
		{Load{Kind: KindStream, Concurrency: 3, Duration: 300 * time.Millisecond}, 3},
		{Load{Kind: KindOpen, Rate: 200, Duration: 500 * time.Millisecond}, 90},
	}
	for _, tt := range tests {
		t.Run(tt.load.Name(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := RunLoad(ctx, conn, tt.load)
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 || res.FirstError != "" {
				t.Fatalf("%d errors, first %q", res.Errors, res.FirstError)
			}
			if res.Calls < tt.wantAtLeast {
				t.Errorf("%d calls, want at least %d", res.Calls, tt.wantAtLeast)
			}
			h, err := res.Latency.Decode()
			if err != nil {
				t.Fatal(err)
			}
			if h.Count() != res.Calls {
				t.Errorf("latency histogram holds %d calls, want %d", h.Count(), res.Calls)
			}
			// The phase's deadline is set just before its clock starts, so
			// the measured time may fall short of it by that much.
			if res.Elapsed < tt.load.Duration*95/100 {
				t.Errorf("elapsed %s, shorter than the phase's %s", res.Elapsed, tt.load.Duration)
			}
			if tt.load.Kind == KindOpen {
				// An open loop starts its calls on schedule, whatever the
				// latency: one every 5 ms for 500 ms.
				if res.Calls > 101 {
					t.Errorf("%d calls at 200/s over 500ms, want at most 101", res.Calls)
				}
			}
		})
	}
}

func TestRunLoadCountsFailures(t *testing.T) {
	// Nothing listens on a closed port: every call fails, none is counted
	// as a success, and the error says why.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	res, err := RunLoad(context.Background(), conn, Load{Kind: KindOpen, Rate: 100, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls != 0 || res.Errors == 0 || res.FirstError == "" {
		t.Errorf("calls %d, errors %d, first error %q: want only failures", res.Calls, res.Errors, res.FirstError)
	}
}

func TestLoadValidation(t *testing.T) {
	for _, l := range []Load{
		{Kind: "burst", Concurrency: 1, Duration: time.Second},
		{Kind: KindOpen, Duration: time.Second},
		{Kind: KindClosed, Duration: time.Second},
		{Kind: KindStream, Concurrency: 1},
	} {
		if _, err := RunLoad(context.Background(), nil, l); err == nil {
			t.Errorf("RunLoad(%+v) accepted an invalid load", l)
		}
	}
}
