package catalog

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// fakeConsul is an in-process Consul HTTP API serving the catalog service
// list, service health and the leader, with blocking queries. Tests use it
// for what a real Consul cannot be made to do on demand: indexes going
// backwards or to 0, and server errors.
type fakeConsul struct {
	srv *httptest.Server

	mu sync.Mutex
	// changed is closed and replaced on every change.
	changed   chan struct{}
	resources map[string]*fakeResource // by URL path
	// failStatus maps a URL path, or "" for every catalog and health
	// path, to an HTTP status to answer instead of data.
	failStatus map[string]int
	requests   []fakeRequest
	// down, when not 0, is answered by every request, the leader's too.
	down int
	// hanging makes every request hang until its client gives up.
	hanging bool
	// epoch counts hangs: a request that started in an earlier epoch
	// never gets an answer, like one sent on a connection that died.
	epoch int
	// held are the URL paths whose requests wait, answering nothing,
	// until released (a detector that is not looking).
	held map[string]bool
}

// hold makes the requests to a URL path wait until release.
func (f *fakeConsul) hold(urlPath string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == nil {
		f.held = map[string]bool{}
	}
	f.held[urlPath] = true
}

// release lets the requests to a URL path answer again.
func (f *fakeConsul) release(urlPath string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, urlPath)
	close(f.changed)
	f.changed = make(chan struct{})
}

// fakeResource is one endpoint's current answer.
type fakeResource struct {
	index uint64
	body  any
	// noLeader answers X-Consul-KnownLeader: false.
	noLeader bool
}

// fakeRequest records one catalog or health request.
type fakeRequest struct {
	path  string
	index uint64
}

const (
	fakeListPath = "/v1/catalog/services"
	// fakeStatePath holds the checks that are not passing; the detectors
	// read them by state, /v1/health/state/critical and .../warning.
	fakeStatePath = "/v1/health/state/any"
)

func fakeHealthPath(name string) string { return "/v1/health/service/" + name }

func newFakeConsul(t *testing.T) *fakeConsul {
	t.Helper()
	f := &fakeConsul{
		changed:    make(chan struct{}),
		resources:  make(map[string]*fakeResource),
		failStatus: make(map[string]int),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// client returns a Consul API client for the fake.
func (f *fakeConsul) client(t *testing.T) *api.Client {
	t.Helper()
	return newTestClient(t, strings.TrimPrefix(f.srv.URL, "http://"))
}

// set sets the answer of one path and wakes blocked queries.
func (f *fakeConsul) set(path string, index uint64, body any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resources[path] = &fakeResource{index: index, body: body}
	close(f.changed)
	f.changed = make(chan struct{})
}

// setNotReady makes every answer what a restarting Consul answers before
// it restored its state: index 1, nothing in it, no leader.
func (f *fakeConsul) setNotReady(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resources[fakeListPath] = &fakeResource{index: 1, body: map[string][]string{}, noLeader: true}
	f.resources[fakeStatePath] = &fakeResource{index: 1, body: []*api.HealthCheck{}, noLeader: true}
	for _, name := range names {
		f.resources[fakeHealthPath(name)] = &fakeResource{index: 1, body: []*api.ServiceEntry{}, noLeader: true}
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// setOnePortEach lists names at index, each with one passing instance on
// port 1 written at the same index.
func (f *fakeConsul) setOnePortEach(index uint64, names ...string) {
	for _, n := range names {
		f.setInstances(n, index, 1)
	}
	f.setServices(index, names...)
}

// setServices sets the service list (every service without tags).
func (f *fakeConsul) setServices(index uint64, names ...string) {
	list := make(map[string][]string, len(names))
	for _, n := range names {
		list[n] = []string{}
	}
	f.set(fakeListPath, index, list)
}

// setInstances sets the health answer for a service: one passing instance
// per port on node "n1", address 10.0.0.1.
func (f *fakeConsul) setInstances(name string, index uint64, ports ...int) {
	entries := make([]*api.ServiceEntry, 0, len(ports))
	for _, p := range ports {
		id := name + "-" + strconv.Itoa(p)
		entries = append(entries, &api.ServiceEntry{
			Node:    &api.Node{Node: "n1", Address: "10.0.0.1", Datacenter: "dc1"},
			Service: &api.AgentService{ID: id, Service: name, Port: p},
			Checks: api.HealthChecks{
				{Node: "n1", CheckID: "serfHealth", Status: api.HealthPassing},
				{Node: "n1", CheckID: "service:" + id, ServiceID: id, Status: api.HealthPassing},
			},
		})
	}
	f.set(fakeHealthPath(name), index, entries)
	f.bumpList(index)
}

// bumpList moves the service list's index up to index, its content kept,
// as Consul's does on every registration change.
func (f *fakeConsul) bumpList(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.resources[fakeListPath]; l != nil && index > l.index {
		f.resources[fakeListPath] = &fakeResource{index: index, body: l.body}
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// fail makes requests to path ("" for every catalog and health path)
// answer status; 0 restores normal answers.
func (f *fakeConsul) fail(path string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if status == 0 {
		delete(f.failStatus, path)
	} else {
		f.failStatus[path] = status
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// requestsTo returns the indexes of the requests made so far to path.
func (f *fakeConsul) requestsTo(path string) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for _, r := range f.requests {
		if r.path == path {
			out = append(out, r.index)
		}
	}
	return out
}

// setDown makes every request, the leader's too, answer status; 0 brings
// the fake back.
func (f *fakeConsul) setDown(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = status
	close(f.changed)
	f.changed = make(chan struct{})
}

// hang makes every request hang, as on a paused process, until unhang.
// Requests made before unhang never get an answer, even afterwards.
func (f *fakeConsul) hang() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hanging = true
	f.epoch++
}

func (f *fakeConsul) unhang() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hanging = false
}

func (f *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	minIndex, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	path, state := r.URL.Path, ""
	if s, ok := strings.CutPrefix(path, "/v1/health/state/"); ok && (s == api.HealthCritical || s == api.HealthWarning) {
		path, state = fakeStatePath, s
	}
	f.mu.Lock()
	down, hanging, epoch := f.down, f.hanging, f.epoch
	if path != "/v1/status/leader" {
		f.requests = append(f.requests, fakeRequest{path: path, index: minIndex})
	}
	f.mu.Unlock()
	if hanging {
		<-r.Context().Done()
		return
	}
	if down != 0 {
		http.Error(w, "injected outage", down)
		return
	}
	if r.URL.Path == "/v1/status/leader" {
		writeJSON(w, 0, true, "127.0.0.1:8300")
		return
	}
	if path != fakeListPath && state == "" && !strings.HasPrefix(path, "/v1/health/service/") {
		http.NotFound(w, r)
		return
	}
	wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
	if err != nil || wait <= 0 {
		wait = 5 * time.Minute
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()

	for {
		f.mu.Lock()
		status := f.failStatus[""]
		if status == 0 {
			status = f.failStatus[path]
		}
		if f.down != 0 {
			status = f.down
		}
		res, changed, lost, held := f.resources[path], f.changed, f.epoch != epoch, f.held[r.URL.Path]
		f.mu.Unlock()
		if held {
			select {
			case <-changed:
				continue
			case <-r.Context().Done():
				return
			}
		}
		if lost {
			<-r.Context().Done()
			return
		}
		if status != 0 {
			http.Error(w, "injected failure", status)
			return
		}
		if res == nil {
			// An unknown service: no instances, as Consul answers; no
			// check that is not passing.
			res = &fakeResource{index: 1, body: []*api.ServiceEntry{}}
			if state != "" {
				res.body = []*api.HealthCheck{}
			}
		}
		if checks, ok := res.body.([]*api.HealthCheck); ok && state != "" {
			// Consul's answer by state: the checks in that state.
			in := []*api.HealthCheck{}
			for _, c := range checks {
				if c.Status == state {
					in = append(in, c)
				}
			}
			res = &fakeResource{index: res.index, body: in, noLeader: res.noLeader}
		}
		if tag := r.URL.Query().Get("tag"); tag != "" {
			// An index probe: the instances with the tag (none), at the
			// service's index.
			res = &fakeResource{index: res.index, body: []*api.ServiceEntry{}, noLeader: res.noLeader}
		}
		// Like Consul, block while the index is not above the one asked
		// for, until the wait time is over.
		if minIndex == 0 || res.index > minIndex {
			writeJSON(w, res.index, !res.noLeader, res.body)
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			writeJSON(w, res.index, !res.noLeader, res.body)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, index uint64, knownLeader bool, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", strconv.FormatBool(knownLeader))
	w.Header().Set("X-Consul-LastContact", "0")
	_ = json.NewEncoder(w).Encode(body)
}
