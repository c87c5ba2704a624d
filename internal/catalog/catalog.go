// Package catalog watches the Consul catalog and publishes immutable
// model.Snapshot values describing every service, its instances and their
// health.
//
// A Watcher runs one blocking query on the service list and one per listed
// service on its health (every instance with its node and service checks),
// so the load it puts on Consul grows with the number of services, never
// with the number of clients. Blocking queries follow consul-template's
// rules: an unchanged index or unchanged content publishes nothing, an index
// that went backwards restarts the query from 0, calls are spaced by a
// minimum interval plus jitter, and errors back off exponentially with
// jitter. Bursts of changes are coalesced into one snapshot.
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
// This package owns everything that knows Consul's API. It imports
// internal/model and must not import the xDS packages (xdsserver/...),
// identity, or cmd.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/model"
)

// Defaults for the Config fields.
const (
	DefaultWaitTime      = time.Minute
	DefaultMinInterval   = 100 * time.Millisecond
	DefaultCoalesce      = 100 * time.Millisecond
	DefaultProbeInterval = 2 * time.Second
	DefaultMaxBackoff    = 5 * time.Second
)

const (
	// probeTimeout bounds one reachability probe.
	probeTimeout = time.Second
	// baseBackoff is the delay before the first retry after an error.
	baseBackoff = 250 * time.Millisecond
	// queryMargin is added to a blocking query's wait time to get its
	// deadline: Consul adds up to WaitTime/16 of jitter, and the response
	// needs time to arrive.
	queryMargin = 5 * time.Second
	// recoveryWait is the wait time of the first query after a failure.
	recoveryWait = 10 * time.Millisecond
	// maxCoalesceFactor bounds how long a stream of changes can delay a
	// snapshot: at most maxCoalesceFactor*Coalesce after the first
	// unpublished change.
	maxCoalesceFactor = 10
)

// Config configures a Watcher.
type Config struct {
	// Client is the Consul API client. Required. Its HTTP client must not
	// time requests out sooner than WaitTime (api.DefaultConfig's has no
	// timeout); the Watcher bounds every request itself.
	Client *api.Client
	// Logger receives the Watcher's logs; pass one tagged with a component
	// attribute. Default: logs are discarded.
	Logger *slog.Logger
	// Registerer receives the trellis_catalog_* metrics.
	// Default: nil, no metrics are registered.
	Registerer prometheus.Registerer
	// ZoneMetaKeys are the metadata keys holding an instance's zone, tried
	// in order on the service's metadata, then in order on its node's
	// metadata; the first non-empty value wins. (Consul accepts only
	// letters, digits, '-' and '_' in metadata keys.) Default: ["zone"].
	ZoneMetaKeys []string
	// WaitTime is how long one blocking query waits for a change.
	// Default: 1m.
	WaitTime time.Duration
	// MinInterval is the minimum delay between the starts of two
	// successive blocking queries of one watch; a random jitter of up to
	// MinInterval is added. Default: 100ms.
	MinInterval time.Duration
	// Coalesce is the quiet period that batches a burst of changes into one
	// snapshot: a snapshot is published once no change arrived for
	// Coalesce, or at the latest 10*Coalesce after the first unpublished
	// change. Default: 100ms.
	Coalesce time.Duration
	// ProbeInterval is how often Consul's reachability is probed (a
	// leader lookup with a 1s timeout). Default: 2s.
	ProbeInterval time.Duration
	// MaxBackoff caps the delay between retries after errors. Retries start
	// after 250ms (or MaxBackoff if smaller) and double, with jitter.
	// Default: 5s.
	MaxBackoff time.Duration
}

// Status describes the Watcher's view of Consul at one moment.
type Status struct {
	// Synced is true once the first complete snapshot has been published.
	Synced bool
	// Reachable is true while Consul answers: the probe succeeds and no
	// query is failing. It is false until Consul first answers.
	Reachable bool
	// LastError is the error that made Consul unreachable; empty while it
	// is reachable.
	LastError string
	// LastContact is when Consul last answered a query or a probe.
	LastContact time.Time
	// Services is the number of services in the last published snapshot.
	Services int
}

// Watcher watches Consul and publishes snapshots. Create it with New and
// run it with Run.
type Watcher struct {
	cfg       Config
	logger    *slog.Logger
	metrics   metrics
	snapshots chan *model.Snapshot
	running   atomic.Bool
	// queryTimeout bounds one blocking query.
	queryTimeout time.Duration

	mu     sync.Mutex
	status Status
	// reachKnown is false until the first success or failure decides
	// Reachable.
	reachKnown bool
	// probeOK is the result of the last probe (true before the first).
	probeOK bool
	// failing holds the watches whose last query failed.
	failing map[*watchKey]error
	// wake is cancelled, and replaced, when the probe sees Consul again
	// after an outage: queries hung on the dead connection are then
	// cancelled and every watch retries at once.
	wake       context.Context
	cancelWake context.CancelFunc
}

// watchKey identifies one running watch.
type watchKey struct{ what string }

// metrics are the Watcher's Prometheus collectors.
type metrics struct {
	reachable prometheus.Gauge
	errors    prometheus.Counter
	services  prometheus.Gauge
	snapshots prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		reachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_catalog_consul_reachable",
			Help: "1 while Consul answers the catalog's queries and probes, 0 otherwise.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_errors_total",
			Help: "Failed Consul requests (blocking queries and reachability probes).",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_catalog_services",
			Help: "Services in the last published catalog snapshot.",
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_catalog_snapshots_total",
			Help: "Catalog snapshots published.",
		}),
	}
}

func (m metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.reachable, m.errors, m.services, m.snapshots} {
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
	} {
		switch {
		case *d.value < 0:
			return nil, fmt.Errorf("catalog: Config.%s is %s; accepted: a positive duration, or 0 for the default (%s)", d.name, *d.value, d.def)
		case *d.value == 0:
			*d.value = d.def
		}
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
		cfg:          cfg,
		logger:       cfg.Logger,
		metrics:      newMetrics(),
		snapshots:    make(chan *model.Snapshot, 1),
		queryTimeout: cfg.WaitTime + cfg.WaitTime/16 + queryMargin,
		probeOK:      true,
		failing:      make(map[*watchKey]error),
	}
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
func (w *Watcher) Snapshots() <-chan *model.Snapshot { return w.snapshots }

// Status returns the Watcher's current view of Consul.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
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

	w.mu.Lock()
	w.wake, w.cancelWake = context.WithCancel(context.Background())
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.cancelWake()
		w.mu.Unlock()
	}()

	var wg sync.WaitGroup
	events := make(chan event)
	wg.Go(func() { w.probeLoop(ctx) })
	wg.Go(func() { w.watchServiceList(ctx, events) })
	w.coordinate(ctx, events, &wg)
	cancel()
	wg.Wait()
	return nil
}

// event is a watch's news for the coordinator: either the service list or
// the instances of one service.
type event struct {
	// names is the sorted service list; set for the service list watch.
	names []string
	list  bool
	// watch and service are set for a service's health watch.
	watch   *serviceWatch
	service *model.Service
}

// serviceWatch is a running health watch of one service.
type serviceWatch struct {
	name   string
	cancel context.CancelFunc
}

// coordinate runs the health watches that the service list asks for,
// gathers their results and publishes coalesced snapshots, until ctx is
// done.
func (w *Watcher) coordinate(ctx context.Context, events chan event, wg *sync.WaitGroup) {
	var (
		watches  = make(map[string]*serviceWatch)
		services = make(map[string]*model.Service) // latest result per watched service
		haveList bool
		// published is the content of the last snapshot; nil before the
		// first.
		published map[string]*model.Service
		// pendingSince is when the first unpublished change arrived; zero
		// when nothing is pending.
		pendingSince time.Time
		timer        = time.NewTimer(time.Hour)
	)
	timer.Stop()
	defer func() {
		timer.Stop()
		for _, sw := range watches {
			sw.cancel()
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return

		case ev := <-events:
			if ev.list {
				haveList = true
				listed := make(map[string]bool, len(ev.names))
				for _, name := range ev.names {
					listed[name] = true
					if _, ok := watches[name]; !ok {
						wctx, wcancel := context.WithCancel(ctx)
						sw := &serviceWatch{name: name, cancel: wcancel}
						watches[name] = sw
						wg.Go(func() { w.watchService(wctx, sw, events) })
					}
				}
				for name, sw := range watches {
					if !listed[name] {
						sw.cancel()
						delete(watches, name)
						delete(services, name)
					}
				}
			} else {
				if watches[ev.service.Name] != ev.watch {
					continue // a result from a watch stopped meanwhile
				}
				services[ev.service.Name] = ev.service
			}
			now := time.Now()
			if pendingSince.IsZero() {
				pendingSince = now
			}
			delay := min(w.cfg.Coalesce, pendingSince.Add(maxCoalesceFactor*w.cfg.Coalesce).Sub(now))
			timer.Reset(max(delay, 0))

		case <-timer.C:
			pendingSince = time.Time{}
			if published == nil && !complete(haveList, watches, services) {
				// The first snapshot waits for a complete sync; the
				// missing results will arrive as events.
				continue
			}
			next := make(map[string]*model.Service, len(services))
			for name, svc := range services {
				next[name] = svc
			}
			if published != nil && sameServices(published, next) {
				continue
			}
			published = next
			w.publish(&model.Snapshot{Services: next})
		}
	}
}

// complete reports whether the service list and the health of every listed
// service have arrived.
func complete(haveList bool, watches map[string]*serviceWatch, services map[string]*model.Service) bool {
	if !haveList {
		return false
	}
	for name := range watches {
		if _, ok := services[name]; !ok {
			return false
		}
	}
	return true
}

// sameServices reports whether two snapshots hold the very same service
// values. Service values are immutable and replaced on every change, so
// pointer equality is content equality.
func sameServices(a, b map[string]*model.Service) bool {
	if len(a) != len(b) {
		return false
	}
	for name, svc := range a {
		if b[name] != svc {
			return false
		}
	}
	return true
}

// publish updates the status and metrics, then replaces any unread
// snapshot with snap, so that a reader of snap sees a status that counts
// it. Only the coordinator sends, so after draining the buffered channel the
// send never blocks.
func (w *Watcher) publish(snap *model.Snapshot) {
	w.metrics.snapshots.Inc()
	w.metrics.services.Set(float64(len(snap.Services)))
	w.mu.Lock()
	first := !w.status.Synced
	w.status.Synced = true
	w.status.Services = len(snap.Services)
	w.mu.Unlock()

	select {
	case <-w.snapshots:
	default:
	}
	w.snapshots <- snap
	if first {
		w.logger.Info("first complete catalog sync", "services", len(snap.Services))
	} else {
		w.logger.Debug("published catalog snapshot", "services", len(snap.Services))
	}
}
