// Package pipeline joins what the control plane watches, the catalog, the
// service policies and the security input (mesh settings plus intentions),
// translates it for every client profile and feeds the xDS caches.
//
// Data flows one way: each watcher publishes immutable snapshots on a
// latest-value channel; the Pipeline keeps the latest of each, and after
// every new snapshot translates the joined inputs with one memoising
// translate.Translator per client profile (a service whose inputs did not
// change costs nothing and keeps its resource values) and applies the result
// to the caches.
//
// Work follows the change, end to end: the catalog's snapshots name the
// services each changed (model.Snapshot.ChangedSince), so a Translator
// looks at those only; it updates its state in place and reports what it
// changed (translate.Delta); the caches take that delta (xdscache.Change)
// and encode and hash only the resources in it. A one-instance change in
// a catalog of 10,000 services costs what one service costs. A profile is
// translated only once a client of it has connected (Config.Active),
// except the first (the fallback), so an estate of one implementation
// keeps two translations, not five.
//
// Readiness: nothing is applied before the first catalog and the first
// policy snapshot; the security input is waited for only when it carries
// something the translation needs from Consul (intentions for mTLS, that
// is, when a trust domain is configured); otherwise the configured base
// Security is used until intentions arrive, so that a token that cannot
// read intentions does not keep xDS unserved. Synced is closed after the
// first apply. The caches keep the last good configuration whenever an
// input's source is unreachable: its watcher then publishes nothing, and
// the Pipeline keeps translating with the last snapshot it received.
//
// What the translation leaves out or warns about is logged when it appears
// and when it clears, never on every snapshot, and counted by kind.
//
// This package wires model, policy store, translate and the caches; it
// must not import Consul's API, the catalog watcher, or cmd.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// Cache takes, by profile name, each client profile's new state: whole
// after a profile's first translation, and as what changed (a
// translate.Delta) after every later one, so that an apply costs what
// changed. A profile without a change is left out. xdsserver.ProfileCaches
// implements it.
type Cache interface {
	Apply(next map[string]xdscache.Change) map[string]xdscache.ApplyResult
}

// Config configures a Pipeline.
type Config struct {
	// Catalogs, Policies and Security are the watchers' latest-value
	// channels. Catalogs and Policies are required.
	Catalogs <-chan *model.Snapshot
	Policies <-chan *store.Snapshot
	// Security delivers the security input after every change of the
	// intentions. Default: nil, BaseSecurity is used throughout.
	Security <-chan *translate.Security
	// BaseSecurity is the Security used until the first one arrives on
	// Security. When it has a trust domain, the first apply waits for
	// Security instead (intentions decide who may call mTLS services).
	// Default: nil (a zero translate.Security).
	BaseSecurity *translate.Security
	// Cache receives the translations. Required.
	Cache Cache
	// Profiles are the client profiles to translate for, the widest (the
	// fallback for unknown clients) first. Default: the widest profile
	// only.
	Profiles []clients.Profile
	// Active, when set, tells the profiles (other than the first, always
	// translated) that have clients: only those are translated, from the
	// first apply after they become active. Activated receives a value
	// when a profile becomes active. Default: nil, every profile is
	// translated.
	Active    func(profile string) bool
	Activated <-chan struct{}
	// Options tune translation; Options.Client is set per profile.
	Options translate.Options
	// Logger receives what the translation leaves out and apply errors.
	// Default: discarded.
	Logger *slog.Logger
	// Registerer receives the trellis_translate_* and
	// trellis_pipeline_* metrics. Default: nil, not registered.
	Registerer prometheus.Registerer
	// Zones, when set, receives the per-zone variants of the load
	// assignments (zones.go). Default: nil, every client of a profile is
	// served the same assignments.
	Zones ZoneCache
}

// Pipeline runs the join-translate-apply loop. Create it with New and run
// it with Run.
type Pipeline struct {
	cfg         Config
	logger      *slog.Logger
	translators []*translate.Translator
	zones       translate.ZoneSplitter
	metrics     metrics
	synced      chan struct{}
	isSynced    atomic.Bool
	running     atomic.Bool
	// latest is the last applied input and its report, for Status.
	latest atomic.Pointer[Status]

	// Owned by Run.
	// lastSkipped are the last apply's Result.Skipped by profile, and
	// lastReport what came out of them.
	lastSkipped map[string][]translate.Skip
	lastReport  struct {
		skips   []translate.Skip
		adapted map[string]int
	}
	lastSkips  map[string]bool
	lastPanics map[string]bool
}

// Status is what the last apply did.
type Status struct {
	// Applied is when the last apply ran; zero before the first.
	Applied time.Time
	// Services and Policies are the sizes of the inputs it translated.
	Services, Policies int
	// LeftOut and Warnings count the translation's skips by kind.
	LeftOut, Warnings int
	// Skipped are the skips themselves.
	Skipped []translate.Skip
	// ApplyErrors lists the resources the caches could not take.
	ApplyErrors []string
}

type metrics struct {
	skipped       *prometheus.GaugeVec
	applies       prometheus.Counter
	panicking     prometheus.Gauge
	clientAdapted *prometheus.GaugeVec
	applyErrors   prometheus.Counter
	duration      prometheus.Histogram
	changeToPush  prometheus.Histogram
}

// New checks cfg and registers the metrics.
func New(cfg Config) (*Pipeline, error) {
	switch {
	case cfg.Catalogs == nil:
		return nil, errors.New("pipeline: Config.Catalogs is required")
	case cfg.Policies == nil:
		return nil, errors.New("pipeline: Config.Policies is required")
	case cfg.Cache == nil:
		return nil, errors.New("pipeline: Config.Cache is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Profiles) == 0 {
		cfg.Profiles = []clients.Profile{clients.Widest}
	}
	p := &Pipeline{cfg: cfg, logger: cfg.Logger, synced: make(chan struct{})}
	for i := range cfg.Profiles {
		o := cfg.Options
		o.Client = &cfg.Profiles[i]
		p.translators = append(p.translators, translate.NewTranslator(o))
	}
	p.metrics = metrics{
		skipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_translate_skipped",
			Help: "What the last translation reported, by kind: left_out (services, instances, routes, ... not served because they cannot be served safely) or warning.",
		}, []string{"kind"}),
		applies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_translate_snapshots_total",
			Help: "Catalog, policy and security snapshots translated and applied to the xDS cache.",
		}),
		panicking: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_translate_panic_clusters",
			Help: "Clusters with no healthy instance whose calls are spread over all their instances (panic routing).",
		}),
		clientAdapted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_translate_client_adapted",
			Help: "Features of the last translation substituted (e.g. round robin for least request) or resources withheld (e.g. RBAC server Listeners) for one client profile, because its clients cannot honour them.",
		}, []string{"profile"}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_pipeline_apply_errors_total",
			Help: "Resources the xDS cache refused in an apply (each keeps its previous version).",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "trellis_pipeline_apply_duration_seconds",
			Help:    "Time to translate a new input and apply it to the xDS caches.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		changeToPush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "trellis_pipeline_change_to_push_seconds",
			Help:    "Time from Consul's answer carrying a catalog change to the xDS caches handing the changed resources to every stream watching them (batching of bursts included).",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10},
		}),
	}
	for _, k := range []translate.SkipKind{translate.SkipLeftOut, translate.SkipWarning} {
		p.metrics.skipped.WithLabelValues(k.String())
	}
	for _, pr := range cfg.Profiles {
		p.metrics.clientAdapted.WithLabelValues(pr.Name)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.metrics.skipped, p.metrics.applies, p.metrics.panicking,
			p.metrics.clientAdapted, p.metrics.applyErrors, p.metrics.duration, p.metrics.changeToPush} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("pipeline: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Synced is closed after the first apply.
func (p *Pipeline) Synced() <-chan struct{} { return p.synced }

// Ready reports whether the first apply happened.
func (p *Pipeline) Ready() bool { return p.isSynced.Load() }

// Status returns what the last apply did; zero before the first.
func (p *Pipeline) Status() Status {
	if s := p.latest.Load(); s != nil {
		return *s
	}
	return Status{}
}

// needsSecurity reports whether the first apply waits for the Security
// channel.
func (p *Pipeline) needsSecurity() bool {
	return p.cfg.Security != nil && p.cfg.BaseSecurity != nil && !p.cfg.BaseSecurity.TrustDomain.IsZero()
}

// Run translates from the first moment its inputs are complete, and again
// on every new snapshot, until ctx is done. It returns an error only when
// called twice.
func (p *Pipeline) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("pipeline: Run called more than once")
	}
	var (
		in           translate.Input
		havePolicies bool
		haveSecurity = !p.needsSecurity()
		// observed is when the oldest catalog change not applied yet
		// arrived from Consul (model.Snapshot.ObservedAt).
		observed time.Time
	)
	in.Security = p.cfg.BaseSecurity
	if in.Security == nil {
		in.Security = &translate.Security{}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case snap := <-p.cfg.Catalogs:
			in.Catalog = snap
			if observed.IsZero() {
				observed = snap.ObservedAt
			}
		case ps := <-p.cfg.Policies:
			in.Policies = ps.Policies
			havePolicies = true
		case sec := <-p.cfg.Security:
			in.Security = sec
			haveSecurity = true
		case <-p.cfg.Activated:
			// A profile gained its first client: translate for it.
		}
		if in.Catalog == nil || !havePolicies || !haveSecurity {
			continue
		}
		changed := p.apply(in)
		if changed && !observed.IsZero() && p.isSynced.Load() {
			p.metrics.changeToPush.Observe(time.Since(observed).Seconds())
		}
		observed = time.Time{}
		if !p.isSynced.Swap(true) {
			close(p.synced)
		}
	}
}

// apply translates in for every profile and applies the result.
func (p *Pipeline) apply(in translate.Input) (changed bool) {
	start := time.Now()
	next := make(map[string]xdscache.Change, len(p.translators))
	var (
		skips     []translate.Skip
		panicking []string
		seen      = map[string]bool{}
		adapted   = map[string]int{}
		skipped   = map[string][]translate.Skip{} // by profile
		first     *translate.Result
	)
	for i, tr := range p.translators {
		name := p.cfg.Profiles[i].Name
		if i > 0 && p.cfg.Active != nil && !p.cfg.Active(name) {
			continue
		}
		res := tr.Translate(in)
		switch {
		case res.Delta == nil:
			next[name] = xdscache.Change{Full: res.Resources.ByTypeURL()}
		case !res.Delta.Empty():
			next[name] = xdscache.Change{Updated: res.Delta.Updated, Deleted: res.Delta.Deleted}
		}
		if i == 0 {
			panicking, first = res.Panicking, res
		}
		skipped[name] = res.Skipped
	}
	// A Translator hands back the very same Skipped slice when nothing it
	// reports changed: then neither do the skips, and they are not gone
	// through again (formatting thousands of them on every change would
	// cost more than the change).
	if sameSkipped(skipped, p.lastSkipped) {
		skips, adapted = p.lastReport.skips, p.lastReport.adapted
	} else {
		for i := range p.translators {
			name := p.cfg.Profiles[i].Name
			for _, s := range skipped[name] {
				if i > 0 && s.Profile == "" {
					continue // reported by the first profile already
				}
				if s.Profile != "" {
					adapted[s.Profile]++
				}
				if k := s.String(); !seen[k] {
					seen[k] = true
					skips = append(skips, s)
				}
			}
		}
		p.logSkips(skips)
		p.lastSkipped, p.lastReport.skips, p.lastReport.adapted = skipped, skips, adapted
	}
	p.logPanics(panicking)
	p.applyZones(in, first)
	results := p.cfg.Cache.Apply(next)
	p.metrics.duration.Observe(time.Since(start).Seconds())
	p.metrics.applies.Inc()

	st := &Status{Applied: time.Now(), Services: len(in.Catalog.Services), Policies: len(in.Policies), Skipped: skips}
	for profile, r := range results {
		changed = changed || r.Changed()
		if r.Err == nil {
			continue
		}
		p.metrics.applyErrors.Inc()
		st.ApplyErrors = append(st.ApplyErrors, profile+": "+r.Err.Error())
		p.logger.Error("the xDS cache refused resources; they keep their previous version", "profile", profile, "error", r.Err)
	}
	kinds := translate.CountKinds(skips)
	st.LeftOut, st.Warnings = kinds[translate.SkipLeftOut], kinds[translate.SkipWarning]
	for _, k := range []translate.SkipKind{translate.SkipLeftOut, translate.SkipWarning} {
		p.metrics.skipped.WithLabelValues(k.String()).Set(float64(kinds[k]))
	}
	for _, pr := range p.cfg.Profiles {
		p.metrics.clientAdapted.WithLabelValues(pr.Name).Set(float64(adapted[pr.Name]))
	}
	p.latest.Store(st)
	p.logger.Debug("applied snapshot", "services", len(in.Catalog.Services), "policies", len(in.Policies),
		"duration", time.Since(start), "result", results[p.cfg.Profiles[0].Name])
	return changed
}

// sameSkipped reports whether a and b hold, profile by profile, the very
// same Skipped slices.
func sameSkipped(a, b map[string][]translate.Skip) bool {
	if b == nil || len(a) != len(b) {
		return false
	}
	for name, x := range a {
		y, ok := b[name]
		if !ok || len(x) != len(y) || (len(x) > 0 && &x[0] != &y[0]) {
			return false
		}
	}
	return true
}

func (p *Pipeline) logPanics(clusters []string) {
	now := make(map[string]bool, len(clusters))
	for _, c := range clusters {
		now[c] = true
		if !p.lastPanics[c] {
			p.logger.Warn("no healthy instance: spreading calls over all instances (panic routing)", "cluster", c)
		}
	}
	for c := range p.lastPanics {
		if !now[c] {
			p.logger.Info("healthy instances again: panic routing ends", "cluster", c)
		}
	}
	p.lastPanics = now
	p.metrics.panicking.Set(float64(len(clusters)))
}

// logSkips logs each skip when it appears, whole, and when it clears.
func (p *Pipeline) logSkips(skips []translate.Skip) {
	now := make(map[string]bool, len(skips))
	for _, s := range skips {
		msg := s.String()
		now[msg] = true
		if p.lastSkips[msg] {
			continue
		}
		level, text := slog.LevelWarn, "left out of the xDS configuration"
		if s.Kind == translate.SkipWarning {
			text = "translation warning"
		}
		p.logger.LogAttrs(context.Background(), level, text, s.LogAttrs()...)
	}
	for msg := range p.lastSkips {
		if !now[msg] {
			p.logger.Info("resolved", "what", msg)
		}
	}
	p.lastSkips = now
}
