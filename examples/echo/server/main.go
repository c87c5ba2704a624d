// Command echo-server is the example workload of Trellis: a gRPC service that
// answers every call with its own instance ID, registers itself in Consul with
// a gRPC health check, and deregisters before it stops.
//
// It is meant to be copied. The parts a real service keeps are the Consul
// registration (registration.go), the standard gRPC health service that the
// Consul check calls, and the shutdown order: mark the health service NOT_SERVING,
// deregister from Consul, then drain in-flight calls with GracefulStop.
//
// Usage:
//
//	echo-server --listen 127.0.0.1:50051 --instance-id echo-1
//
// Consul is found the way Consul's own tools find it (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), or with --consul-addr. With --xds the
// server is created by xds.NewGRPCServer and takes its listener configuration
// (and mTLS, when configured) from the control plane named in the
// GRPC_XDS_BOOTSTRAP file. With --admin-addr it serves gRPC's admin services
// (grpc/admin: channelz and CSDS) on a separate plaintext listener, for
// `trellis status --csds`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/admin"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/xds"

	// The trellis_spiffe certificate provider: with a bootstrap from
	// `trellis bootstrap --spiffe`, xDS credentials take this workload's
	// SPIFFE identity from the Workload API, in process.
	_ "github.com/trellis-mesh/trellis/identity/certprovider"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// config is the server's command line.
type config struct {
	// Listen is the address to listen on. Default: 127.0.0.1:50051.
	Listen string
	// InstanceID identifies this instance in replies and is its Consul
	// service ID. Default: <hostname>-<port>.
	InstanceID string
	// Service is the Consul service name, the name clients dial
	// (xds:///echo). Default: echo.
	Service string
	// ConsulRegister registers the instance in Consul. Default: true.
	ConsulRegister bool
	// ConsulAddr overrides the Consul HTTP address. Default: CONSUL_HTTP_ADDR,
	// else 127.0.0.1:8500.
	ConsulAddr string
	// CheckInterval is how often Consul runs the gRPC health check.
	// Default: 2s.
	CheckInterval time.Duration
	// AdvertiseAddress is the host:port registered in Consul. Default: the
	// listener's address (which must then be a specific IP).
	AdvertiseAddress string
	// Zone is registered as the instance's "zone" metadata, which Trellis
	// maps to the endpoint's locality. Default: none.
	Zone string
	// Meta is more service metadata to register, e.g. version=v2 for
	// policies that select subsets. Default: none.
	Meta map[string]string
	// HealthListen, when set, serves the gRPC health service on its own
	// plaintext listener, and Consul's check calls it there: with mTLS on
	// the main port, Consul (which has no SVID) cannot call it. Default:
	// none (health on the main port).
	HealthListen string
	// XDS creates the server with xds.NewGRPCServer and xDS credentials.
	// Default: false.
	XDS bool
	// ShutdownTimeout bounds how long GracefulStop may wait for in-flight
	// calls before the server is stopped hard. Default: 10s.
	ShutdownTimeout time.Duration
	// AdminAddr, when set, serves gRPC's admin services (channelz and
	// CSDS, grpc/admin) in plaintext on this address, for `trellis status
	// --csds`. Default: none.
	AdminAddr string
}

func main() {
	var cfg config
	fs := flag.NewFlagSet("echo-server", flag.ExitOnError)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:50051", "address to listen on (host:port; port 0 picks a free one)")
	fs.StringVar(&cfg.InstanceID, "instance-id", "", "instance ID, also the Consul service ID (default <hostname>-<port>)")
	fs.StringVar(&cfg.Service, "service", "echo", "Consul service name; clients dial xds:///<service>")
	fs.BoolVar(&cfg.ConsulRegister, "consul-register", true, "register the instance in Consul")
	fs.StringVar(&cfg.ConsulAddr, "consul-addr", "", "Consul HTTP address (default CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	fs.DurationVar(&cfg.CheckInterval, "check-interval", 2*time.Second, "interval of the Consul gRPC health check")
	fs.StringVar(&cfg.AdvertiseAddress, "advertise-address", "", "host:port to register in Consul (default: the listen address)")
	fs.StringVar(&cfg.Zone, "zone", "", `zone registered as the instance's "zone" metadata`)
	fs.Func("meta", "service metadata key=value to register (repeatable), e.g. version=v2", func(kv string) error {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("want key=value, got %q", kv)
		}
		if cfg.Meta == nil {
			cfg.Meta = map[string]string{}
		}
		cfg.Meta[k] = v
		return nil
	})
	fs.StringVar(&cfg.HealthListen, "health-listen", "", "serve the gRPC health service, and Consul's check, on this separate plaintext address (for mTLS servers)")
	fs.BoolVar(&cfg.XDS, "xds", false, "create the server with xds.NewGRPCServer (needs GRPC_XDS_BOOTSTRAP)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long to drain in-flight calls on shutdown")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "", "serve gRPC's admin services (channelz, CSDS) in plaintext on this address, e.g. 127.0.0.1:50101, for trellis status --csds")
	_ = fs.Parse(os.Args[1:]) // ExitOnError: Parse exits on a bad flag.

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "echo-server")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

// grpcServer is what run needs from a gRPC server; both *grpc.Server and
// *xds.GRPCServer provide it.
type grpcServer interface {
	reflection.GRPCServer
	Serve(net.Listener) error
	GracefulStop()
	Stop()
}

var (
	_ grpcServer = (*grpc.Server)(nil)
	_ grpcServer = (*xds.GRPCServer)(nil)
)

// newGRPCServer creates the gRPC server: a plain one, or with --xds one whose
// listener configuration and credentials come from the xDS control plane.
func newGRPCServer(cfg config, logger *slog.Logger) (grpcServer, error) {
	if !cfg.XDS {
		return grpc.NewServer(), nil
	}
	// xDS credentials use the certificates the control plane names, and fall
	// back to plaintext when it names none.
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return nil, fmt.Errorf("xds server credentials: %w", err)
	}
	return xds.NewGRPCServer(
		grpc.Creds(creds),
		xds.ServingModeCallback(func(addr net.Addr, args xds.ServingModeChangeArgs) {
			logger.Info("xds serving mode changed", "address", addr.String(), "mode", args.Mode.String(), "err", args.Err)
		}),
	)
}

func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := lis.Addr().(*net.TCPAddr)
	advertise, err := advertiseAddress(cfg.AdvertiseAddress, addr)
	if err != nil {
		lis.Close()
		return err
	}
	if cfg.InstanceID == "" {
		host, err := os.Hostname()
		if err != nil {
			lis.Close()
			return fmt.Errorf("default --instance-id: %w", err)
		}
		cfg.InstanceID = host + "-" + strconv.Itoa(addr.Port)
	}

	srv, err := newGRPCServer(cfg, logger)
	if err != nil {
		lis.Close()
		return err
	}
	echov1.RegisterEchoServer(srv, &echoServer{instanceID: cfg.InstanceID, service: cfg.Service})
	healthSrv := health.NewServer() // reports SERVING for "" from the start
	healthSrv.SetServingStatus(echov1.Echo_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, healthSrv)
	reflection.Register(srv)

	// Consul checks the health service: on the main port, or on its own
	// plaintext port with --health-listen.
	checkAddr := advertise
	var healthOnly *grpc.Server
	var healthLis net.Listener
	if cfg.HealthListen != "" {
		healthLis, err = net.Listen("tcp", cfg.HealthListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("health listen: %w", err)
		}
		host, _, _ := net.SplitHostPort(advertise)
		checkAddr = net.JoinHostPort(host, strconv.Itoa(healthLis.Addr().(*net.TCPAddr).Port))
		healthOnly = grpc.NewServer()
		healthpb.RegisterHealthServer(healthOnly, healthSrv)
	}

	var reg *registration
	if cfg.ConsulRegister {
		reg, err = newRegistration(cfg, advertise, checkAddr)
		if err != nil {
			lis.Close()
			if healthLis != nil {
				healthLis.Close()
			}
			return err
		}
	}

	var adminSrv *grpc.Server
	var adminLis net.Listener
	if cfg.AdminAddr != "" {
		if adminLis, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			lis.Close()
			if healthLis != nil {
				healthLis.Close()
			}
			return fmt.Errorf("--admin-addr: %w", err)
		}
		adminSrv = grpc.NewServer()
		cleanup, err := admin.Register(adminSrv)
		if err != nil {
			lis.Close()
			adminLis.Close()
			if healthLis != nil {
				healthLis.Close()
			}
			return fmt.Errorf("register admin services: %w", err)
		}
		defer cleanup()
	}

	g, gctx := errgroup.WithContext(ctx)
	if adminSrv != nil {
		g.Go(func() error {
			if err := adminSrv.Serve(adminLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("serve admin: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			adminSrv.Stop()
			return nil
		})
	}
	if healthOnly != nil {
		g.Go(func() error {
			if err := healthOnly.Serve(healthLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("serve health: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			healthOnly.Stop()
			return nil
		})
	}
	serveDone := make(chan struct{})
	g.Go(func() error {
		defer close(serveDone)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if reg != nil {
			regCtx, cancel := context.WithTimeout(gctx, 10*time.Second)
			err := reg.register(regCtx)
			cancel()
			if err != nil {
				srv.Stop()
				if gctx.Err() != nil {
					return nil // interrupted while starting
				}
				return err
			}
		}
		logger.Info("serving",
			"address", addr.String(), "advertise", advertise, "instance_id", cfg.InstanceID,
			"service", cfg.Service, "consul_registered", reg != nil, "xds", cfg.XDS)

		<-gctx.Done()
		logger.Info("shutting down", "instance_id", cfg.InstanceID)
		// Leave the mesh before closing the listener: report NOT_SERVING to
		// health watchers and deregister from Consul, so that clients move
		// away while calls still arriving are served; then drain.
		healthSrv.Shutdown()
		var deregErr error
		if reg != nil {
			deregCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			deregErr = reg.deregister(deregCtx)
			cancel()
			if deregErr == nil {
				logger.Info("deregistered from consul", "service_id", cfg.InstanceID)
			}
		}
		gracefulStop(srv, serveDone, cfg.ShutdownTimeout, logger)
		return deregErr
	})
	if err := g.Wait(); err != nil {
		return err
	}
	logger.Info("stopped", "instance_id", cfg.InstanceID)
	return nil
}

// gracefulStop drains in-flight calls, and stops the server hard when that
// takes longer than timeout.
func gracefulStop(srv grpcServer, serveDone <-chan struct{}, timeout time.Duration, logger *slog.Logger) {
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		logger.Warn("graceful stop timed out; closing remaining connections", "timeout", timeout)
		srv.Stop()
		<-stopped
	}
	<-serveDone
}

// advertiseAddress returns the host:port to register: flag when set, else the
// listener's address, which must then name a specific IP.
func advertiseAddress(flagValue string, lis *net.TCPAddr) (string, error) {
	if flagValue != "" {
		host, port, err := net.SplitHostPort(flagValue)
		if err != nil {
			return "", fmt.Errorf("--advertise-address %q: want host:port: %w", flagValue, err)
		}
		if net.ParseIP(host) == nil {
			return "", fmt.Errorf("--advertise-address %q: host must be an IP address (Trellis sends IPs to clients)", flagValue)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return "", fmt.Errorf("--advertise-address %q: port must be 1-65535", flagValue)
		}
		return flagValue, nil
	}
	if lis.IP.IsUnspecified() {
		return "", fmt.Errorf("listening on %s, which is not an address clients can use: set --advertise-address", lis)
	}
	return lis.String(), nil
}
