package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
)

// listEvent is one answer of the service-list detector.
type listEvent struct {
	// tags is every service's sorted tags, by name.
	tags  map[string][]string
	index uint64
	// filtered: the ACL token hides some services, so a service missing
	// from tags may still be registered.
	filtered bool
	// same: Consul answered exactly the bytes of the previous answer
	// (tags is then the previous answer's map): only the index moved.
	same bool
}

// serviceList is one answer of the service list, decoded.
type serviceList struct {
	tags map[string][]string
	body json.RawMessage
	same bool
}

// healthEvent is one answer of the non-passing checks detector.
type healthEvent struct {
	state  string // the checks' state: each detector watches one
	checks map[checkKey]checkState
	index  uint64
}

// checkKey identifies a check.
type checkKey struct{ node, id string }

// checkSummary is what the detectors read of a check in Consul's answer
// (api.HealthCheck's names).
type checkSummary struct {
	Node        string `json:"Node"`
	CheckID     string `json:"CheckID"`
	Status      string `json:"Status"`
	ServiceName string `json:"ServiceName"`
}

// checkState is what the detector compares of a non-passing check.
type checkState struct {
	status  string
	service string // "" for a node check
}

// job is one request for a reader: a full read of a service, an index
// probe, or a batch of index probes through Config.Prober.
type job struct {
	name  string
	probe bool
	batch []string
}

// result is a reader's answer.
type result struct {
	job
	svc     *model.Service // full reads only
	index   uint64
	indexes []uint64 // batches: the index of each name
	// checks are the checks of a full read's entries, the service's own
	// and its nodes', with their status.
	checks map[checkKey]checkState
	err    *consulwatch.Error
	// filtered: the ACL token hid some of the service's instances (full
	// reads only); svc is not the whole service.
	filtered bool
}

// checkStates are the states whose checks the health detectors watch,
// one blocking query each: every check that is not passing is in one of
// them (maintenance is critical). Consul answers a read by state from its
// index on status, in time proportional to the checks in that state; a
// filter on /v1/health/state/any would cost it a scan of every check of
// the catalog on each change (about 100 ms of its CPU for 100,000 checks).
var checkStates = []string{api.HealthCritical, api.HealthWarning}

// ACL sources and what they hide, as reported to Config.ACL.
const (
	aclSourceList   = "service list"
	aclSourceChecks = "checks that are not passing"
	aclSourceReads  = "service reads"
)

// watchList runs the service-list detector.
func (w *Watcher) watchList(ctx context.Context, out chan<- listEvent) {
	// empty and filtered describe the last answer; Fetch and Succeeded run
	// one after the other on this goroutine. A registration that changes
	// no service's tags (a new instance, an address edit) moves the list's
	// index and leaves its body byte for byte the same (Consul encodes
	// the map with sorted keys): the body last handed to the coordinator
	// spares decoding it, and the coordinator comparing it, at every such
	// change.
	var empty, filtered bool
	var lastBody json.RawMessage
	var lastTags map[string][]string
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[serviceList]{
		Name: "service list",
		Fetch: func(opts *api.QueryOptions) (serviceList, *api.QueryMeta, error) {
			var body json.RawMessage
			meta, err := w.cfg.Client.Raw().Query("/v1/catalog/services", &body, opts)
			if err != nil {
				return serviceList{}, nil, err
			}
			empty, filtered = len(lastTags) == 0, meta != nil && meta.ResultsFilteredByACLs
			if lastTags != nil && bytes.Equal(body, lastBody) {
				return serviceList{tags: lastTags, same: true}, meta, nil
			}
			var services map[string][]string
			if err := json.Unmarshal(body, &services); err != nil {
				return serviceList{}, nil, fmt.Errorf("decode the service list: %w", err)
			}
			tags := make(map[string][]string, len(services))
			for name, t := range services {
				tags[name] = sortedTags(t)
			}
			empty = len(services) == 0
			return serviceList{tags: tags, body: body}, meta, nil
		},
		Changed: func(list serviceList, meta *api.QueryMeta) bool {
			select {
			case out <- listEvent{tags: list.tags, index: meta.LastIndex, filtered: meta.ResultsFilteredByACLs, same: list.same}:
				if !list.same {
					lastBody, lastTags = list.body, list.tags
				}
				return true
			case <-ctx.Done():
				return false
			}
		},
		Succeeded: func(*api.QueryMeta) {
			hides := "some services: the service list is filtered by ACLs (services that leave it stay served until it is read whole)"
			if empty {
				// Consul always lists its own "consul" service: an empty
				// list is a hidden one (anonymous requests get it
				// without the filtered header).
				hides = `the whole catalog: the service list is empty, and Consul always lists its own "consul" service`
			}
			w.cfg.ACL.Answered("catalog", aclSourceList, empty || filtered, consulwatch.PermServiceRead, hides)
		},
		Failed:      func(err *consulwatch.Error, _ time.Duration) { w.cfg.ACL.Failed("catalog", aclSourceList, err) },
		WaitTime:    w.cfg.WaitTime,
		MinInterval: w.cfg.MinInterval,
		MaxBackoff:  w.cfg.MaxBackoff,
	})
}

// watchHealth runs the health detector of the checks in one state.
func (w *Watcher) watchHealth(ctx context.Context, state string, out chan<- healthEvent) {
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[map[checkKey]checkState]{
		Name: state + " checks",
		Fetch: func(opts *api.QueryOptions) (map[checkKey]checkState, *api.QueryMeta, error) {
			// What api.Health.State asks, decoded into the four fields the
			// detector compares: the answer holds every check in the
			// state across the catalog, each with its output, notes,
			// tags and definition, and is decoded again at every check
			// change anywhere (BenchmarkDecodeNonPassingChecks: less
			// than half the time, a fifth of the garbage).
			var checks []checkSummary
			meta, err := w.cfg.Client.Raw().Query("/v1/health/state/"+url.PathEscape(state), &checks, opts)
			if err != nil {
				return nil, nil, err
			}
			m := make(map[checkKey]checkState, len(checks))
			for _, c := range checks {
				if c.Status != state {
					continue
				}
				m[checkKey{node: c.Node, id: c.CheckID}] = checkState{status: c.Status, service: c.ServiceName}
			}
			return m, meta, nil
		},
		Changed: func(checks map[checkKey]checkState, meta *api.QueryMeta) bool {
			select {
			case out <- healthEvent{state: state, checks: checks, index: meta.LastIndex}:
				return true
			case <-ctx.Done():
				return false
			}
		},
		Succeeded: func(meta *api.QueryMeta) {
			w.cfg.ACL.Answered("catalog", aclSourceChecks+" ("+state+")", meta.ResultsFilteredByACLs, consulwatch.PermNodeRead,
				"the status of checks on nodes it may not read: the "+state+" checks are filtered by ACLs")
		},
		Failed: func(err *consulwatch.Error, _ time.Duration) {
			w.cfg.ACL.Failed("catalog", aclSourceChecks+" ("+state+")", err)
		},
		WaitTime:    w.cfg.WaitTime,
		MinInterval: w.cfg.MinInterval,
		MaxBackoff:  w.cfg.MaxBackoff,
	})
}

// readLoop serves jobs until ctx is done.
func (w *Watcher) readLoop(ctx context.Context, jobs <-chan job, results chan<- result) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-jobs:
			r := w.do(ctx, j)
			select {
			case results <- r:
			case <-ctx.Done():
				return
			}
		}
	}
}

// readTimeout bounds one read or probe.
const readTimeout = 15 * time.Second

const (
	// probeBatch is the number of services of one Prober batch: a few
	// milliseconds of Consul's time, so that a sweep looking for one
	// change stops soon after a batch finds it.
	probeBatch = 256
	// proberRetry is how long probes go one by one after a failed batch.
	proberRetry = time.Minute
)

// do runs one job.
func (w *Watcher) do(ctx context.Context, j job) result {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	if len(j.batch) > 0 {
		indexes, err := w.cfg.Prober.ServiceIndexes(rctx, j.batch, probeTag)
		if err != nil {
			w.cfg.ACL.Failed("catalog", aclSourceReads, err)
			return result{job: j, err: w.tracker.Failure(fmt.Sprintf("probe %d services", len(j.batch)), err)}
		}
		return result{job: j, indexes: indexes}
	}
	opts := (&api.QueryOptions{}).WithContext(rctx)
	tag := ""
	what := "read service " + j.name
	if j.probe {
		tag, what = probeTag, "probe service "+j.name
	}
	entries, meta, err := w.cfg.Client.Health().Service(j.name, tag, false, opts)
	switch {
	case err != nil:
	case meta == nil:
		err = errNoMeta
	case meta.LastIndex <= 1 && !meta.KnownLeader:
		// A Consul restoring its state after a restart answers from an
		// empty store: not this service's instances.
		err = errNotReady
	}
	if err != nil {
		w.cfg.ACL.Failed("catalog", aclSourceReads, err)
		return result{job: j, err: w.tracker.Failure(what, err)}
	}
	if j.probe {
		return result{job: j, index: meta.LastIndex}
	}
	return w.readResult(j, entries, meta)
}

// readResult is the result of a full read of a service.
func (w *Watcher) readResult(j job, entries []*api.ServiceEntry, meta *api.QueryMeta) result {
	r := result{job: j, index: meta.LastIndex}
	r.svc = buildService(j.name, entries, w.cfg.ZoneMetaKeys)
	r.filtered = meta.ResultsFilteredByACLs
	r.checks = map[checkKey]checkState{}
	for _, e := range entries {
		for _, c := range e.Checks {
			if c != nil {
				r.checks[checkKey{node: c.Node, id: c.CheckID}] = checkState{status: c.Status, service: c.ServiceName}
			}
		}
	}
	return r
}

// watchAnswer is a per-service watch's answer with a new index.
type watchAnswer struct {
	id uint64 // the watch's, see serviceWatch
	result
}

// serviceWatch is a running per-service watch.
type serviceWatch struct {
	id     uint64
	cancel context.CancelFunc
}

// watchService runs the blocking query of one service, from index (the
// one it was last read at), handing every answer whose index moved to out.
func (w *Watcher) watchService(ctx context.Context, name string, id, index uint64, out chan<- watchAnswer) {
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[result]{
		Name:  "service " + name,
		Index: index,
		Fetch: func(opts *api.QueryOptions) (result, *api.QueryMeta, error) {
			// A blocking health read is served by the agent's streaming
			// backend (use_streaming_backend, on by default), which
			// drops what the token may not see without saying so
			// (no X-Consul-Results-Filtered-By-ACLs): a partial service
			// would pass for the whole. A read sorted near a node is
			// always a blocking query on the servers, which says so. The
			// sort costs one coordinate lookup and does not wake the
			// query; buildService orders the instances itself.
			opts.Near = "_agent"
			entries, meta, err := w.cfg.WatchClient.Health().Service(name, "", false, opts)
			if err != nil || meta == nil {
				return result{}, meta, err
			}
			return w.readResult(job{name: name}, entries, meta), meta, nil
		},
		Changed: func(r result, _ *api.QueryMeta) bool {
			select {
			case out <- watchAnswer{id: id, result: r}:
				return true
			case <-ctx.Done():
				return false
			}
		},
		Failed:      func(err *consulwatch.Error, _ time.Duration) { w.cfg.ACL.Failed("catalog", aclSourceReads, err) },
		WaitTime:    w.cfg.WatchWaitTime,
		MinInterval: w.cfg.MinInterval,
		// Every retry waits the whole backoff: see watchBackoffPerWatch.
		FirstBackoff: w.watchBackoff(),
		MaxBackoff:   w.watchBackoff(),
		// The detectors and the probe speak for Consul's reachability.
		Secondary: true,
	})
}

// watchBackoffPerWatch spaces the retries of failing per-service watches
// so that together they send Consul at most about 100 requests a second
// (10,000 watches: each retries every 100 s) while it refuses them (a
// revoked token, rate limiting): one Consul problem fails them all at
// once, and thousands of exponential backoffs starting at 250 ms would
// hammer it. A Consul that was unreachable does not wait for them: the
// Tracker wakes every watch as soon as it answers again.
const watchBackoffPerWatch = 10 * time.Millisecond

// watchBackoff caps the wait between a per-service watch's failed queries.
func (w *Watcher) watchBackoff() time.Duration {
	return max(w.cfg.MaxBackoff, time.Duration(w.cfg.Watches)*watchBackoffPerWatch)
}

type constError string

func (e constError) Error() string { return string(e) }

const (
	errNoMeta   = constError("no query metadata in the response")
	errNotReady = constError("Consul has no leader and an empty state (still starting)")
)

// entry is the coordinator's state of one listed service.
type entry struct {
	svc *model.Service // nil until first read whole
	// hidden: the last read was filtered by ACLs; svc is the last whole
	// read, nil when there was none (the service is not published).
	hidden bool
	index  uint64 // the service's index at its last read
	tags   []string
	nodes  []string // nodes of its instances at the last read
	// queued: a read is waiting; reading: a read is in flight; again: a
	// trigger arrived while it was in flight, read once more.
	queued, reading, again bool
	reason                 string
	retries                int
	// watch is the service's own watch, nil when it has none: a watched
	// service is never read, probed or swept, its watch answers instead.
	watch *serviceWatch
	// lastChange is when a read last found the service changed; sweeps
	// probe the most recently changed services first, since changes come
	// in bursts (a deploy registers, then deregisters, instances).
	lastChange time.Time
}

// coordinator owns the catalog state: it turns detector answers into reads,
// runs sweeps, and publishes coalesced snapshots. Only its goroutine
// touches its fields.
type coordinator struct {
	w       *Watcher
	lists   chan listEvent
	healths chan healthEvent
	jobs    chan job
	results chan result
	answers chan watchAnswer

	// ctx and wg own the per-service watches' goroutines.
	ctx      context.Context
	wg       *sync.WaitGroup
	watching int    // running per-service watches
	watchSeq uint64 // the last watch's id
	// applied are the indexes that reads and watch answers found
	// services at, the latest appliedKept of them (appliedOrder): a list
	// index among them is accounted for when the list's answer arrives
	// after the service's.
	applied      map[uint64]bool
	appliedOrder []uint64

	services  map[string]*entry
	nodeIndex map[string]map[string]bool // node -> services with instances on it
	// checks is what the coordinator knows of the checks that are not
	// passing: each state's detector answers, and what reads found since.
	// A detector compares its answer with it, not with its own last
	// answer: a check can enter a state and leave it again between two
	// answers of that state's detector, while a read (prompted by the
	// other detector) saw it in it.
	checks     map[checkKey]checkState
	haveList   bool
	haveHealth map[string]bool // by state: its detector answered
	listIndex  uint64
	readQueue  []string
	inflight   int
	retryAt    map[string]time.Time
	// unexplained are the list indexes no read has accounted for yet,
	// each with the generation of the sweeps it was recorded in (see
	// sweepGen): a sweep of a later generation looked at every service
	// after it was written.
	unexplained map[uint64]uint64
	sweepGen    uint64   // counts the sweeps started
	sweepQueue  []string // services left to probe in the running sweep
	// byName is every service's name, sorted; nil once a service came
	// or went, until the next sweep sorts them again.
	byName  []string
	batches int // Prober batches in flight
	// proberFailed is when a Prober batch last failed: probes go one by
	// one until proberRetry has passed.
	proberFailed time.Time
	sweeping     bool
	sweepAgain   bool
	// sweepNotBefore delays a requested cancellable sweep.
	sweepNotBefore time.Time
	// againCancellable and sweepCancellable: the requested (running)
	// sweep only looks for the unexplained index, and stops once a read
	// accounts for it.
	againCancellable, sweepCancellable bool
	lastSweep                          time.Time
	nextSweep                          time.Time // the background sweep
	dirty                              bool      // unpublished changes
	published                          bool
	// last is the last published snapshot; touched names the services
	// whose entry changed since (model.Snapshot.Next).
	last       *model.Snapshot
	touched    map[string]bool
	pending    time.Time // first unpublished change
	quietUntil time.Time
}

func newCoordinator(w *Watcher, ctx context.Context, wg *sync.WaitGroup) *coordinator {
	n := w.cfg.ReadConcurrency
	return &coordinator{
		w:         w,
		lists:     make(chan listEvent),
		healths:   make(chan healthEvent),
		jobs:      make(chan job, n),
		results:   make(chan result, n),
		answers:   make(chan watchAnswer),
		ctx:       ctx,
		wg:        wg,
		applied:   map[uint64]bool{},
		services:  map[string]*entry{},
		nodeIndex: map[string]map[string]bool{},
		retryAt:   map[string]time.Time{},
		touched:   map[string]bool{},

		checks:     map[checkKey]checkState{},
		haveHealth: map[string]bool{},

		unexplained: map[uint64]uint64{},
	}
}

func (c *coordinator) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	c.nextSweep = time.Now().Add(c.w.cfg.SweepInterval)
	for {
		c.dispatch()
		c.arm(timer)
		select {
		case <-ctx.Done():
			return
		case ev := <-c.lists:
			c.onList(ev)
		case ev := <-c.healths:
			c.onHealth(ev)
		case r := <-c.results:
			c.onResult(r)
		case a := <-c.answers:
			c.onAnswer(a)
		case <-timer.C:
		}
		c.tick(time.Now())
	}
}

// arm sets timer to the next deadline: a publish, an unexplained index's
// grace, a retry, the background sweep.
func (c *coordinator) arm(timer *time.Timer) {
	timer.Reset(max(time.Until(c.nextDeadline()), 0))
}

// nextDeadline is the earliest deadline tick acts on.
func (c *coordinator) nextDeadline() time.Time {
	next := c.nextSweep
	consider := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	if c.dirty {
		consider(c.publishAt())
	}
	for _, t := range c.retryAt {
		consider(t)
	}
	if c.sweepAgain && !c.sweeping {
		// The sweep starts once both have passed (tick).
		consider(later(c.lastSweep.Add(minSweepGap), c.sweepNotBefore))
	}
	return next
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// backgroundSweepPerService spaces background sweeps so that they cost
// Consul at most about 1,000 index reads a minute, whatever the catalog's
// size.
const backgroundSweepPerService = 60 * time.Millisecond

// backgroundSweepEvery is the period of the background sweep:
// Config.SweepInterval, longer for catalogs large enough that a sweep
// every SweepInterval would average more than 1,000 index reads a minute
// (10,000 services: every 10 minutes). It only catches what a race
// between the detectors could hide; every change a detector sees is
// looked for at once.
func (c *coordinator) backgroundSweepEvery() time.Duration {
	return max(c.w.cfg.SweepInterval, time.Duration(len(c.services))*backgroundSweepPerService)
}

// publishAt is when pending changes are published.
func (c *coordinator) publishAt() time.Time {
	latest := c.pending.Add(maxCoalesceFactor * c.w.cfg.Coalesce)
	if c.quietUntil.Before(latest) {
		return c.quietUntil
	}
	return latest
}

// tick acts on the deadlines that passed.
func (c *coordinator) tick(now time.Time) {
	for name, t := range c.retryAt {
		if !t.After(now) {
			delete(c.retryAt, name)
			c.queueRead(name, reasonRetry)
		}
	}
	if !c.nextSweep.After(now) {
		c.nextSweep = now.Add(c.backgroundSweepEvery())
		if c.published {
			c.w.logger.Debug("background sweep")
			c.requestSweep(false)
		}
	}
	if c.sweepAgain && !c.sweeping && !c.lastSweep.Add(minSweepGap).After(now) && !c.sweepNotBefore.After(now) {
		c.startSweep(now)
	}
	if c.dirty && !c.publishAt().After(now) {
		c.publish()
	}
}

// changed notes an unpublished change.
func (c *coordinator) changed() {
	now := time.Now()
	if !c.dirty {
		c.dirty = true
		c.pending = now
	}
	c.quietUntil = now.Add(c.w.cfg.Coalesce)
}

func (c *coordinator) onList(ev listEvent) {
	first := !c.haveList
	c.haveList = true
	if first {
		c.changed() // an empty catalog is a complete one
	}
	if ev.same && !first {
		// The services and their tags are what the last answer said.
		c.onListIndex(ev, false)
		return
	}
	for name, tags := range ev.tags {
		e, ok := c.services[name]
		switch {
		case !ok:
			c.services[name] = &entry{tags: tags}
			c.byName = nil
			reason := reasonList
			if first {
				reason = reasonInitial
			}
			c.queueRead(name, reason)
		case !slices.Equal(e.tags, tags):
			e.tags = tags
			c.queueRead(name, reasonList)
		}
	}
	hiddenGone, removed := false, false
	for name, e := range c.services {
		if _, ok := ev.tags[name]; ok || ev.filtered {
			// A list filtered by ACLs cannot tell a deregistered
			// service from a hidden one: keep it.
			continue
		}
		c.dropNodes(name, e.nodes)
		c.stopWatch(e)
		hiddenGone = hiddenGone || e.hidden
		delete(c.services, name)
		c.byName = nil
		delete(c.retryAt, name)
		c.touched[name] = true
		removed = true
		c.changed()
	}
	if hiddenGone {
		c.reportHidden()
	}
	if removed {
		c.fillWatches()
	}
	c.onListIndex(ev, first || removed)
}

// onListIndex looks for the registration change behind a new index of the
// service list, unless the list's answer accounted for it (explained).
func (c *coordinator) onListIndex(ev listEvent, explained bool) {
	switch {
	case ev.index <= c.listIndex:
	case explained:
		// The first answer, or the write at this index removed a
		// service's last instance: the list itself accounts for it.
	case c.applied[ev.index]:
		// A read or a watch answer already found a service written at
		// this index.
	case len(c.unexplained) >= maxUnexplained:
		// Too many registration changes unaccounted for at once: look at
		// every service, and forget them.
		c.w.logger.Debug("registration changes not accounted for; full sweep", "index", ev.index, "unexplained", len(c.unexplained))
		clear(c.unexplained)
		c.requestSweep(false)
	default:
		// A registration changed somewhere. A sweep looks for it at
		// once; the reads just queued, or the health detector's, may
		// account for it first, and then the sweep stops.
		c.w.logger.Debug("registration change somewhere; looking for it", "index", ev.index)
		c.unexplained[ev.index] = c.sweepGen
		c.requestSweep(true)
	}
	c.listIndex = ev.index
}

func (c *coordinator) onHealth(ev healthEvent) {
	first := !c.haveHealth[ev.state]
	c.haveHealth[ev.state] = true
	affected := map[string]bool{}
	note := func(k checkKey, st checkState) {
		if st.service != "" {
			affected[st.service] = true
			return
		}
		for name := range c.nodeIndex[k.node] {
			affected[name] = true
		}
	}
	for k, st := range ev.checks {
		if old, ok := c.checks[k]; !ok || old != st {
			note(k, st)
			c.checks[k] = st
		}
	}
	for k, st := range c.checks {
		if _, ok := ev.checks[k]; !ok && st.status == ev.state {
			note(k, st)
			delete(c.checks, k)
		}
	}
	if first {
		c.changed()
		return // the initial reads cover the initial state
	}
	for _, name := range slices.Sorted(maps.Keys(affected)) {
		if _, ok := c.services[name]; ok {
			c.queueRead(name, reasonHealth)
		}
	}
}

// queueRead asks for a full read of a listed service.
func (c *coordinator) queueRead(name, reason string) {
	e, ok := c.services[name]
	if !ok || e.watch != nil {
		return // a watched service's watch answers any change
	}
	if e.reading {
		e.again = true
		return
	}
	if e.queued {
		return
	}
	e.queued = true
	e.reason = reason
	c.readQueue = append(c.readQueue, name)
}

// dispatch hands queued reads, then sweep probes, to idle readers. The jobs
// channel's buffer equals the number of readers, so sends never block.
func (c *coordinator) dispatch() {
	for c.inflight < cap(c.jobs) && len(c.readQueue) > 0 {
		name := c.readQueue[0]
		c.readQueue = c.readQueue[1:]
		e, ok := c.services[name]
		if !ok || !e.queued {
			continue
		}
		e.queued, e.reading = false, true
		c.w.metrics.reads.WithLabelValues(e.reason).Inc()
		c.jobs <- job{name: name}
		c.inflight++
	}
	batched := c.w.cfg.Prober != nil && time.Since(c.proberFailed) >= proberRetry
	for batched && c.batches < c.w.cfg.ProbeBatches && c.inflight < cap(c.jobs) && len(c.sweepQueue) > 0 {
		var batch []string
		for len(batch) < probeBatch && len(c.sweepQueue) > 0 {
			name := c.sweepQueue[0]
			c.sweepQueue = c.sweepQueue[1:]
			e, ok := c.services[name]
			if !ok || e.queued || e.reading || e.svc == nil || e.watch != nil {
				continue // being read anyway, or watched
			}
			batch = append(batch, name)
		}
		if len(batch) == 0 {
			break
		}
		c.w.metrics.probes.Add(float64(len(batch)))
		c.jobs <- job{probe: true, batch: batch}
		c.inflight++
		c.batches++
	}
	for !batched && c.inflight < cap(c.jobs) && len(c.sweepQueue) > 0 {
		name := c.sweepQueue[0]
		c.sweepQueue = c.sweepQueue[1:]
		e, ok := c.services[name]
		if !ok || e.queued || e.reading || e.svc == nil || e.watch != nil {
			continue // being read anyway, or watched
		}
		c.w.metrics.probes.Inc()
		c.jobs <- job{name: name, probe: true}
		c.inflight++
	}
	if c.sweeping && len(c.sweepQueue) == 0 && c.inflight == 0 {
		c.sweeping = false
		// Every service was looked at after the indexes recorded before
		// this sweep began: what no probe accounted for (a write that
		// left no trace in any service's index) is not looked for again.
		for idx, gen := range c.unexplained {
			if gen < c.sweepGen {
				delete(c.unexplained, idx)
			}
		}
	}
}

func (c *coordinator) onResult(r result) {
	if len(r.batch) > 0 {
		c.inflight--
		c.batches--
		if r.err != nil {
			// Probe these one by one, and the next batches too for a
			// while: a Consul behind something that does not serve
			// pipelined requests still gets swept.
			c.proberFailed = time.Now()
			c.w.logger.Warn("batched index probes failed; probing one service per request for a while", "services", len(r.batch), "retry_in", proberRetry, "error", r.err)
			c.sweepQueue = append(slices.Clone(r.batch), c.sweepQueue...)
			return
		}
		for i, name := range r.batch {
			c.inflight++ // onResult counts each name as a job of its own
			c.onResult(result{job: job{name: name, probe: true}, index: r.indexes[i]})
		}
		return
	}
	c.inflight--
	e, ok := c.services[r.name]
	if !ok {
		return // removed meanwhile
	}
	if r.probe {
		if r.err != nil {
			return
		}
		if r.index != e.index {
			c.queueRead(r.name, reasonSweep)
		}
		if _, ok := c.unexplained[r.index]; ok {
			c.explained(r.name, r.index)
		}
		c.noteApplied(r.index)
		return
	}
	e.reading = false
	c.w.counted(1, 0)
	c.applyRead(r.name, e, r)
}

// onAnswer applies a per-service watch's answer.
func (c *coordinator) onAnswer(a watchAnswer) {
	e, ok := c.services[a.name]
	if !ok || e.watch == nil || e.watch.id != a.id {
		return // from a watch stopped since
	}
	if a.filtered {
		// The token hides some of the service's instances now: reads
		// keep its last whole read and try again (applyRead), and the
		// first whole one watches it again.
		c.stopWatch(e)
	}
	c.w.metrics.reads.WithLabelValues(reasonWatch).Inc()
	c.applyRead(a.name, e, a.result)
}

// applyRead applies a full read of a listed service, or a watch's answer.
func (c *coordinator) applyRead(name string, e *entry, r result) {
	if r.err != nil {
		e.retries++
		c.retryAt[r.name] = time.Now().Add(min(time.Duration(e.retries)*250*time.Millisecond, c.w.cfg.MaxBackoff))
		return
	}
	if r.filtered {
		// The token hides some instances: this is not the service. Keep
		// its last whole read (or leave it out) and read it again, more
		// and more slowly, for a token that gains the permission.
		if !e.hidden {
			e.hidden = true
			c.reportHidden()
			if e.svc == nil {
				c.changed() // the first snapshot need not wait for it
			}
		}
		e.retries++
		c.retryAt[r.name] = time.Now().Add(min(time.Duration(e.retries)*250*time.Millisecond, max(c.w.cfg.MaxBackoff, hiddenRetryMax)))
		if e.again {
			e.again = false
			c.queueRead(r.name, reasonRetry)
		}
		return
	}
	if e.hidden {
		e.hidden = false
		defer c.reportHidden()
	}
	e.retries = 0
	c.learnChecks(r.checks)
	if _, ok := c.unexplained[r.index]; ok {
		c.explained(r.name, r.index)
	} else if e.svc != nil && len(c.unexplained) > 0 && !sameRegistrations(e.svc, r.svc) {
		// Written again since: it accounts for one earlier index, the
		// latest (a read accounting for too few only costs a sweep).
		var latest uint64
		for idx := range c.unexplained {
			if idx < r.index && idx > latest {
				latest = idx
			}
		}
		if latest != 0 {
			c.explained(r.name, latest)
		}
	}
	e.index = r.index
	c.noteApplied(r.index)
	if e.svc == nil || !reflect.DeepEqual(e.svc, r.svc) {
		e.lastChange = time.Now()
		c.dropNodes(r.name, e.nodes)
		e.svc = r.svc
		c.touched[r.name] = true
		e.nodes = instanceNodes(r.svc)
		for _, n := range e.nodes {
			if c.nodeIndex[n] == nil {
				c.nodeIndex[n] = map[string]bool{}
			}
			c.nodeIndex[n][r.name] = true
		}
		c.changed()
	}
	if c.startWatch(name, e) {
		// The watch blocks at this read's index: it answers whatever
		// the trigger that arrived meanwhile changed.
		e.again = false
		return
	}
	if e.again {
		e.again = false
		c.queueRead(r.name, reasonRetry)
	}
}

// appliedKept is how many indexes of reads and watch answers are kept
// (coordinator.applied).
const appliedKept = 256

// noteApplied records that a read found a service at index.
func (c *coordinator) noteApplied(index uint64) {
	if c.applied[index] {
		return
	}
	c.applied[index] = true
	c.appliedOrder = append(c.appliedOrder, index)
	if len(c.appliedOrder) > appliedKept {
		delete(c.applied, c.appliedOrder[0])
		c.appliedOrder = c.appliedOrder[1:]
	}
}

// startWatch gives a service read whole its own watch, blocking at the
// read's index, if Config.Watches allows one more; it reports whether the
// service is watched.
func (c *coordinator) startWatch(name string, e *entry) bool {
	if e.watch != nil {
		return true
	}
	if c.watching >= c.w.cfg.Watches || e.hidden || e.svc == nil || e.queued || e.reading {
		return false
	}
	c.watchSeq++
	ctx, cancel := context.WithCancel(c.ctx)
	e.watch = &serviceWatch{id: c.watchSeq, cancel: cancel}
	delete(c.retryAt, name)
	c.setWatching(c.watching + 1)
	id, index, answers := c.watchSeq, e.index, c.answers
	c.wg.Go(func() { c.w.watchService(ctx, name, id, index, answers) })
	return true
}

// stopWatch stops a service's watch, if it has one.
func (c *coordinator) stopWatch(e *entry) {
	if e.watch == nil {
		return
	}
	e.watch.cancel()
	e.watch = nil
	c.setWatching(c.watching - 1)
}

// fillWatches gives the watches that services removed left free to
// services read whole and not watched yet.
func (c *coordinator) fillWatches() {
	if c.watching >= c.w.cfg.Watches || len(c.services) <= c.watching {
		return
	}
	for name, e := range c.services {
		if c.watching >= c.w.cfg.Watches {
			return
		}
		c.startWatch(name, e)
	}
}

func (c *coordinator) setWatching(n int) {
	c.watching = n
	c.w.metrics.watches.Set(float64(n))
	c.w.mu.Lock()
	c.w.status.Watches = n
	c.w.mu.Unlock()
}

// learnChecks records the checks a read found: those not passing as they
// are, the passing ones as such. (A check the read no longer has, gone
// with its instance, stays until its state's detector answers without it,
// which costs one more read at most.)
func (c *coordinator) learnChecks(read map[checkKey]checkState) {
	for k, st := range read {
		if st.status == api.HealthPassing {
			delete(c.checks, k)
		} else {
			c.checks[k] = st
		}
	}
}

// explained records that the service name accounts for the unexplained
// list index: it was written at that very index (a service's index is the
// raft index of its last write), or a read found its registrations changed
// since. A sweep looking only for that index stops.
func (c *coordinator) explained(name string, index uint64) {
	c.w.logger.Debug("registration change accounted for", "service", name, "index", index, "still_unexplained", len(c.unexplained)-1)
	delete(c.unexplained, index)
	if len(c.unexplained) > 0 {
		return // the sweep goes on for the others
	}
	if c.sweeping && c.sweepCancellable {
		c.sweepQueue = nil
	}
	if c.sweepAgain && c.againCancellable {
		c.sweepAgain = false
	}
}

func (c *coordinator) dropNodes(name string, nodes []string) {
	for _, n := range nodes {
		delete(c.nodeIndex[n], name)
		if len(c.nodeIndex[n]) == 0 {
			delete(c.nodeIndex, n)
		}
	}
}

// requestSweep asks for a sweep as soon as the previous one is done and the
// minimum gap has passed.
// A cancellable sweep only looks for the unexplained list index.
//
// A cancellable sweep starts after a short grace (2*MinInterval): the
// health detector's answer to the same registration, and the read it asks
// for, usually account for the change first, and the sweep is not needed.
func (c *coordinator) requestSweep(cancellable bool) {
	if cancellable {
		c.sweepNotBefore = time.Now().Add(2 * c.w.cfg.MinInterval)
	} else {
		c.sweepNotBefore = time.Time{}
	}
	if !c.sweepAgain {
		c.sweepAgain, c.againCancellable = true, cancellable
		return
	}
	c.againCancellable = c.againCancellable && cancellable
}

func (c *coordinator) startSweep(now time.Time) {
	c.sweepAgain = false
	c.sweeping = true
	c.sweepGen++
	c.sweepCancellable = c.againCancellable
	c.lastSweep = now
	c.sweepQueue = c.sweepOrder()
	c.w.metrics.sweeps.Inc()
	c.w.counted(0, 1)
	c.w.logger.Debug("index sweep", "services", len(c.sweepQueue))
}

// sweepOrder is the order a sweep probes the services in: the
// probeBatch most recently changed first, newest first (a registration
// change often follows others to the same service), then every other
// service by name. Only the times are sorted whole: a sweep of 10,000
// services starts in a fraction of a millisecond.
func (c *coordinator) sweepOrder() []string {
	if c.byName == nil {
		c.byName = slices.Sorted(maps.Keys(c.services))
	}
	order := make([]string, 0, len(c.byName))
	if len(c.byName) <= probeBatch {
		order = append(order, c.byName...)
		slices.SortStableFunc(order, func(a, b string) int {
			return c.services[b].lastChange.Compare(c.services[a].lastChange)
		})
		return order
	}
	times := make([]int64, 0, len(c.byName))
	for _, name := range c.byName {
		times = append(times, c.services[name].lastChange.UnixNano())
	}
	slices.Sort(times)
	threshold := times[len(times)-probeBatch]
	recent := map[string]bool{}
	for _, name := range c.byName {
		if len(order) < probeBatch && c.services[name].lastChange.UnixNano() >= threshold {
			order = append(order, name)
			recent[name] = true
		}
	}
	slices.SortStableFunc(order, func(a, b string) int {
		return c.services[b].lastChange.Compare(c.services[a].lastChange)
	})
	for _, name := range c.byName {
		if !recent[name] {
			order = append(order, name)
		}
	}
	return order
}

// complete reports whether the first snapshot can be published: both
// detectors answered and every listed service was read.
func (c *coordinator) complete() bool {
	if !c.haveList || len(c.haveHealth) < len(checkStates) {
		return false
	}
	for _, e := range c.services {
		if e.svc == nil && !e.hidden {
			return false
		}
	}
	return true
}

// hiddenRetryMax caps the wait between reads of a service the token hides.
const hiddenRetryMax = 30 * time.Second

// reportHidden records the services the ACL token hides in the status and
// reports them to Config.ACL.
func (c *coordinator) reportHidden() {
	var hidden []string
	for name, e := range c.services {
		if e.hidden {
			hidden = append(hidden, name)
		}
	}
	sort.Strings(hidden)
	c.w.mu.Lock()
	c.w.status.Hidden = hidden
	c.w.mu.Unlock()
	hides := ""
	if len(hidden) > 0 {
		shown := hidden
		if len(shown) > 5 {
			shown = shown[:5]
		}
		hides = fmt.Sprintf("the instances of %d service(s) (%s%s): their health reads are filtered by ACLs; each keeps its last complete read, or is not served before one",
			len(hidden), strings.Join(shown, ", "), map[bool]string{true: ", ...", false: ""}[len(hidden) > len(shown)])
	}
	c.w.cfg.ACL.Answered("catalog", aclSourceReads, len(hidden) > 0, consulwatch.PermNodeRead, hides)
}

func (c *coordinator) publish() {
	if !c.published && !c.complete() {
		c.dirty = false // the missing reads mark the state changed again
		return
	}
	c.dirty = false
	c.published = true
	var next map[string]*model.Service
	if c.last == nil {
		next = make(map[string]*model.Service, len(c.services))
		for name, e := range c.services {
			if e.svc != nil {
				next[name] = e.svc
			}
		}
	} else {
		// The last snapshot's services, with what changed since: every
		// change to an entry's service marks its name touched.
		next = maps.Clone(c.last.Services)
		for name := range c.touched {
			if e, ok := c.services[name]; ok && e.svc != nil {
				next[name] = e.svc
			} else {
				delete(next, name)
			}
		}
	}
	c.last = c.last.Next(next, slices.Sorted(maps.Keys(c.touched)))
	c.last.ObservedAt = c.pending
	clear(c.touched)
	c.w.publish(c.last)
}

func instanceNodes(svc *model.Service) []string {
	seen := map[string]bool{}
	var out []string
	for _, inst := range svc.Instances {
		if !seen[inst.Node] {
			seen[inst.Node] = true
			out = append(out, inst.Node)
		}
	}
	return out
}

// sameRegistrations reports whether two reads of a service hold the same
// instances with the same registration data, health aside.
func sameRegistrations(a, b *model.Service) bool {
	if len(a.Instances) != len(b.Instances) {
		return false
	}
	for i := range a.Instances {
		x, y := a.Instances[i], b.Instances[i]
		x.Health, y.Health = 0, 0
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

// sortedTags copies and sorts a service's tags; none is nil.
func sortedTags(tags []string) []string {
	if len(tags) == 0 {
		return nil
	}
	out := append([]string(nil), tags...)
	sort.Strings(out)
	return out
}
