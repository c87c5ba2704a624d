// Command echo-client calls the example Echo service at a steady rate and
// shows which instances answer, so that load balancing and failover by the
// mesh can be watched.
//
// It dials xds:///echo by default: importing google.golang.org/grpc/xds is all
// a gRPC client needs to take its endpoints and load-balancing configuration
// from Trellis, given a bootstrap file named by GRPC_XDS_BOOTSTRAP (written
// by `trellis bootstrap`). Any other gRPC target works too, e.g.
// dns:///127.0.0.1:50051 to call one server directly.
//
// Every second it prints one line:
//
//	t=3s calls=5 ok=5 failed=0 by-instance: echo-1=2 echo-2=2 echo-3=1
//
// and at the end the calls answered after the last full second (t=end), the
// totals and the distribution over the whole run.
//
// With --admin-addr it also serves gRPC's admin services (grpc/admin:
// channelz, and CSDS since grpc/xds is imported), so that `trellis status
// --csds` can read what its xDS client holds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/admin"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	// The trellis_spiffe certificate provider: with a bootstrap from
	// `trellis bootstrap --spiffe`, xDS credentials take this workload's
	// SPIFFE identity from the Workload API, in process.
	_ "github.com/trellis-mesh/trellis/identity/certprovider"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// config is the client's command line.
type config struct {
	// Target is the gRPC dial target. Default: xds:///echo.
	Target string
	// Rate is the number of calls started per second. Default: 5.
	Rate float64
	// Count stops after this many calls; 0 means no limit. Default: 0.
	Count int
	// Duration stops after this long; 0 means no limit. Default: 0.
	Duration time.Duration
	// Timeout bounds each call. Default: 2s.
	Timeout time.Duration
	// Message is sent in every request. Default: hello.
	Message string
	// Each prints one line per call instead of one per second.
	// Default: false.
	Each bool
	// RequireAllOK makes the exit status 1 when any call failed (or none
	// was made). Default: false.
	RequireAllOK bool
	// XDSCreds uses xDS client credentials (mTLS as configured by the
	// control plane, plaintext otherwise) instead of plaintext.
	// Default: false.
	XDSCreds bool
	// AdminAddr, when set, serves gRPC's admin services (channelz and
	// CSDS, grpc/admin) in plaintext on this address, for `trellis status
	// --csds`. Default: none.
	AdminAddr string
}

func main() {
	var cfg config
	fs := flag.NewFlagSet("echo-client", flag.ExitOnError)
	fs.StringVar(&cfg.Target, "target", "xds:///echo", "gRPC target to dial")
	fs.Float64Var(&cfg.Rate, "rate", 5, "calls per second")
	fs.IntVar(&cfg.Count, "count", 0, "stop after this many calls (0: no limit)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop after this long (0: no limit)")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Second, "deadline of each call")
	fs.StringVar(&cfg.Message, "message", "hello", "message to send")
	fs.BoolVar(&cfg.Each, "each", false, "print one line per call instead of a summary per second")
	fs.BoolVar(&cfg.RequireAllOK, "require-all-ok", false, "exit 1 if any call failed or none was made")
	fs.BoolVar(&cfg.XDSCreds, "xds-creds", false, "use xDS credentials (mTLS when the control plane configures it)")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "", "serve gRPC's admin services (channelz, CSDS) in plaintext on this address, e.g. 127.0.0.1:50100, for trellis status --csds")
	_ = fs.Parse(os.Args[1:]) // ExitOnError: Parse exits on a bad flag.

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "echo-client")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	if cfg.Rate <= 0 {
		return fmt.Errorf("--rate must be positive, got %v", cfg.Rate)
	}
	if cfg.Count < 0 {
		return fmt.Errorf("--count must not be negative, got %d", cfg.Count)
	}
	if cfg.AdminAddr != "" {
		stopAdmin, err := serveAdmin(cfg.AdminAddr)
		if err != nil {
			return err
		}
		defer stopAdmin()
	}
	creds := insecure.NewCredentials()
	if cfg.XDSCreds {
		var err error
		creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return fmt.Errorf("xds client credentials: %w", err)
		}
	}
	conn, err := grpc.NewClient(cfg.Target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("dial %s: %w", cfg.Target, err)
	}
	defer conn.Close()
	client := echov1.NewEchoClient(conn)

	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	var (
		total, window stats
		reported      bool       // a per-second line was printed
		mu            sync.Mutex // guards total, window, reported and writes to out
		wg            sync.WaitGroup
	)
	start := time.Now()
	record := func(instance, seenAs string, err error, latency time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		total.add(instance, err)
		window.add(instance, err)
		if cfg.Each {
			if err != nil {
				fmt.Fprintf(out, "t=%s error: %s\n", since(start), errSummary(err))
			} else {
				line := fmt.Sprintf("t=%s instance=%s latency=%s", since(start), instance, latency.Round(time.Microsecond))
				if seenAs != "" {
					line += " seen-as=" + seenAs // the caller's SPIFFE ID, as the server saw it over mTLS
				}
				fmt.Fprintln(out, line)
			}
		}
	}

	calls := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	defer calls.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	started := 0
	startCall := func() {
		started++
		wg.Go(func() {
			// A call in flight when the run ends is finished, not
			// cancelled: its answer counts.
			callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Timeout)
			defer cancel()
			t0 := time.Now()
			resp, err := client.Echo(callCtx, &echov1.EchoRequest{Message: cfg.Message})
			record(resp.GetInstanceId(), resp.GetPeerIdentity(), err, time.Since(t0))
		})
	}
	startCall() // the first call goes out at once, then one per tick
loop:
	for cfg.Count == 0 || started < cfg.Count {
		select {
		case <-ctx.Done():
			break loop
		case <-calls.C:
			startCall()
		case <-report.C:
			if !cfg.Each {
				mu.Lock()
				fmt.Fprintf(out, "t=%s %s\n", since(start), window.String())
				window = stats{}
				reported = true
				mu.Unlock()
			}
		}
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if !cfg.Each && reported && window.calls > 0 {
		// Calls answered after the last full second.
		fmt.Fprintf(out, "t=end %s\n", window.String())
	}
	fmt.Fprintf(out, "total: %s\n", total.String())
	fmt.Fprintf(out, "distribution:%s\n", total.distribution())
	if cfg.RequireAllOK {
		if total.calls == 0 {
			return errors.New("no call was made")
		}
		if total.failed > 0 {
			return fmt.Errorf("%d of %d calls failed", total.failed, total.calls)
		}
	}
	return nil
}

// serveAdmin serves grpc/admin (channelz, and CSDS since grpc/xds is
// imported) on addr until the returned function is called.
func serveAdmin(addr string) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--admin-addr: %w", err)
	}
	srv := grpc.NewServer()
	cleanup, err := admin.Register(srv)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("register admin services: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis) // returns when stopped
	}()
	return func() {
		srv.Stop()
		<-done
		cleanup()
	}, nil
}

// since formats the time since start in whole seconds, as the per-second
// lines count them.
func since(start time.Time) string {
	return time.Since(start).Truncate(time.Second).String()
}

// stats counts calls by answering instance and failures by status code.
type stats struct {
	calls, ok, failed int
	byInstance        map[string]int
	byError           map[string]int
}

func (s *stats) add(instance string, err error) {
	s.calls++
	if err != nil {
		s.failed++
		if s.byError == nil {
			s.byError = map[string]int{}
		}
		s.byError[status.Code(err).String()]++
		return
	}
	s.ok++
	if s.byInstance == nil {
		s.byInstance = map[string]int{}
	}
	s.byInstance[instance]++
}

// String is "calls=N ok=N failed=N by-instance: a=N b=N [errors: Code=N]".
func (s *stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "calls=%d ok=%d failed=%d by-instance:", s.calls, s.ok, s.failed)
	for _, k := range sortedKeys(s.byInstance) {
		fmt.Fprintf(&b, " %s=%d", k, s.byInstance[k])
	}
	if len(s.byError) > 0 {
		b.WriteString(" errors:")
		for _, k := range sortedKeys(s.byError) {
			fmt.Fprintf(&b, " %s=%d", k, s.byError[k])
		}
	}
	return b.String()
}

// distribution is each instance's share of the successful calls.
func (s *stats) distribution() string {
	if s.ok == 0 {
		return " none"
	}
	var b strings.Builder
	for _, k := range sortedKeys(s.byInstance) {
		fmt.Fprintf(&b, " %s=%.0f%%", k, 100*float64(s.byInstance[k])/float64(s.ok))
	}
	return b.String()
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// errSummary is the status code and message of a failed call.
func errSummary(err error) string {
	st := status.Convert(err)
	return st.Code().String() + ": " + st.Message()
}
