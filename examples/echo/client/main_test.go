package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	"google.golang.org/grpc/credentials/insecure"

	csdsv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"

	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeEcho answers as one named instance.
type fakeEcho struct {
	echov1.UnimplementedEchoServer
	id string
}

func (f fakeEcho) Echo(_ context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return &echov1.EchoResponse{Message: req.GetMessage(), InstanceId: f.id, Service: "echo"}, nil
}

// startEcho serves fakeEcho{id} on a loopback port until the test ends.
func startEcho(t *testing.T, id string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	echov1.RegisterEchoServer(srv, fakeEcho{id: id})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestRun(t *testing.T) {
	live := startEcho(t, "echo-a")
	dead := deadAddr(t)
	tests := []struct {
		name      string
		cfg       config
		wantErr   string   // substring; "" for success
		wantLines []string // regexps, each matching some output line
	}{
		{
			name: "summary",
			cfg:  config{Target: "passthrough:///" + live, Rate: 100, Count: 5},
			wantLines: []string{
				`^total: calls=5 ok=5 failed=0 by-instance: echo-a=5$`,
				`^distribution: echo-a=100%$`,
			},
		},
		{
			name: "each call",
			cfg:  config{Target: "passthrough:///" + live, Rate: 100, Count: 3, Each: true, RequireAllOK: true},
			wantLines: []string{
				`^t=\d+s instance=echo-a latency=`,
				`^total: calls=3 ok=3 failed=0 by-instance: echo-a=3$`,
			},
		},
		{
			name: "duration",
			cfg:  config{Target: "passthrough:///" + live, Rate: 20, Duration: 1500 * time.Millisecond},
			wantLines: []string{
				`^t=1s calls=\d+ ok=\d+ failed=0 by-instance: echo-a=\d+$`,
				`^total: calls=([1-9]|[1-3][0-9]) ok=([1-9]|[1-3][0-9]) failed=0 by-instance: echo-a=([1-9]|[1-3][0-9])$`,
			},
		},
		{
			name: "failures tolerated",
			cfg:  config{Target: "passthrough:///" + dead, Rate: 100, Count: 2},
			wantLines: []string{
				`^total: calls=2 ok=0 failed=2 by-instance: errors: Unavailable=2$`,
				`^distribution: none$`,
			},
		},
		{
			name:    "failures with require-all-ok",
			cfg:     config{Target: "passthrough:///" + dead, Rate: 100, Count: 2, RequireAllOK: true},
			wantErr: "2 of 2 calls failed",
			wantLines: []string{
				`^total: calls=2 ok=0 failed=2 `,
			},
		},
		{
			name:    "bad rate",
			cfg:     config{Target: "passthrough:///" + live, Rate: 0},
			wantErr: "--rate must be positive",
		},
		{
			name:    "bad count",
			cfg:     config{Target: "passthrough:///" + live, Rate: 1, Count: -1},
			wantErr: "--count must not be negative",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tt.cfg.Timeout = 2 * time.Second
			tt.cfg.Message = "hello"
			var out bytes.Buffer
			err := run(ctx, tt.cfg, &out)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("run: %v\noutput:\n%s", err, out.String())
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("run error = %v, want one containing %q", err, tt.wantErr)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			for _, want := range tt.wantLines {
				re := regexp.MustCompile(want)
				found := false
				for _, l := range lines {
					if re.MatchString(l) {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("no output line matches %q; output:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	live := startEcho(t, "echo-a")
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{Target: "passthrough:///" + live, Rate: 50, Timeout: 2 * time.Second}, &out)
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	if !strings.Contains(out.String(), "total: calls=") {
		t.Errorf("no final summary after cancel; output:\n%s", out.String())
	}
}

// TestRunServesAdmin checks that --admin-addr serves grpc/admin's CSDS and
// channelz while the client runs, and stops with it.
func TestRunServesAdmin(t *testing.T) {
	live := startEcho(t, "echo-a")
	admin := deadAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{Target: "passthrough:///" + live, Rate: 20, Timeout: 2 * time.Second, AdminAddr: admin}, &out)
	}()
	conn, err := grpc.NewClient(admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var lastErr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		_, lastErr = csdsv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(callCtx, &csdsv3.ClientStatusRequest{})
		if lastErr == nil {
			_, lastErr = channelzpb.NewChannelzClient(conn).GetTopChannels(callCtx, &channelzpb.GetTopChannelsRequest{})
		}
		callCancel()
		if lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("admin services on %s: %v", admin, lastErr)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if l, err := net.Listen("tcp", admin); err != nil {
		t.Errorf("admin address still taken after run returned: %v", err)
	} else {
		l.Close()
	}
}
