package catalog

import (
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/runtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newTestClient returns a Consul client for addr with a pooled transport,
// as production uses, whose idle connections are closed when the test ends.
func newTestClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startWatcher creates a Watcher from cfg and runs it until the test ends,
// checking that Run returns nil once cancelled.
func startWatcher(t *testing.T, cfg Config) *Watcher {
	t.Helper()
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		// Shown when the test fails (or with -v).
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runtest.Run(t, 10*time.Second, w.Run)
	return w
}

// nextSnapshot reads snapshots until check accepts one, failing the test
// with check's last complaint after timeout.
func nextSnapshot(t *testing.T, w *Watcher, timeout time.Duration, check func(*model.Snapshot) error) *model.Snapshot {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	lastErr := fmt.Errorf("no snapshot published")
	for {
		select {
		case snap := <-w.Snapshots():
			if lastErr = check(snap); lastErr == nil {
				return snap
			}
		case <-deadline.C:
			t.Fatalf("no matching snapshot within %s: %v", timeout, lastErr)
			return nil
		}
	}
}

// waitStatus polls the watcher's status until check accepts it.
func waitStatus(t *testing.T, w *Watcher, timeout time.Duration, check func(Status) error) Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := w.Status()
		err := check(st)
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status still wrong after %s: %v (status %+v)", timeout, err, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// instance returns the instance with the given ID of a service, or an error.
func instance(snap *model.Snapshot, service, id string) (model.Instance, error) {
	svc, ok := snap.Services[service]
	if !ok {
		return model.Instance{}, fmt.Errorf("service %q not in snapshot (have %v)", service, snap.ServiceNames())
	}
	for _, inst := range svc.Instances {
		if inst.ID == id {
			return inst, nil
		}
	}
	return model.Instance{}, fmt.Errorf("service %q has no instance %q", service, id)
}

// ports returns the ports of a service's instances, in instance order.
func ports(snap *model.Snapshot, service string) []int {
	svc, ok := snap.Services[service]
	if !ok {
		return nil
	}
	out := make([]int, 0, len(svc.Instances))
	for _, inst := range svc.Instances {
		out = append(out, inst.Port)
	}
	return out
}

// metricValue returns the value of a gauge or counter registered by
// startWatcher.
func metricValue(t *testing.T, w *Watcher, name string) float64 {
	t.Helper()
	g, ok := w.cfg.Registerer.(prometheus.Gatherer)
	if !ok {
		t.Fatalf("registerer %T cannot gather", w.cfg.Registerer)
	}
	return runtest.Metric(t, g, name, nil)
}
