package dataplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/xds" // also registers the xds:/// resolver and balancers

	// The trellis_spiffe certificate provider named by the mTLS bootstraps.
	_ "github.com/trellis-mesh/trellis/identity/certprovider"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// Transport modes of the worker processes.
const (
	// ModePlain: plaintext, no xDS.
	ModePlain = "plain"
	// ModeTLS: mutual TLS with certificates from files, no xDS.
	ModeTLS = "tls"
	// ModeXDS: xds:/// on the client and xds.NewGRPCServer on the server,
	// with xDS credentials (mTLS when the control plane says so, plaintext
	// otherwise); the bootstrap comes from GRPC_XDS_BOOTSTRAP.
	ModeXDS = "xds"
)

// Lines a server worker prints on its standard output.
const (
	listeningLine = "listening "
	servingLine   = "serving"
)

// WorkerMain runs one worker process of the harness: "server" or "client"
// followed by its flags (see Run for how the harness drives them). Both stop
// when stdin is closed or ctx ends.
func WorkerMain(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("dataplane worker: want a role, server or client")
	}
	switch args[0] {
	case "server":
		return serverMain(ctx, args[1:], stdin, stdout)
	case "client":
		return clientMain(ctx, args[1:], stdin, stdout)
	default:
		return fmt.Errorf("dataplane worker: role %q: want server or client", args[0])
	}
}

// tlsFiles are the certificate files of ModeTLS.
type tlsFiles struct{ ca, cert, key string }

func (f *tlsFiles) flags(fs *flag.FlagSet) {
	fs.StringVar(&f.ca, "ca", "", "PEM CA certificate that signed the peer's certificate (tls mode)")
	fs.StringVar(&f.cert, "cert", "", "PEM certificate (tls mode)")
	fs.StringVar(&f.key, "key", "", "PEM private key (tls mode)")
}

// load reads the files: the key pair and a pool holding the CA.
func (f tlsFiles) load() (tls.Certificate, *x509.CertPool, error) {
	if f.ca == "" || f.cert == "" || f.key == "" {
		return tls.Certificate{}, nil, errors.New("tls mode needs --ca, --cert and --key")
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--cert/--key: %w", err)
	}
	pem, err := os.ReadFile(f.ca)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("--ca %s: no PEM certificate", f.ca)
	}
	return pair, pool, nil
}

// grpcServer is what the server worker needs of *grpc.Server and
// *xds.GRPCServer.
type grpcServer interface {
	grpc.ServiceRegistrar
	Serve(net.Listener) error
	Stop()
}

func serverMain(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	mode := fs.String("mode", ModePlain, "transport: plain, tls or xds")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	profileDir := fs.String("profile-dir", "", "on SIGUSR1 start a CPU profile, on SIGUSR2 write it to <dir>/profile-<n>.pprof")
	streamWorkers := fs.Uint("stream-workers", 0, "serve streams on this many reused goroutines (grpc.NumStreamWorkers); 0: a new goroutine per stream")
	var files tlsFiles
	files.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var srv grpcServer
	var opts []grpc.ServerOption
	if *streamWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(uint32(*streamWorkers)))
	}
	serving := make(chan struct{})
	switch *mode {
	case ModePlain:
		srv = grpc.NewServer(opts...)
		close(serving)
	case ModeTLS:
		pair, pool, err := files.load()
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		srv = grpc.NewServer(append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
		})))...)
		close(serving)
	case ModeXDS:
		creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return fmt.Errorf("server: xds credentials: %w", err)
		}
		var once sync.Once
		xsrv, err := xds.NewGRPCServer(append(opts, grpc.Creds(creds), xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				once.Do(func() { close(serving) })
			}
		}))...)
		if err != nil {
			return fmt.Errorf("server: xds server: %w", err)
		}
		srv = xsrv
	default:
		return fmt.Errorf("server: --mode %q: want %s, %s or %s", *mode, ModePlain, ModeTLS, ModeXDS)
	}
	registerServices(srv)
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("server: listen: %w", err)
	}
	if _, err := fmt.Fprintf(stdout, "%s%s\n", listeningLine, lis.Addr()); err != nil {
		lis.Close()
		return fmt.Errorf("server: %w", err)
	}
	if *profileDir != "" {
		stop := profileOnSignals(*profileDir)
		defer stop()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(stdinClosed)
	}()
	var err2 error
	select {
	case <-serving:
		if _, err := fmt.Fprintln(stdout, servingLine); err != nil {
			err2 = fmt.Errorf("server: %w", err)
		}
	case <-stdinClosed:
	case <-ctx.Done():
	}
	if err2 == nil {
		select {
		case <-stdinClosed:
		case <-ctx.Done():
		case err := <-serveErr:
			return fmt.Errorf("server: serve: %w", err)
		}
	}
	srv.Stop()
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: serve: %w", err)
	}
	return err2
}

// ClientReady is the first line a client worker prints: how its channel
// came up and what it cost.
type ClientReady struct {
	// ReadyAfter is the time from creating the channel to the end of the
	// first successful call.
	ReadyAfter time.Duration `json:"ready_after_ns"`
	// HeapBefore and HeapAfter are the live Go heap (after a GC) before the
	// channel was created and after its first call.
	HeapBefore uint64 `json:"heap_before"`
	HeapAfter  uint64 `json:"heap_after"`
	// RSSBefore and RSSAfter are the resident set at the same two points.
	RSSBefore int64 `json:"rss_before"`
	RSSAfter  int64 `json:"rss_after"`
	// Error, when set, means the channel never worked; the worker exits.
	Error string `json:"error,omitempty"`
}

// memory returns the live heap after a full GC, and the RSS.
func memory() (uint64, int64, error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	u, err := ReadUsage(os.Getpid())
	return ms.HeapAlloc, u.RSS, err
}

// readyTimeout bounds how long a channel may take to make its first call.
const readyTimeout = 60 * time.Second

func clientMain(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	mode := fs.String("mode", ModePlain, "transport: plain, tls or xds")
	target := fs.String("target", "", "server address (plain, tls) or xds:///<service> (xds)")
	serverName := fs.String("server-name", "", "host name the server's certificate must carry (tls mode)")
	var files tlsFiles
	files.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("client: --target is required")
	}
	var creds credentials.TransportCredentials
	switch *mode {
	case ModePlain:
		creds = insecure.NewCredentials()
	case ModeTLS:
		pair, pool, err := files.load()
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: *serverName})
	case ModeXDS:
		var err error
		creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return fmt.Errorf("client: xds credentials: %w", err)
		}
	default:
		return fmt.Errorf("client: --mode %q: want %s, %s or %s", *mode, ModePlain, ModeTLS, ModeXDS)
	}
	enc := json.NewEncoder(stdout)
	var ready ClientReady
	var err error
	if ready.HeapBefore, ready.RSSBefore, err = memory(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	start := time.Now()
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("client: dial %s: %w", *target, err)
	}
	defer conn.Close()
	if err := firstCall(ctx, conn); err != nil {
		ready.Error = err.Error()
		if encErr := enc.Encode(ready); encErr != nil {
			return errors.Join(err, encErr)
		}
		return fmt.Errorf("client: %w", err)
	}
	ready.ReadyAfter = time.Since(start)
	if ready.HeapAfter, ready.RSSAfter, err = memory(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := enc.Encode(ready); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	// One Load per input line, one LoadResult per output line.
	in := bufio.NewScanner(stdin)
	for in.Scan() {
		var l Load
		if err := json.Unmarshal(in.Bytes(), &l); err != nil {
			return fmt.Errorf("client: load %q: %w", in.Text(), err)
		}
		stopProfile, err := startProfile(l.Profile)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		res, err := RunLoad(ctx, conn, l)
		if perr := stopProfile(); perr != nil {
			return fmt.Errorf("client: %w", perr)
		}
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("client: %w", err)
		}
	}
	return in.Err()
}

// firstCall calls until one call succeeds: an xDS channel needs its
// configuration first, and a new server may not serve yet.
func firstCall(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := echov1.NewEchoClient(conn)
	for {
		callCtx, callCancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := client.Echo(callCtx, &echov1.EchoRequest{Message: payload})
		callCancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no successful call within %s: last error: %w", readyTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
