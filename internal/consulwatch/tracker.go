package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for TrackerConfig.
const (
	DefaultProbeInterval = 2 * time.Second
	// probeTimeout bounds one reachability probe.
	probeTimeout = time.Second
)

// Metrics are the collectors shared by every Tracker of a process.
type Metrics struct {
	errors *prometheus.CounterVec

	// mu guards trackers: the Trackers made with these Metrics, whose
	// last contact is read at scrape time.
	mu       sync.Mutex
	trackers []*Tracker
}

// NewMetrics registers trellis_consul_errors_total{component,kind} and
// trellis_consul_last_contact_age_seconds{component} with reg. The age is
// computed at scrape time from each Tracker's LastContact, so that it
// grows while Consul is silent without anything updating it.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{errors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_consul_errors_total",
		Help: "Failed Consul requests (blocking queries, reads and probes), by component and by what the failure means (kind).",
	}, []string{"component", "kind"})}
	age := &lastContactCollector{m: m, vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "trellis_consul_last_contact_age_seconds",
		Help: "Seconds since Consul last answered a query or probe of the component (since the component started when it never did); with several watchers of one component, the oldest.",
	}, []string{"component"})}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.errors, age} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("consulwatch: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// lastContactCollector computes trellis_consul_last_contact_age_seconds
// at every scrape into vec.
type lastContactCollector struct {
	m *Metrics
	// mu serializes scrapes, each of which refills vec.
	mu  sync.Mutex
	vec *prometheus.GaugeVec
}

func (c *lastContactCollector) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

func (c *lastContactCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	trackers := slices.Clone(c.m.trackers)
	c.m.mu.Unlock()
	now := time.Now()
	oldest := map[string]time.Duration{}
	for _, t := range trackers {
		t.mu.Lock()
		since := t.reach.LastContact
		t.mu.Unlock()
		if since.IsZero() {
			since = t.created
		}
		age := max(now.Sub(since), 0)
		if prev, ok := oldest[t.cfg.Component]; !ok || age > prev {
			oldest[t.cfg.Component] = age
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vec.Reset()
	for component, age := range oldest {
		c.vec.WithLabelValues(component).Set(age.Seconds())
	}
	c.vec.Collect(ch)
}

// TrackerConfig configures a Tracker.
type TrackerConfig struct {
	// Client is probed for reachability. Default: nil, no probing (only
	// the watches' own results count).
	Client *api.Client
	// Component names the watching component in logs and metrics
	// ("catalog"). Required.
	Component string
	// Logger receives the reachability transitions. Default: discarded.
	Logger *slog.Logger
	// Metrics counts errors by kind and exports the age of the last
	// contact. Default: nil, not counted.
	Metrics *Metrics
	// Reachable, when set, is kept at 1 while Consul answers, 0 otherwise.
	Reachable prometheus.Gauge
	// Errors, when set, counts every failed request of the component.
	Errors prometheus.Counter
	// ProbeInterval is how often Run probes Consul (a leader lookup with a
	// 1s timeout). Default: DefaultProbeInterval (2s).
	ProbeInterval time.Duration
	// Keeping completes the log line when Consul becomes unreachable
	// ("keeping the last catalog snapshot"). Default: "keeping the last
	// values read".
	Keeping string
}

// Reach is a Tracker's view of Consul at one moment.
type Reach struct {
	// Reachable is true while Consul answers every watch and the probe.
	// It is false until Consul first answers.
	Reachable bool
	// LastError is the error that made Consul unreachable; empty while it
	// is reachable.
	LastError string
	// LastErrorKind classifies LastError.
	LastErrorKind Kind
	// LastContact is when Consul last answered a query or a probe.
	LastContact time.Time
}

// Tracker follows Consul's reachability for the watches of one component:
// Consul is reachable while the probe succeeds and no watch is failing. When
// the probe sees Consul again after a failure, every watch run with the
// Tracker is woken at once: its hung query is abandoned and its backoff cut
// short. A nil *Tracker is valid and tracks nothing.
type Tracker struct {
	cfg    TrackerConfig
	logger *slog.Logger
	// created stands for LastContact until Consul first answers.
	created time.Time

	mu         sync.Mutex
	reach      Reach
	known      bool
	probeOK    bool
	failing    map[*watchKey]*Error
	wake       context.Context
	cancelWake context.CancelFunc
}

// watchKey identifies one running watch.
type watchKey struct{ name string }

// NewTracker returns a Tracker; Run starts its probe.
func NewTracker(cfg TrackerConfig) (*Tracker, error) {
	if cfg.Component == "" {
		return nil, errors.New("consulwatch: TrackerConfig.Component is required")
	}
	if cfg.ProbeInterval < 0 {
		return nil, fmt.Errorf("consulwatch: TrackerConfig.ProbeInterval is %s; accepted: a positive duration, or 0 for the default (%s)", cfg.ProbeInterval, DefaultProbeInterval)
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Keeping == "" {
		cfg.Keeping = "keeping the last values read"
	}
	if cfg.Metrics != nil {
		for _, k := range Kinds() {
			cfg.Metrics.errors.WithLabelValues(cfg.Component, string(k))
		}
	}
	t := &Tracker{cfg: cfg, logger: cfg.Logger, created: time.Now(), probeOK: true, failing: map[*watchKey]*Error{}}
	t.wake, t.cancelWake = context.WithCancel(context.Background())
	if cfg.Metrics != nil {
		cfg.Metrics.mu.Lock()
		cfg.Metrics.trackers = append(cfg.Metrics.trackers, t)
		cfg.Metrics.mu.Unlock()
	}
	return t, nil
}

// Status returns the Tracker's current view.
func (t *Tracker) Status() Reach {
	if t == nil {
		return Reach{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reach
}

// Run probes Consul every ProbeInterval until ctx is done. Without a
// Client it only waits for ctx.
func (t *Tracker) Run(ctx context.Context) {
	defer func() {
		t.mu.Lock()
		t.cancelWake()
		t.mu.Unlock()
	}()
	if t.cfg.Client == nil {
		<-ctx.Done()
		return
	}
	ticker := time.NewTicker(t.cfg.ProbeInterval)
	defer ticker.Stop()
	for {
		t.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probe asks Consul for its leader, a cheap request that a paused or
// leaderless Consul fails within probeTimeout.
func (t *Tracker) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	leader, err := t.cfg.Client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(pctx))
	if ctx.Err() != nil {
		return
	}
	var werr *Error
	switch {
	case err != nil:
		werr = newError("probe", err)
	case leader == "":
		werr = &Error{Watch: "probe", Kind: KindNotReady, Err: errors.New("no cluster leader")}
	}
	t.probed(werr)
}

// log returns the Tracker's logger; a nil Tracker discards.
func (t *Tracker) log() *slog.Logger {
	if t == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.logger
}

// wakeContext returns the context cancelled when Consul is seen again after
// an outage. A nil Tracker's never is.
func (t *Tracker) wakeContext() context.Context {
	if t == nil {
		return context.Background()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.wake
}

func (t *Tracker) count(err *Error) {
	if t.cfg.Errors != nil {
		t.cfg.Errors.Inc()
	}
	if t.cfg.Metrics != nil {
		t.cfg.Metrics.errors.WithLabelValues(t.cfg.Component, string(err.Kind)).Inc()
	}
}

// probed records a probe result; a success after a failure wakes every
// watch.
func (t *Tracker) probed(err *Error) {
	t.mu.Lock()
	if err != nil {
		t.count(err)
		t.probeOK = false
		t.setErrorLocked(err)
	} else {
		if !t.probeOK {
			t.cancelWake()
			t.wake, t.cancelWake = context.WithCancel(context.Background())
		}
		t.probeOK = true
		t.reach.LastContact = time.Now()
	}
	log := t.updateLocked()
	t.mu.Unlock()
	log()
}

// Failure records a failed request that is not a watch's query (a one-off
// read), so that it is counted and shown in the status; it does not make
// Consul unreachable by itself.
func (t *Tracker) Failure(what string, err error) *Error {
	werr := newError(what, err)
	if t == nil {
		return werr
	}
	t.mu.Lock()
	t.count(werr)
	t.mu.Unlock()
	t.logger.Debug("Consul request failed", "component", t.cfg.Component, "request", what, "kind", string(werr.Kind), "error", werr.Err)
	return werr
}

// failure records a failed query of one watch.
func (t *Tracker) failure(key *watchKey, err *Error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.count(err)
	t.failing[key] = err
	t.setErrorLocked(err)
	log := t.updateLocked()
	t.mu.Unlock()
	t.logger.Debug("Consul query failed", "component", t.cfg.Component, "watch", err.Watch, "kind", string(err.Kind), "error", err.Err)
	log()
}

func (t *Tracker) setErrorLocked(err *Error) {
	t.reach.LastError = t.cfg.Component + ": " + err.Error()
	t.reach.LastErrorKind = err.Kind
}

// success records a successful query of one watch.
func (t *Tracker) success(key *watchKey) {
	if t == nil {
		return
	}
	t.mu.Lock()
	delete(t.failing, key)
	t.reach.LastContact = time.Now()
	if !t.probeOK {
		// Consul answered: it is back, whatever the last probe said.
		// Wake the other watches as the probe would.
		t.probeOK = true
		t.cancelWake()
		t.wake, t.cancelWake = context.WithCancel(context.Background())
	}
	log := t.updateLocked()
	t.mu.Unlock()
	log()
}

// forget drops a stopped watch from the failing set.
func (t *Tracker) forget(key *watchKey) {
	if t == nil {
		return
	}
	t.mu.Lock()
	_, ok := t.failing[key]
	delete(t.failing, key)
	log := func() {}
	if ok {
		log = t.updateLocked()
	}
	t.mu.Unlock()
	log()
}

// updateLocked recomputes Reachable and returns the logging to do, once
// t.mu is released, for a transition.
func (t *Tracker) updateLocked() (log func()) {
	reachable := t.probeOK && len(t.failing) == 0
	if t.known && reachable == t.reach.Reachable {
		return func() {}
	}
	first := !t.known
	t.known = true
	t.reach.Reachable = reachable
	if t.cfg.Reachable != nil {
		if reachable {
			t.cfg.Reachable.Set(1)
		} else {
			t.cfg.Reachable.Set(0)
		}
	}
	if reachable {
		t.reach.LastError, t.reach.LastErrorKind = "", ""
		if first {
			return func() { t.logger.Debug("Consul reachable", "component", t.cfg.Component) }
		}
		return func() { t.logger.Info("Consul answers again; watches resume", "component", t.cfg.Component) }
	}
	r := t.reach
	return func() {
		t.logger.Warn("cannot read from Consul; "+t.cfg.Keeping, "component", t.cfg.Component,
			"kind", string(r.LastErrorKind), "error", r.LastError, "last_contact", r.LastContact)
	}
}
