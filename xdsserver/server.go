// Package xdsserver serves the xDS resources held by an xdscache.Cache to
// gRPC clients over state-of-the-world ADS, and tracks what every stream
// requested, was sent, ACKed and NACKed.
//
// It owns the gRPC server of the xDS listener (ADS, the services of
// Config.Services such as LRS, the gRPC health service, keepalive policy,
// graceful shutdown), the ACK/NACK tracker with its metrics, and the
// optional per-peer scope of what each stream may receive (Scope). It serves only what the cache holds: it must not
// import the catalog, the model, the translator or identity.
package xdsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/internal/cplog"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// Defaults of Config.
const (
	DefaultShutdownGrace = 5 * time.Second
	// maxConcurrentStreams bounds the streams one connection may open.
	maxConcurrentStreams = 1_000_000
	// ackWindow is the HTTP/2 flow-control window the server grants each
	// connection and stream for what clients send: requests and ACKs of
	// a few hundred bytes. Setting it turns off grpc-go's bandwidth-delay
	// estimator on the server side, which otherwise answers the first
	// data frame after every quiet spell (every ACK of a push) with a
	// PING of its own: one more write and one more read on each side per
	// client per push, for a window ADS never needs to grow.
	ackWindow = 64 * 1024
)

// Config configures a Server.
type Config struct {
	// Cache holds the resources to serve. Required unless Watcher is set.
	Cache *xdscache.Cache
	// Watcher serves the ADS requests, e.g. ProfileCaches.ConfigWatcher()
	// to serve each client profile its own resources.
	// Default: Cache.ConfigWatcher().
	Watcher cache.Cache
	// Logger receives the server's logs. Default: logs are discarded.
	Logger *slog.Logger
	// Registerer receives the server's metrics (trellis_xds_*). Default: a
	// private registry, so the metrics are not exported.
	// trellis_xds_resources is registered when Versions (or its default)
	// is a *ProfileCaches or CacheVersions, whose caches it counts.
	Registerer prometheus.Registerer
	// ServerOptions are added after the defaults (keepalive enforcement
	// and pings, maximum concurrent streams), e.g. transport credentials.
	// Optional.
	ServerOptions []grpc.ServerOption
	// ShutdownGrace is how long Serve waits, once its context is done, for
	// RPCs to finish before closing every connection. Default: 5s.
	ShutdownGrace time.Duration
	// Scope, when set, limits what each stream's peer may receive (see
	// Scope). Default: every stream may receive every resource.
	Scope Scope
	// Versions, when set, gives the content versions recorded for each
	// response in the streams' status (TypeStatus.SentContent), so that
	// status can tell what differs from what is served now, e.g. the
	// *ProfileCaches behind Watcher. Default: CacheVersions{Cache} when
	// Watcher is not set; otherwise none recorded.
	Versions ContentVersioner
	// Services are more gRPC services served beside ADS on the same
	// server and port, e.g. the LRS server (package lrs). Optional.
	Services []ServiceRegistrant
}

// ServiceRegistrant adds its gRPC service to a server.
type ServiceRegistrant interface {
	Register(grpc.ServiceRegistrar)
}

// Server is the ADS gRPC server.
type Server struct {
	watcher cache.Cache
	logger  *slog.Logger
	tracker *tracker
	opts    []grpc.ServerOption
	grace   time.Duration
	serving atomic.Bool
	// services are served beside ADS (Config.Services).
	services []ServiceRegistrant

	scope        Scope
	scopeMetrics *scopeMetrics
	// serveCtx, sotwOpts and streamIDs serve the scoped streams, each by a
	// sotw server of its own; set by Serve.
	serveCtx  context.Context
	sotwOpts  []config.XDSOption
	streamIDs atomic.Int64
}

// New validates cfg and registers the server's metrics.
func New(cfg Config) (*Server, error) {
	watcher := cfg.Watcher
	if watcher == nil {
		if cfg.Cache == nil {
			return nil, errors.New("xdsserver: Config.Cache or Config.Watcher is required")
		}
		watcher = cfg.Cache.ConfigWatcher()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	tr, err := newTracker(logger, reg)
	if err != nil {
		return nil, fmt.Errorf("xdsserver: register metrics: %w", err)
	}
	tr.versions = cfg.Versions
	if tr.versions == nil && cfg.Watcher == nil {
		tr.versions = CacheVersions{Cache: cfg.Cache}
	}
	if rc := newResources(tr.versions); rc != nil {
		if err := reg.Register(rc); err != nil {
			return nil, fmt.Errorf("xdsserver: register metrics: %w", err)
		}
	}
	grace := cfg.ShutdownGrace
	if grace <= 0 {
		grace = DefaultShutdownGrace
	}
	opts := []grpc.ServerOption{
		// gRPC xDS clients may ping as often as every 10s, even with no
		// RPC in flight; a stricter policy would make the server close
		// their connections with ENHANCE_YOUR_CALM.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		// Pings detect clients that vanished without closing their
		// streams.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		// A connection's write buffer goes back to a shared pool after
		// each flush: an ADS stream sends a few responses a minute, and
		// holding 32 KiB per connection between them would cost 320 MiB
		// at 10,000 clients.
		grpc.SharedWriteBuffer(true),
		grpc.InitialWindowSize(ackWindow),
		grpc.InitialConnWindowSize(ackWindow),
	}
	opts = append(opts, cfg.ServerOptions...)
	s := &Server{watcher: watcher, logger: logger, tracker: tr, opts: opts, grace: grace, scope: cfg.Scope, services: cfg.Services}
	if s.scope != nil {
		if s.scopeMetrics, err = newScopeMetrics(reg); err != nil {
			return nil, fmt.Errorf("xdsserver: register metrics: %w", err)
		}
	}
	return s, nil
}

// Serve serves ADS (StreamAggregatedResources, state of the world only),
// Config.Services and the gRPC health service on lis until ctx is done, then stops: open ADS
// streams are ended, RPCs get ShutdownGrace to finish, and remaining
// connections are closed. It returns nil after ctx is done, or the error
// that stopped serving. lis is closed on return. Serve may be called once.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		_ = lis.Close() // the error that matters is the one returned
		return errors.New("xdsserver: Serve called more than once")
	}
	gs := grpc.NewServer(s.opts...)
	// The sotw server ends every stream when ctx is done: ADS streams never
	// end by themselves, so without it GracefulStop would wait for the
	// whole grace period.
	s.serveCtx = ctx
	// Ordered ADS: each stream waits on one channel for every type's
	// responses, with a plain select, instead of rebuilding a
	// reflect.Select over one channel per type after each request (6% of
	// the server's CPU in a push to 10,000 streams), and its responses
	// leave in the order the cache produced them.
	s.sotwOpts = []config.XDSOption{sotw.DeactivateLegacyWildcard(), sotw.WithOrderedADS(), sotw.WithLogger(cplog.New(s.logger))}
	xds := sotw.NewServer(ctx, s.watcher, s.tracker, s.sotwOpts...)
	handler := &ads{sotw: xds}
	if s.scope != nil {
		handler.scoped = s.scopedStream
	}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, handler)
	for _, svc := range s.services {
		svc.Register(gs)
	}
	hs := health.NewServer()
	hs.SetServingStatus(discoveryv3.AggregatedDiscoveryService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	s.logger.Info("serving ADS", "addr", lis.Addr().String())

	select {
	case err := <-errc:
		gs.Stop()
		hs.Shutdown()
		if err != nil {
			return fmt.Errorf("xdsserver: serve %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.logger.Warn("RPCs still running after the shutdown grace period; closing connections", "grace", s.grace)
		gs.Stop()
		<-stopped
	}
	<-errc
	s.logger.Info("stopped serving ADS")
	return nil
}

// Streams returns the status of every open ADS stream, sorted by ID.
func (s *Server) Streams() []StreamStatus { return s.tracker.snapshot() }

// Totals returns the server's response, ACK and NACK counters.
func (s *Server) Totals() Totals { return s.tracker.totalsSnapshot() }

// ads serves StreamAggregatedResources with go-control-plane's
// state-of-the-world server; delta ADS is not served.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	sotw sotw.Server
	// scoped, when set, serves every stream instead (Config.Scope).
	scoped func(discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error
}

func (a *ads) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	if a.scoped != nil {
		return a.scoped(st)
	}
	return a.sotw.StreamHandler(st, resource.AnyType)
}
