package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/pipeline"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// serverOptions are the flags of `trellis server`.
type serverOptions struct {
	xdsListen      string
	adminListen    string
	consulAddr     string
	consulToken    string
	consulDC       string
	consulMaxConns int
	consulWatches  int
	excludeWarning bool
	disablePanic   bool
	zoneMetaKeys   []string
	logLevel       string
	logFormat      string
	policy         policyOptions
	consulConfig   consulConfigOptions
	security       securityOptions
	tls            serverTLSOptions
	ha             haOptions
	lrs            loadReportingOptions
}

func newServerCommand() *cobra.Command {
	var opts serverOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the xDS control plane fed by the Consul catalog",
		Long: `Run the xDS control plane. It watches the Consul catalog and serves every
service as xDS resources that gRPC clients dialing xds:///<service> consume.

Consul is reached as Consul's own tools reach it: CONSUL_HTTP_ADDR,
CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_HTTP_SSL, ... The --consul-* flags
override them.

Service policies (routes, retries, traffic policy) are read from Consul's
key/value store under --policy-prefix and managed through the policy API
(trellis policy ...), which the admin listener serves over gRPC.

With --xds-tls the xDS listener serves only mTLS clients, with the control
plane's own SVID from the SPIFFE Workload API (see trellis bootstrap
--xds-server-tls); --api-tls-listen adds a policy API listener over mTLS.

The xDS listener serves nothing until the first complete Consul sync of the
catalog and the policies. Plaintext xDS listens on loopback only unless
--xds-insecure; --xds-scope=intentions limits what each mTLS client
receives. The admin listener serves /healthz, /readyz, /metrics,
/debug/xds/* (to loopback callers and the policy API's credentials) and
the policy API.

Each replica registers itself in Consul (--register-service, default
trellis-xds) with a readiness check on /readyz, so that clients can reach
every ready replica through one name, e.g. the server URI
dns://127.0.0.1:8600/trellis-xds.service.consul:18000.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.xdsListen, "xds-listen", "127.0.0.1:18000", "address the xDS (ADS) gRPC server listens on")
	f.StringVar(&opts.adminListen, "admin-listen", "127.0.0.1:18001", "address of the admin HTTP listener (/healthz, /readyz, /metrics)")
	f.StringVar(&opts.consulAddr, "consul-addr", "", "Consul HTTP address (default: CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	f.StringVar(&opts.consulToken, "consul-token", "", "Consul ACL token (default: CONSUL_HTTP_TOKEN)")
	f.IntVar(&opts.consulMaxConns, "consul-max-conns", consulwatch.DefaultMaxConns, "most TCP connections to Consul at once, shared by every watch and read (Consul refuses an address above limits.http_max_conns_per_client, default 200, shared by every Consul client of the host)")
	f.IntVar(&opts.consulWatches, "consul-service-watches", defaultServiceWatches, fmt.Sprintf("over Consul's HTTPS API, how many services are each watched with a blocking query of their own, multiplexed over HTTP/2 on their own connections (%d blocking queries per connection): changes to them reach clients without an index sweep; 0 turns them off (plain HTTP never has them)", consulwatch.StreamsPerConn))
	f.StringVar(&opts.consulDC, "consul-datacenter", "", "Consul datacenter to serve (default: the agent's)")
	f.BoolVar(&opts.excludeWarning, "exclude-warning", false, "send no calls to instances whose checks are warning (default: they receive calls)")
	f.BoolVar(&opts.disablePanic, "disable-panic-routing", false, "when no instance of a service is healthy, send calls to none (default: to all instances not in maintenance)")
	f.StringSliceVar(&opts.zoneMetaKeys, "zone-meta-key", nil, "service or node meta keys holding an instance's zone, in order (default: the catalog's)")
	f.StringVar(&opts.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&opts.logFormat, "log-format", "text", "log format: text or json")
	addPolicyServerFlags(f, &opts.policy)
	addConsulConfigFlags(f, &opts.consulConfig)
	addSecurityServerFlags(f, &opts.security)
	addServerTLSFlags(f, &opts.tls)
	addHAServerFlags(f, &opts.ha)
	addLoadReportingFlags(f, &opts.lrs)
	return cmd
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: accepted: debug, info, warn, error", level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, hopts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: accepted: text, json", format)
	}
}

// defaultServiceWatches is --consul-service-watches' default: a catalog
// of 10,000 services watched whole, on 50 connections.
const defaultServiceWatches = 10000

// consulClients are the server's Consul clients.
type consulClients struct {
	// client is shared by every component: its connections, and the
	// prober's, are bounded together by --consul-max-conns.
	client *consulapi.Client
	// prober is the catalog's index prober, nil when the bound leaves
	// it no connection.
	prober *consulwatch.IndexProber
	// watch runs the catalog's per-service watches (watches of them),
	// over HTTP/2 on connections of its own; nil over plain HTTP.
	watch   *consulapi.Client
	watches int
	addr    string
}

// consulClient builds the Consul client every component of the server
// shares, and the catalog's index prober: connections bounded together by
// --consul-max-conns, requests counted. The prober gets up to
// consulwatch.DefaultProbeConns of the connections the watches do not
// need; at the minimum bound there is none, and sweeps probe through the
// client (nil prober). Over HTTPS, a multiplexed client carries the
// per-service watches (--consul-service-watches), on at most
// consulwatch.MultiplexedConns of them more connections.
func consulClient(opts serverOptions, reg prometheus.Registerer) (consulClients, error) {
	cfg := consulAPIConfig(opts)
	least := 5
	if opts.consulMaxConns < least {
		return consulClients{}, fmt.Errorf("--consul-max-conns %d: accepted: 5 or more (the catalog's three detectors, the policy and intention watches each hold one)", opts.consulMaxConns)
	}
	if opts.consulConfig.enabled {
		least = 11
		if opts.consulMaxConns < least {
			return consulClients{}, fmt.Errorf("--consul-max-conns %d: accepted with --consul-config-entries: 11 or more (the catalog's three detectors, the policy and intention watches and the five config entry lists each hold one, and chain reads need one more)", opts.consulMaxConns)
		}
	}
	if opts.consulWatches < 0 {
		return consulClients{}, fmt.Errorf("--consul-service-watches %d: accepted: 0 (none) or a positive number", opts.consulWatches)
	}
	requests, err := consulwatch.NewRequestsCounter(reg)
	if err != nil {
		return consulClients{}, err
	}
	out := consulClients{addr: cfg.Address}
	ccfg := consulwatch.ClientConfig{API: cfg, MaxConns: opts.consulMaxConns, Requests: requests}
	if spare := opts.consulMaxConns - least; spare > 0 {
		ccfg.ProbeConns = min(spare, consulwatch.DefaultProbeConns)
		out.client, out.prober, err = consulwatch.NewClientAndProber(ccfg)
	} else {
		out.client, err = consulwatch.NewClient(ccfg)
	}
	if err != nil {
		return consulClients{}, fmt.Errorf("consul client: %w", err)
	}
	if opts.consulWatches > 0 && consulHTTPS(cfg) {
		out.watch, err = consulwatch.NewMultiplexedClient(ccfg, opts.consulWatches)
		if err != nil {
			return consulClients{}, fmt.Errorf("consul client for the service watches: %w", err)
		}
		out.watches = opts.consulWatches
	}
	return out, nil
}

// consulHTTPS reports whether cfg addresses Consul's HTTPS API.
func consulHTTPS(cfg *consulapi.Config) bool {
	if scheme, _, ok := strings.Cut(cfg.Address, "://"); ok {
		return scheme == "https"
	}
	return cfg.Scheme == "https"
}

// consulAPIConfig is Consul's configuration as Consul's own tools read it
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...), with the --consul-* flags.
func consulAPIConfig(opts serverOptions) *consulapi.Config {
	cfg := consulapi.DefaultConfig()
	if opts.consulAddr != "" {
		cfg.Address = opts.consulAddr
	}
	if opts.consulToken != "" {
		cfg.Token = opts.consulToken
	}
	if opts.consulDC != "" {
		cfg.Datacenter = opts.consulDC
	}
	return cfg
}

// stdlogWriter hands what other libraries print through the standard log
// package to slog, so that every line stays structured.
type stdlogWriter struct{ logger *slog.Logger }

func (w stdlogWriter) Write(p []byte) (int, error) {
	w.logger.Warn(strings.TrimSpace(string(p)), "source", "stdlib")
	return len(p), nil
}

func runServer(ctx context.Context, opts serverOptions) error {
	logger, err := newLogger(opts.logLevel, opts.logFormat)
	if err != nil {
		return err
	}
	log.SetFlags(0)
	log.SetOutput(stdlogWriter{logger: logger})
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	consul, err := consulClient(opts, registry)
	if err != nil {
		return err
	}
	client, prober, consulAddr := consul.client, consul.prober, consul.addr
	consulMetrics, err := consulwatch.NewMetrics(registry)
	if err != nil {
		return err
	}
	if err := checkXDSListen(opts.xdsListen, opts.tls.xdsTLS, opts.ha, logger); err != nil {
		return err
	}

	stls, err := newServerTLS(ctx, opts.tls, logger)
	if err != nil {
		return err
	}
	defer stls.Close()
	opts.policy.authenticators = stls.policyAuthenticators()
	acl, err := newConsulACL(opts, client, logger, registry)
	if err != nil {
		return err
	}

	catalogCfg := catalog.Config{
		Client:        client,
		Logger:        logger.With("component", "catalog"),
		Registerer:    registry,
		ConsulMetrics: consulMetrics,
		ACL:           acl,
		ZoneMetaKeys:  opts.zoneMetaKeys,
		Watches:       consul.watches,
		WatchClient:   consul.watch,
	}
	if prober != nil {
		// A nil *IndexProber in the interface would not read as none.
		catalogCfg.Prober = prober
		catalogCfg.ProbeBatches = prober.Conns()
	}
	watcher, err := catalog.New(catalogCfg)
	if err != nil {
		return err
	}
	xdsScope, err := newXDSScope(opts.ha.xdsScope, opts.tls.xdsTLS, opts.security.trustDomain, watcher.Latest, logger)
	if err != nil {
		return err
	}
	// One cache per client profile (internal/clients); each stream is
	// served its profile's translation.
	cache, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Logger: logger.With("component", "xdscache")})
	if err != nil {
		return err
	}
	loadReports, err := newLoadReporting(opts.lrs, opts.tls.xdsTLS, registry, logger.With("component", "lrs"))
	if err != nil {
		return err
	}
	// Clients that know their zone are served its variants of the load
	// assignments.
	zones := xdsserver.NewZoneCaches(xdsserver.ZoneCachesConfig{Logger: logger.With("component", "xdscache")})
	xds, err := xdsserver.New(xdsserver.Config{
		Watcher:       zones.Wrap(cache.ConfigWatcher()),
		Logger:        logger.With("component", "xds"),
		Registerer:    registry,
		ServerOptions: stls.xdsServerOptions(),
		Scope:         xdsScope.scope(),
		Versions:      cache,
		Services:      loadReports.services(),
	})
	if err != nil {
		return err
	}
	// knownService tells whether a service is in the latest catalog
	// snapshot; before the first one, every service is taken as known.
	knownService := func(name string) bool {
		snap := watcher.Latest()
		if snap == nil {
			return true
		}
		_, ok := snap.Services[name]
		return ok
	}
	policies, err := newPolicyServer(opts.policy, client, logger, registry, knownService, consulMetrics, acl)
	if err != nil {
		return err
	}
	security, err := newSecurityServer(opts.security, client, logger, registry, knownService, consulMetrics, acl)
	if err != nil {
		return err
	}
	consulConfig, err := newConsulConfigServer(opts.consulConfig, client, logger, registry, consulMetrics, acl, policies.watcher.Snapshots(), knownService)
	if err != nil {
		return err
	}
	base := security.base
	xdsScope.follow(base, security.watcher.Latest)
	loadReports.identifyBy(base)
	// The catalog joined with the failover datacenters' instances of the
	// services whose policies (Trellis's and those from Consul's config
	// entries) ask for them.
	tee := newPolicyTee(consulConfig.snapshots())
	remote, err := catalog.NewRemote(catalog.RemoteConfig{
		Client:       client,
		Catalogs:     watcher.Snapshots(),
		Targets:      tee.targets.C(),
		ZoneMetaKeys: opts.zoneMetaKeys,
		Logger:       logger.With("component", "catalog"),
	})
	if err != nil {
		return err
	}
	pipe, err := pipeline.New(pipeline.Config{
		Catalogs:     remote.Snapshots(),
		Policies:     tee.policies.C(),
		Zones:        zones,
		Security:     security.snapshots(),
		BaseSecurity: &base,
		Cache:        cache,
		Profiles:     cache.Profiles(),
		Active:       cache.Active,
		Activated:    cache.Activated(),
		Options:      translate.Options{ExcludeWarning: opts.excludeWarning, DisablePanicRouting: opts.disablePanic, DisableLoadReporting: loadReports.disabled()},
		Logger:       logger.With("component", "translate"),
		Registerer:   registry,
	})
	if err != nil {
		return err
	}

	ready := func() (bool, string) {
		st := watcher.Status()
		var detail strings.Builder
		aclHides := aclReadyDetail(acl, &detail)
		if len(st.Hidden) > 0 {
			fmt.Fprintf(&detail, "services whose instances the ACL token hides (last complete read kept, or not served): %s\n", strings.Join(st.Hidden, ", "))
		}
		fmt.Fprintf(&detail, "catalog synced: %t\nconsul reachable: %t\nservices: %d\n", st.Synced, st.Reachable, st.Services)
		if !st.LastContact.IsZero() {
			fmt.Fprintf(&detail, "consul last contact: %s\n", st.LastContact.UTC().Format(time.RFC3339))
		}
		if st.LastError != "" {
			fmt.Fprintf(&detail, "consul last error: %s\n", st.LastError)
		}
		if st.LastErrorKind != "" {
			fmt.Fprintf(&detail, "consul last error kind: %s\n", st.LastErrorKind)
		}
		if st.LastErrorKind == consulwatch.KindACLNotFound {
			fmt.Fprintf(&detail, "consul answers, but: %s\n", consulwatch.ACLNotFoundMessage)
		}
		if !st.Reachable && pipe.Ready() {
			detail.WriteString("serving the last good configuration until Consul is reachable again\n")
		}
		policies.readyDetail(&detail)
		consulConfig.readyDetail(&detail)
		security.readyDetail(&detail)
		stls.readyDetail(&detail)
		if ps := pipe.Status(); !ps.Applied.IsZero() {
			fmt.Fprintf(&detail, "translation: %d services, %d left out, %d warnings\n", ps.Services, ps.LeftOut, ps.Warnings)
			for _, e := range ps.ApplyErrors {
				fmt.Fprintf(&detail, "xds cache refused: %s\n", e)
			}
		}
		return pipe.Ready() && !aclHides, detail.String()
	}

	// Bind both listeners up front so that a busy port fails fast; the xDS
	// listener is only served after the first complete Consul sync, so a
	// restarted server never answers with an empty configuration.
	xdsLis, err := net.Listen("tcp", opts.xdsListen)
	if err != nil {
		return fmt.Errorf("xds listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", opts.adminListen)
	if err != nil {
		xdsLis.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	logger.Info("trellis server starting", "xds", xdsLis.Addr().String(), "admin", adminLis.Addr().String(), "consul", consulAddr,
		"service_watches", consul.watches, "service_watch_conns", map[bool]int{true: consulwatch.MultiplexedConns(consul.watches)}[consul.watches > 0])
	registration, err := newReplicaRegistration(opts.ha, client, xdsLis.Addr(), adminLis.Addr(), opts.tls.xdsTLS, logger)
	if err != nil {
		xdsLis.Close()
		adminLis.Close()
		return err
	}

	// The status API shares the policy API's gRPC server, and so its
	// authentication.
	statusAPI, err := statusapi.New(statusapi.Config{Streams: xds.Streams, Versions: cache, Served: cache,
		Inputs:  explainInputs{catalog: watcher, policies: policies.watcher, security: security, pipe: pipe},
		Replica: xdsLis.Addr().String()})
	if err != nil {
		xdsLis.Close()
		adminLis.Close()
		return err
	}
	statusAPI.Register(policies.grpc)
	ui, err := newDashboard(watcher, policies.watcher, acl, statusAPI, loadReports.graph())
	if err != nil {
		xdsLis.Close()
		adminLis.Close()
		return err
	}
	adminServer := admin.New(admin.Config{
		Logger:    logger.With("component", "admin"),
		Gatherer:  registry,
		Ready:     ready,
		Streams:   func() any { return xds.Streams() },
		Resources: func() any { return cache.Versions() },
		GRPC:      policies.grpc,
		DebugAuth: debugAuth(opts.policy),
		UI:        ui,
	})

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return adminServer.Serve(ctx, adminLis) })
	g.Go(func() error { return watcher.Run(ctx) })
	g.Go(func() error { return remote.Run(ctx) })
	g.Go(func() error { return tee.run(ctx) })
	g.Go(func() error { acl.Run(ctx); return nil })
	g.Go(func() error { return policies.run(ctx) })
	g.Go(func() error { return consulConfig.run(ctx) })
	g.Go(func() error { return stls.serveAPI(ctx, adminServer) })
	g.Go(func() error { return security.run(ctx) })
	g.Go(func() error { return registration.run(ctx) })
	g.Go(func() error { return xdsScope.run(ctx) })
	g.Go(func() error { return pipe.Run(ctx) })
	g.Go(func() error { return loadReports.run(ctx) })
	g.Go(func() error {
		select {
		case <-pipe.Synced():
		case <-ctx.Done():
			xdsLis.Close()
			return nil
		}
		logger.Info("first Consul sync of catalog and policies complete; serving xDS", "addr", xdsLis.Addr().String())
		return xds.Serve(ctx, xdsLis)
	})
	err = g.Wait()
	logger.Info("trellis server stopped")
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
