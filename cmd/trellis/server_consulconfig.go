package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
)

// consulConfigOptions are the config entry flags of `trellis server`.
type consulConfigOptions struct {
	enabled bool
}

func addConsulConfigFlags(f *pflag.FlagSet, o *consulConfigOptions) {
	f.BoolVar(&o.enabled, "consul-config-entries", true, "serve Consul's service-router, service-splitter and service-resolver entries (their compiled discovery chains) as service policies; a Trellis policy for a service replaces its chain")
}

// consulConfigServer combines the policy store's snapshots with the
// policies converted from Consul's discovery chains, and feeds the
// combination to the pipeline in place of the store's snapshots: a
// Trellis policy replaces a service's chain whole, and the chain policies
// are validated against what is in effect (consulconfig.Merge).
type consulConfigServer struct {
	enabled      bool
	watcher      *consulconfig.Watcher
	store        <-chan *store.Snapshot
	out          *consulwatch.Latest[*store.Snapshot]
	knownService func(string) bool
	logger       *slog.Logger

	unsupported *prometheus.GaugeVec
	overridden  prometheus.Gauge
	fromChains  prometheus.Gauge

	mu     sync.Mutex
	merged *consulconfig.Merged
	// reported are the unsupported fields last logged.
	reported map[string]bool
}

// newConsulConfigServer builds the watcher and the combiner; storeSnaps
// are the policy store's snapshots.
func newConsulConfigServer(opts consulConfigOptions, client *consulapi.Client, logger *slog.Logger, reg prometheus.Registerer, consulMetrics *consulwatch.Metrics, acl *consulwatch.ACL, storeSnaps <-chan *store.Snapshot, knownService func(string) bool) (*consulConfigServer, error) {
	s := &consulConfigServer{
		enabled:      opts.enabled,
		store:        storeSnaps,
		out:          consulwatch.NewLatest[*store.Snapshot](),
		knownService: knownService,
		logger:       logger.With("component", "consulconfig"),
		reported:     map[string]bool{},
		unsupported: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_consulconfig_unsupported_fields",
			Help: "Fields of Consul config entries that are not sent to clients (gRPC cannot honour them, or validation refused them), by entry kind.",
		}, []string{"kind"}),
		overridden: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_consulconfig_overridden_services",
			Help: "Services whose discovery chain is replaced by a Trellis service policy.",
		}),
		fromChains: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_consulconfig_policies",
			Help: "Service policies in effect that come from Consul config entries.",
		}),
	}
	if !opts.enabled {
		return s, nil
	}
	for _, kind := range []string{consulapi.ServiceRouter, consulapi.ServiceSplitter, consulapi.ServiceResolver, consulapi.ServiceDefaults, "discovery-chain"} {
		s.unsupported.WithLabelValues(kind)
	}
	w, err := consulconfig.New(consulconfig.Config{
		Client:        client,
		Logger:        s.logger,
		Registerer:    reg,
		ConsulMetrics: consulMetrics,
		ACL:           acl,
	})
	if err != nil {
		return nil, err
	}
	s.watcher = w
	for _, c := range []prometheus.Collector{s.unsupported, s.overridden, s.fromChains} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("consulconfig: register metrics: %w", err)
		}
	}
	return s, nil
}

// snapshots are the combined policies, for the pipeline.
func (s *consulConfigServer) snapshots() <-chan *store.Snapshot { return s.out.C() }

// run combines until ctx is done. Without config entries it hands the
// store's snapshots on as they are.
func (s *consulConfigServer) run(ctx context.Context) error {
	if !s.enabled {
		for {
			select {
			case <-ctx.Done():
				return nil
			case snap := <-s.store:
				s.out.Publish(snap)
			}
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.watcher.Run(ctx) })
	g.Go(func() error {
		var (
			trellis *store.Snapshot
			chains  *consulconfig.Snapshot
		)
		for {
			select {
			case <-ctx.Done():
				return nil
			case trellis = <-s.store:
			case chains = <-s.watcher.Snapshots():
			}
			if trellis == nil || chains == nil {
				continue
			}
			s.publish(trellis, chains)
		}
	})
	return g.Wait()
}

// publish merges and hands the result on, logging what became
// unsupported or supported again.
func (s *consulConfigServer) publish(trellis *store.Snapshot, chains *consulconfig.Snapshot) {
	m := consulconfig.Merge(trellis.Policies, chains.Converted, s.knownService)
	now := map[string]bool{}
	counts := map[string]int{}
	for _, u := range m.Unsupported {
		line := u.String()
		now[line] = true
		kind, _, _ := strings.Cut(u.Entry, "/")
		counts[kind]++
		if !s.reported[line] {
			s.logger.Warn("config entry field not sent to clients", "service", u.Service, "entry", u.Entry, "field", u.Field, "reason", u.Reason)
		}
	}
	for line := range s.reported {
		if !now[line] {
			s.logger.Info("config entry field no longer unsupported (changed or removed)", "was", line)
		}
	}
	s.reported = now
	s.unsupported.Reset()
	for _, kind := range []string{consulapi.ServiceRouter, consulapi.ServiceSplitter, consulapi.ServiceResolver, consulapi.ServiceDefaults, "discovery-chain"} {
		s.unsupported.WithLabelValues(kind).Set(float64(counts[kind]))
	}
	s.overridden.Set(float64(len(m.Overridden)))
	s.fromChains.Set(float64(len(m.FromChains)))
	s.mu.Lock()
	s.merged = m
	s.mu.Unlock()
	s.out.Publish(&store.Snapshot{Policies: m.Policies, Revisions: trellis.Revisions, Index: trellis.Index})
}

// readyDetail appends the config entries' state to the /readyz detail:
// which services are served from their chain, which chains a Trellis
// policy overrides, and every field not sent.
func (s *consulConfigServer) readyDetail(b *strings.Builder) {
	if !s.enabled {
		return
	}
	st := s.watcher.Status()
	fmt.Fprintf(b, "consul config entries synced: %t\ndiscovery chains: %d\n", st.Synced, st.Chains)
	if len(st.Pending) > 0 {
		fmt.Fprintf(b, "discovery chains not read yet: %s\n", strings.Join(st.Pending, ", "))
	}
	if st.LastError != "" {
		fmt.Fprintf(b, "consul config entries last error: %s\n", st.LastError)
	}
	s.mu.Lock()
	m := s.merged
	s.mu.Unlock()
	writeMerged(b, m)
}

// writeMerged describes a merge for /readyz.
func writeMerged(b *strings.Builder, m *consulconfig.Merged) {
	if m == nil {
		return
	}
	if len(m.FromChains) > 0 {
		fmt.Fprintf(b, "policies from consul config entries: %s\n", strings.Join(m.FromChains, ", "))
	}
	for _, svc := range m.Overridden {
		fmt.Fprintf(b, "consul config entries overridden by the trellis policy of %s\n", svc)
	}
	for _, u := range m.Unsupported {
		fmt.Fprintf(b, "consul config entry not sent: %s\n", u)
	}
}
