package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// serverOptions are the flags of `trellis server`.
type serverOptions struct {
	xdsListen      string
	adminListen    string
	consulAddr     string
	consulToken    string
	consulDC       string
	excludeWarning bool
	disablePanic   bool
	zoneMetaKeys   []string
	logLevel       string
	logFormat      string
	policy         policyOptions
	security       securityOptions
	tls            serverTLSOptions
	ha             haOptions
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
catalog and the policies. The admin listener serves /healthz, /readyz,
/metrics, /debug/xds/* and the policy API.`,
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
	f.StringVar(&opts.consulDC, "consul-datacenter", "", "Consul datacenter to serve (default: the agent's)")
	f.BoolVar(&opts.excludeWarning, "exclude-warning", false, "send no calls to instances whose checks are warning (default: they receive calls)")
	f.BoolVar(&opts.disablePanic, "disable-panic-routing", false, "when no instance of a service is healthy, send calls to none (default: to all instances not in maintenance)")
	f.StringSliceVar(&opts.zoneMetaKeys, "zone-meta-key", nil, "service or node meta keys holding an instance's zone, in order (default: the catalog's)")
	f.StringVar(&opts.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&opts.logFormat, "log-format", "text", "log format: text or json")
	addPolicyServerFlags(f, &opts.policy)
	addSecurityServerFlags(f, &opts.security)
	addServerTLSFlags(f, &opts.tls)
	addHAServerFlags(f, &opts.ha)
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

func consulClient(opts serverOptions) (*consulapi.Client, string, error) {
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
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("consul client: %w", err)
	}
	return client, cfg.Address, nil
}

func runServer(ctx context.Context, opts serverOptions) error {
	logger, err := newLogger(opts.logLevel, opts.logFormat)
	if err != nil {
		return err
	}
	client, consulAddr, err := consulClient(opts)
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

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	watcher, err := catalog.New(catalog.Config{
		Client:       client,
		Logger:       logger.With("component", "catalog"),
		Registerer:   registry,
		ZoneMetaKeys: opts.zoneMetaKeys,
	})
	if err != nil {
		return err
	}
	cache := xdscache.New(xdscache.Config{Logger: logger.With("component", "xdscache")})
	xds, err := xdsserver.New(xdsserver.Config{
		Cache:         cache,
		Logger:        logger.With("component", "xds"),
		Registerer:    registry,
		ServerOptions: stls.xdsServerOptions(),
	})
	if err != nil {
		return err
	}
	applier := newApplier(cache, translate.Options{ExcludeWarning: opts.excludeWarning, DisablePanicRouting: opts.disablePanic}, logger.With("component", "translate"), registry)
	policies, err := newPolicyServer(opts.policy, client, logger, registry, applier.knownService)
	if err != nil {
		return err
	}
	security, err := newSecurityServer(opts.security, client, logger, registry, applier.knownService)
	if err != nil {
		return err
	}

	ready := func() (bool, string) {
		st := watcher.Status()
		var detail strings.Builder
		fmt.Fprintf(&detail, "catalog synced: %t\nconsul reachable: %t\nservices: %d\n", st.Synced, st.Reachable, st.Services)
		if !st.LastContact.IsZero() {
			fmt.Fprintf(&detail, "consul last contact: %s\n", st.LastContact.UTC().Format(time.RFC3339))
		}
		if st.LastError != "" {
			fmt.Fprintf(&detail, "consul last error: %s\n", st.LastError)
		}
		if !st.Reachable && applier.ready() {
			detail.WriteString("serving the last good configuration until Consul is reachable again\n")
		}
		policies.readyDetail(&detail)
		security.readyDetail(&detail)
		stls.readyDetail(&detail)
		return applier.ready(), detail.String()
	}
	adminServer := admin.New(admin.Config{
		Logger:    logger.With("component", "admin"),
		Gatherer:  registry,
		Ready:     ready,
		Streams:   func() any { return xds.Streams() },
		Resources: func() any { return cache.Versions() },
		GRPC:      policies.grpc,
		DebugAuth: debugAuth(opts.policy),
	})

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
	logger.Info("trellis server starting", "xds", xdsLis.Addr().String(), "admin", adminLis.Addr().String(), "consul", consulAddr)
	registration, err := newReplicaRegistration(opts.ha, client, xdsLis.Addr(), adminLis.Addr(), opts.tls.xdsTLS, logger)
	if err != nil {
		xdsLis.Close()
		adminLis.Close()
		return err
	}

	synced := make(chan struct{})
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return adminServer.Serve(ctx, adminLis) })
	g.Go(func() error { return watcher.Run(ctx) })
	g.Go(func() error { return policies.run(ctx) })
	g.Go(func() error { return stls.serveAPI(ctx, adminServer) })
	g.Go(func() error { return security.run(ctx) })
	g.Go(func() error { return registration.run(ctx) })
	g.Go(func() error {
		return applier.run(ctx, watcher.Snapshots(), policies.watcher.Snapshots(), security.snapshots(), synced)
	})
	g.Go(func() error {
		select {
		case <-synced:
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

// applier translates each catalog or policy snapshot, with the latest of
// the other, and hands the result to the cache.
type applier struct {
	// catalog is the latest catalog snapshot, for knownService.
	catalog atomic.Pointer[model.Snapshot]
	cache   *xdscache.Cache
	opts    translate.Options
	logger  *slog.Logger
	synced  atomic.Bool
	skipped prometheus.Gauge
	applies prometheus.Counter
	// lastSkips is what the previous translation skipped, so that a skip is
	// logged when it appears and when it clears, not on every snapshot.
	lastSkips map[string]bool
	// lastPanics are the clusters routed in panic mode by the previous
	// translation.
	lastPanics map[string]bool
	panicking  prometheus.Gauge
}

func newApplier(cache *xdscache.Cache, opts translate.Options, logger *slog.Logger, reg prometheus.Registerer) *applier {
	a := &applier{
		cache:  cache,
		opts:   opts,
		logger: logger,
		skipped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_translate_skipped",
			Help: "Services and instances left out of the last translation because they cannot be served safely.",
		}),
		applies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_translate_snapshots_total",
			Help: "Catalog and policy snapshots translated and applied to the xDS cache.",
		}),
	}
	a.panicking = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "trellis_translate_panic_clusters",
		Help: "Clusters with no healthy instance whose calls are spread over all their instances (panic routing).",
	})
	reg.MustRegister(a.skipped, a.applies, a.panicking)
	return a
}

func (a *applier) ready() bool { return a.synced.Load() }

// knownService tells whether a service is in the latest catalog snapshot;
// before the first one, every service is taken as known.
func (a *applier) knownService(name string) bool {
	snap := a.catalog.Load()
	if snap == nil {
		return true
	}
	_, ok := snap.Services[name]
	return ok
}

// run translates from the first moment a catalog, a policy and a security
// snapshot have arrived, and again on every new snapshot of any.
func (a *applier) run(ctx context.Context, catalogs <-chan *model.Snapshot, policies <-chan *store.Snapshot, security <-chan *translate.Security, synced chan<- struct{}) error {
	var in translate.Input
	havePolicies := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case snap := <-catalogs:
			in.Catalog = snap
			a.catalog.Store(snap)
		case ps := <-policies:
			in.Policies = ps.Policies
			havePolicies = true
		case sec := <-security:
			in.Security = sec
		}
		if in.Catalog == nil || !havePolicies || in.Security == nil {
			continue
		}
		a.apply(in)
		if !a.synced.Swap(true) {
			close(synced)
		}
	}
}

func (a *applier) apply(in translate.Input) {
	snap := in.Catalog
	res := translate.Translate(in, a.opts)
	a.logSkips(res.Skipped)
	a.logPanics(res.Panicking)
	result := a.cache.Apply(res.Resources.ByTypeURL())
	a.applies.Inc()
	a.logger.Debug("applied snapshot", "services", len(snap.Services), "policies", len(in.Policies), "result", result)
}

func (a *applier) logPanics(clusters []string) {
	now := make(map[string]bool, len(clusters))
	for _, c := range clusters {
		now[c] = true
		if !a.lastPanics[c] {
			a.logger.Warn("no healthy instance: spreading calls over all instances (panic routing)", "cluster", c)
		}
	}
	for c := range a.lastPanics {
		if !now[c] {
			a.logger.Info("healthy instances again: panic routing ends", "cluster", c)
		}
	}
	a.lastPanics = now
	a.panicking.Set(float64(len(clusters)))
}

func (a *applier) logSkips(skips []translate.Skip) {
	now := make(map[string]bool, len(skips))
	for _, s := range skips {
		msg := s.String()
		now[msg] = true
		if !a.lastSkips[msg] {
			a.logger.Warn("left out of the xDS configuration", "service", s.Service, "instance", s.Instance, "reason", s.Reason)
		}
	}
	for msg := range a.lastSkips {
		if !now[msg] {
			a.logger.Info("no longer left out", "what", msg)
		}
	}
	a.lastSkips = now
	a.skipped.Set(float64(len(skips)))
}
