// Package catalog watches the Consul catalog and publishes immutable
// model.Snapshot values describing every service, its instances and their
// health.
//
// # How it watches Consul at scale
//
// Consul's HTTP API has no change feed over many services, and each
// blocking query holds one HTTP/1.1 connection for its whole wait; Consul
// refuses an address with more than limits.http_max_conns_per_client (200)
// connections, and every Consul client of a host shares that address. One
// blocking query per service (what Prometheus' consul_sd and consul-template
// do) therefore cannot serve a catalog of more than ~200 services, and takes
// the local agent away from everyone else on the way. The Watcher instead
// uses a fixed number of connections whatever the catalog's size:
//
//   - three change detectors, each one blocking query: the service list
//     (/v1/catalog/services, whose index moves on every registration change
//     anywhere, and whose body gives each service's tags), and the checks
//     that are not passing, read by state (/v1/health/state/critical and
//     /v1/health/state/warning). Consul answers a read by state from its
//     index on status, in time proportional to the checks in that state, so
//     a healthy catalog costs it next to nothing per check change; the one
//     query that would do, /v1/health/state/any filtered on Status, costs
//     it a scan of every check on each change (about 100 ms of its CPU for
//     100,000 checks, measured on Consul 1.16);
//   - a bounded pool of readers (Config.ReadConcurrency, default 8) that
//     re-read, with one non-blocking /v1/health/service/:name each, only the
//     services a detector points at: a service added or whose tags changed;
//     a service one of whose checks changed status or appeared or
//     disappeared among the non-passing ones; every service of a node whose
//     node check did;
//   - for what no detector can attribute to a service (an address, port,
//     meta or weights edit, an instance added with a passing check or none,
//     an instance removed while passing: the list's index moved, and no read
//     accounts for it), an index sweep, started after a short grace and stopped as soon
//     as a read accounts for the change: every
//     service's own index (X-Consul-Index of a /v1/health/service/:name read
//     narrowed by a tag no instance carries, so the answer is an empty list)
//     is compared with the one it was last read at, and the services whose
//     index moved are re-read. A sweep costs one tiny request per service,
//     pipelined in batches of 256 over the connections of Config.Prober
//     (consulwatch.IndexProber: one write and a few reads per batch, about
//     a seventh of the CPU of one request at a time, and a third less of
//     Consul's), else sent one by one on the readers, at most one sweep
//     at a time (changes arriving meanwhile are covered by the next), and
//     a slow background sweep every Config.SweepInterval (longer above
//     2,000 services) catches anything a race between the detectors could
//     hide. Several unaccounted list indexes are looked for together
//     (up to 64; a sweep then looks at everything): each is dropped when a
//     read or probe lands on it, so registration changes that the health
//     detectors also name (most of them) never cost a sweep, even when they
//     come faster than the reads; and a list that lost a service accounts
//     for its own index. Publishing waits at most 4*Config.Coalesce after
//     the first change, so sustained churn still reaches clients quickly;
//     every snapshot names the services it changed (model.Snapshot.Next)
//     and when the first of its changes arrived (ObservedAt).
//
// # Per-service watches over HTTP/2
//
// A sweep finds a registration edit in time proportional to the catalog
// (at 10,000 services, about half a second of Consul's CPU and as much
// delay). Where Consul speaks HTTP/2 (its HTTPS listener: golang.org/x/net
// /http2 with 250 concurrent streams per connection, and
// http_max_conns_per_client counts connections, not streams), the
// Watcher also gives up to Config.Watches services a blocking query of
// their own on /v1/health/service/:name, through Config.WatchClient
// (consulwatch.NewMultiplexedClient: 200 queries to a connection, 50
// connections for 10,000 services). Consul wakes such a query only for a
// write to that service or to the nodes and node checks of its instances,
// so any change to a watched service, an address or meta edit included,
// reaches a snapshot with one answer, in milliseconds, whatever the
// catalog's size; a quiet catalog costs one answer per service every
// Config.WatchWaitTime (10 minutes, the longest Consul waits: 1,000
// answers a minute for 10,000 services). A service is watched from the
// index of its first whole read; from then on it is never read, probed or
// swept (one source per service, so answers cannot overtake one
// another), and the list index its answer carries is accounted for
// whichever of the two arrives first. Watches read near the agent
// (?near=_agent): a plain blocking health read is answered by the
// agent's streaming backend, which leaves out what the token may not see
// without saying so. A watch answering with instances hidden by ACLs
// stops, and the service goes back to reads until one is whole; a
// removed service's watch stops and goes to a service that had none.
// Failing watches retry together at about 100 requests a second, and
// leave Consul's reachability to the detectors and the probe, which wakes
// them when Consul is back. Services beyond Config.Watches are looked
// after by the detectors and sweeps above, which keep running for them
// and for what the watches cannot see.
//
// Connections: at most Config's client bound (consulwatch.NewClient or
// NewClientAndProber, default 16) shared by the three detectors, the
// readers, the prober and the reachability probe, plus the WatchClient's
// own (consulwatch.MultiplexedConns(Config.Watches)). Work per change (of
// a service no watch follows): a check
// changing status costs one detector answer (proportional to the checks in
// its old and new states) and one service read; a registration edit costs
// the service list (proportional to the number of services) and, when no
// read accounts for it, a sweep (one probe per service, stopped once the
// change is found) plus the reads of what changed. Consul's load does not grow with the number
// of xDS clients.
//
// Blocking queries follow consul-template's rules (see consulwatch): an
// unchanged index or unchanged content publishes nothing, an index that went
// backwards restarts from 0, errors back off with jitter and are classified
// (a 429 is rate limiting, a 403 an ACL problem). Bursts of changes are
// coalesced into one snapshot. A service's value is replaced only when its
// content changed, so an unchanged service keeps its *model.Service pointer
// from one snapshot to the next: consumers may memoise on it.
//
// When Consul is unreachable (requests fail, or hang as they do on a paused
// process) the Watcher keeps the last published snapshot: it never publishes
// a catalog emptied by errors. A cheap periodic probe notices an unanswering
// Consul within about a probe interval and notices its return just as fast,
// at which point every query is retried at once.
//
// Snapshots carry what Consul holds, unfiltered: odd names, port 0 or
// duplicate addresses pass through, and so does the "consul" service itself.
// Deciding what can be served belongs to the translator.
//
// This package owns everything that knows Consul's catalog API. It imports
// internal/model and internal/consulwatch and must not import the xDS
// packages (xdsserver/...), identity, or cmd.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
)

// Defaults for the Config fields.
const (
	DefaultWaitTime        = time.Minute
	DefaultMinInterval     = 50 * time.Millisecond
	DefaultCoalesce        = 50 * time.Millisecond
	DefaultProbeInterval   = 2 * time.Second
	DefaultMaxBackoff      = 5 * time.Second
	DefaultReadConcurrency = 8
	DefaultSweepInterval   = 2 * time.Minute
	DefaultWatchWaitTime   = 10 * time.Minute
)

const (
	// maxCoalesceFactor bounds how long a stream of changes can delay a
	// snapshot: at most maxCoalesceFactor*Coalesce after the first
	// unpublished change (200 ms by default), so that sustained churn
	// (changes closer together than Coalesce) still reaches clients within
	// the push budget, while a burst is still batched.
	maxCoalesceFactor = 4
	// maxUnexplained bounds the registration changes looked for at once
	// before a sweep looks at everything instead.
	maxUnexplained = 64
	// probeTag is a tag no instance carries: a health read narrowed by it
	// answers an empty list with the service's own index.
	probeTag = "trellis.index-probe.none"
	// minSweepGap separates the starts of two sweeps triggered by changes,
	// so that registration churn cannot turn sweeps into a busy loop.
	minSweepGap = 200 * time.Millisecond
)

// Config configures a Watcher.
type Config struct {
	// Client is the Consul API client. Required. Its HTTP client must not
	// time requests out sooner than WaitTime; the Watcher bounds every
	// request itself. Build it with consulwatch.NewClient to bound its
	// connections.
	Client *api.Client
	// Logger receives the Watcher's logs; pass one tagged with a component
	// attribute. Default: logs are discarded.
	Logger *slog.Logger
	// Registerer receives the trellis_catalog_* metrics.
	// Default: nil, no metrics are registered.
	Registerer prometheus.Registerer
	// ConsulMetrics counts failed Consul requests by kind. Default: nil.
	ConsulMetrics *consulwatch.Metrics
	// ACL receives what the token hides from the catalog: a service list
	// or checks filtered by ACLs, an empty service list, service reads
	// filtered by ACLs, 403s. Default: nil, not reported (filtered reads
	// are still never taken for the whole).
	ACL *consulwatch.ACL
	// ZoneMetaKeys are the metadata keys holding an instance's zone, tried
	// in order on the service's metadata, then in order on its node's
	// metadata; the first non-empty value wins. (Consul accepts only
	// letters, digits, '-' and '_' in metadata keys.) Default: ["zone"].
	ZoneMetaKeys []string
	// WaitTime is how long one blocking query waits for a change.
	// Default: 1m.
	WaitTime time.Duration
	// MinInterval is the minimum delay between the starts of two
	// successive blocking queries of one detector; a random jitter of up
	// to MinInterval is added. Default: 50ms.
	MinInterval time.Duration
	// Coalesce is the quiet period that batches a burst of changes into one
	// snapshot: a snapshot is published once no change arrived for
	// Coalesce, or at the latest 10*Coalesce after the first unpublished
	// change. Default: 50ms.
	Coalesce time.Duration
	// ProbeInterval is how often Consul's reachability is probed (a
	// leader lookup with a 1s timeout). Default: 2s.
	ProbeInterval time.Duration
	// MaxBackoff caps the delay between retries after errors. Retries start
	// after 250ms (or MaxBackoff if smaller) and double, with jitter.
	// Default: 5s.
	MaxBackoff time.Duration
	// ReadConcurrency bounds the service reads and index probes in flight
	// at once (each holds one connection while it runs). Default: 8.
	ReadConcurrency int
	// SweepInterval is the period of the background index sweep that
	// catches a registration change the detectors could not attribute;
	// catalogs above 2,000 services are swept less often, 60 ms per
	// service (10,000 services: every 10 minutes), so that background
	// sweeps average at most about 1,000 index reads a minute.
	// Default: 2m.
	SweepInterval time.Duration
	// Prober reads the indexes of many services at once for sweeps
	// (consulwatch.NewClientAndProber); its batches run on the readers,
	// at most ProbeBatches at a time. Default: nil, every index is probed
	// with its own request through Client.
	Prober IndexProber
	// ProbeBatches bounds the Prober batches in flight at once: give it
	// the Prober's connections. Default: consulwatch.DefaultProbeConns.
	ProbeBatches int
	// Watches is how many services are each watched with a blocking query
	// of their own, through WatchClient: a change to a watched service
	// reaches a snapshot with Consul's answer to that query, without a
	// detector or a sweep having to find it. The services beyond it (and
	// those the ACL token hides) are looked after by the detectors and
	// sweeps. Default: 0, no service is watched on its own.
	Watches int
	// WatchClient runs the per-service watches: it must carry Watches
	// concurrent blocking queries on a few connections, as
	// consulwatch.NewMultiplexedClient(cfg, Watches) does over HTTP/2.
	// Required with Watches.
	WatchClient *api.Client
	// WatchWaitTime is how long one per-service blocking query waits for
	// a change; a quiet catalog of 10,000 watched services costs Consul
	// about 10,000/WatchWaitTime requests. Default: 10m, the longest Consul waits.
	WatchWaitTime time.Duration
}

// IndexProber reads the indexes of many services at once: for each name,
// the X-Consul-Index of its health read narrowed by tag
// (consulwatch.IndexProber).
type IndexProber interface {
	ServiceIndexes(ctx context.Context, names []string, tag string) ([]uint64, error)
}

// Status describes the Watcher's view of Consul at one moment.
type Status struct {
	// Synced is true once the first complete snapshot has been published.
	Synced bool
	// Reachable is true while Consul answers: the probe succeeds and no
	// detector is failing. It is false until Consul first answers.
	Reachable bool
	// LastError is the error that made Consul unreachable; empty while it
	// is reachable.
	LastError string
	// LastErrorKind classifies LastError (rate limited, ACL, unreachable, ...).
	LastErrorKind consulwatch.Kind
	// LastContact is when Consul last answered a query or a probe.
	LastContact time.Time
	// Services is the number of services in the last published snapshot.
	Services int
	// Hidden lists, sorted, the services whose instances the ACL token
	// hides (health reads filtered by ACLs): each keeps its last complete
	// read, or is left out of the snapshots until it is read whole.
	Hidden []string
	// Reads counts service reads, Sweeps index sweeps, since the start.
	Reads, Sweeps uint64
	// Watches is the number of services watched each on its own.
	Watches int
}

// Watcher watches Consul and publishes snapshots. Create it with New and
// run it with Run.
type Watcher struct {
	cfg       Config
	logger    *slog.Logger
	metrics   metrics
	tracker   *consulwatch.Tracker
	snapshots *consulwatch.Latest[*model.Snapshot]
	running   atomic.Bool

	mu     sync.Mutex
	status Status
}

// metrics are the Watcher's Prometheus collectors.
type metrics struct {
	reachable prometheus.Gauge
	errors    prometheus.Counter
	services  prometheus.Gauge
	snapshots prometheus.Counter
	reads     *prometheus.CounterVec
	sweeps    prometheus.Counter
	probes    prometheus.Counter
	watches   prometheus.Gauge
}

// Reasons a service is read, as counted by trellis_catalog_reads_total.
const (
	reasonInitial = "initial"
	reasonList    = "list"
	reasonHealth  = "health"
	reasonSweep   = "sweep"
	reasonRetry   = "retry"
	reasonWatch   = "watch"
)

func newMetrics() metrics {
	m := metrics{
		reachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_catalog_consul_reachable",
			Help: "1 while Consul answers the catalog's queries and probes, 0 otherwise.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_errors_total",
			Help: "Failed Consul requests of the catalog watch (detectors, reads, probes).",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_catalog_services",
			Help: "Services in the last published catalog snapshot.",
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_snapshots_total",
			Help: "Catalog snapshots published.",
		}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_catalog_reads_total",
			Help: "Service reads from Consul, by what asked for them (initial, list, health, sweep, retry; watch: a per-service watch's answer with a new index).",
		}, []string{"reason"}),
		sweeps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_sweeps_total",
			Help: "Index sweeps run to find registration changes no detector attributed to a service.",
		}),
		probes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_index_probes_total",
			Help: "Per-service index probes sent by sweeps.",
		}),
		watches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_catalog_service_watches",
			Help: "Services watched each with a blocking query of its own (multiplexed over HTTP/2).",
		}),
	}
	for _, r := range []string{reasonInitial, reasonList, reasonHealth, reasonSweep, reasonRetry, reasonWatch} {
		m.reads.WithLabelValues(r)
	}
	return m
}

func (m metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.reachable, m.errors, m.services, m.snapshots, m.reads, m.sweeps, m.probes, m.watches} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// New checks cfg, fills in its defaults and registers the metrics. It does
// not contact Consul: Run does.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("catalog: Config.Client is required")
	}
	for _, d := range []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"WaitTime", &cfg.WaitTime, DefaultWaitTime},
		{"MinInterval", &cfg.MinInterval, DefaultMinInterval},
		{"Coalesce", &cfg.Coalesce, DefaultCoalesce},
		{"ProbeInterval", &cfg.ProbeInterval, DefaultProbeInterval},
		{"MaxBackoff", &cfg.MaxBackoff, DefaultMaxBackoff},
		{"SweepInterval", &cfg.SweepInterval, DefaultSweepInterval},
		{"WatchWaitTime", &cfg.WatchWaitTime, DefaultWatchWaitTime},
	} {
		switch {
		case *d.value < 0:
			return nil, fmt.Errorf("catalog: Config.%s is %s; accepted: a positive duration, or 0 for the default (%s)", d.name, *d.value, d.def)
		case *d.value == 0:
			*d.value = d.def
		}
	}
	switch {
	case cfg.ReadConcurrency < 0:
		return nil, fmt.Errorf("catalog: Config.ReadConcurrency is %d; accepted: a positive number, or 0 for the default (%d)", cfg.ReadConcurrency, DefaultReadConcurrency)
	case cfg.ReadConcurrency == 0:
		cfg.ReadConcurrency = DefaultReadConcurrency
	}
	switch {
	case cfg.ProbeBatches < 0:
		return nil, fmt.Errorf("catalog: Config.ProbeBatches is %d; accepted: a positive number, or 0 for the default (%d)", cfg.ProbeBatches, consulwatch.DefaultProbeConns)
	case cfg.ProbeBatches == 0:
		cfg.ProbeBatches = consulwatch.DefaultProbeConns
	}
	switch {
	case cfg.Watches < 0:
		return nil, fmt.Errorf("catalog: Config.Watches is %d; accepted: 0 (no per-service watch) or a positive number", cfg.Watches)
	case cfg.Watches > 0 && cfg.WatchClient == nil:
		return nil, fmt.Errorf("catalog: Config.Watches is %d without a Config.WatchClient; accepted: a client for that many concurrent blocking queries (consulwatch.NewMultiplexedClient)", cfg.Watches)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.ZoneMetaKeys) == 0 {
		cfg.ZoneMetaKeys = []string{"zone"}
	} else {
		cfg.ZoneMetaKeys = append([]string(nil), cfg.ZoneMetaKeys...)
	}

	w := &Watcher{
		cfg:       cfg,
		logger:    cfg.Logger,
		metrics:   newMetrics(),
		snapshots: consulwatch.NewLatest[*model.Snapshot](),
	}
	tracker, err := consulwatch.NewTracker(consulwatch.TrackerConfig{
		Client:        cfg.Client,
		Component:     "catalog",
		Logger:        cfg.Logger,
		Metrics:       cfg.ConsulMetrics,
		Reachable:     w.metrics.reachable,
		Errors:        w.metrics.errors,
		ProbeInterval: cfg.ProbeInterval,
		Keeping:       "keeping the last catalog snapshot",
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	w.tracker = tracker
	if cfg.Registerer != nil {
		if err := w.metrics.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("catalog: register metrics: %w", err)
		}
	}
	return w, nil
}

// Snapshots returns the channel on which snapshots are published. It has
// latest-value semantics: a reader that falls behind receives only the
// newest snapshot. The first snapshot arrives after the first complete sync
// (the service list and the health of every listed service). The channel is
// never closed. Snapshots are immutable: readers must not modify them.
func (w *Watcher) Snapshots() <-chan *model.Snapshot { return w.snapshots.C() }

// Latest returns the last published snapshot, nil before the first.
func (w *Watcher) Latest() *model.Snapshot {
	s, _ := w.snapshots.Load()
	return s
}

// Status returns the Watcher's current view of Consul.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	st := w.status
	st.Hidden = slices.Clone(w.status.Hidden)
	w.mu.Unlock()
	reach := w.tracker.Status()
	st.Reachable, st.LastError, st.LastErrorKind, st.LastContact = reach.Reachable, reach.LastError, reach.LastErrorKind, reach.LastContact
	return st
}

// Run watches Consul until ctx is done, then stops every goroutine it
// started and returns nil. Consul being unreachable is not an error: Run
// keeps retrying. It returns an error only when called more than once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("catalog: Run called more than once")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	c := newCoordinator(w, ctx, &wg)
	wg.Go(func() { w.tracker.Run(ctx) })
	wg.Go(func() { w.watchList(ctx, c.lists) })
	for _, state := range checkStates {
		wg.Go(func() { w.watchHealth(ctx, state, c.healths) })
	}
	for range w.cfg.ReadConcurrency {
		wg.Go(func() { w.readLoop(ctx, c.jobs, c.results) })
	}
	c.run(ctx)
	cancel()
	wg.Wait()
	return nil
}

// publish updates the status and metrics, then publishes snap.
func (w *Watcher) publish(snap *model.Snapshot) {
	w.metrics.snapshots.Inc()
	w.metrics.services.Set(float64(len(snap.Services)))
	w.mu.Lock()
	first := !w.status.Synced
	w.status.Synced = true
	w.status.Services = len(snap.Services)
	w.mu.Unlock()
	w.snapshots.Publish(snap)
	if first {
		w.logger.Info("first complete catalog sync", "services", len(snap.Services))
	} else {
		w.logger.Debug("published catalog snapshot", "services", len(snap.Services))
	}
}

// counted records a read or a sweep in the status.
func (w *Watcher) counted(reads, sweeps uint64) {
	w.mu.Lock()
	w.status.Reads += reads
	w.status.Sweeps += sweeps
	w.mu.Unlock()
}
