package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlplaneSmoke runs a short control-plane benchmark end to end:
// a real Consul agent with stock limits, the real trellis binary (built
// from ./cmd/trellis, reaching Consul over HTTPS) and 50 real ADS streams; every stream must ACK all
// four types, every push must arrive at the streams watching the changed
// service and nowhere else.
func TestControlplaneSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	out := filepath.Join(dir, "controlplane.json")
	var stdout bytes.Buffer
	err := controlplaneMain(ctx, []string{
		"-services", "100", "-streams", "20,50", "-changes", "4",
		"-fanout-changes", "4", "-churn-rate", "20", "-churn-duration", "2s", "-idle", "1s",
		"-o", out, "-workdir", filepath.Join(dir, "work"),
	}, &stdout)
	t.Logf("output:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("controlplane: %v", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res cpResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("results JSON: %v", err)
	}
	if len(res.Problems) != 0 {
		t.Errorf("problems: %v", res.Problems)
	}
	if res.Settings.ConsulScheme != "https" {
		t.Errorf("settings: Consul scheme %q, want the default, https", res.Settings.ConsulScheme)
	}
	if len(res.Runs) != 1 {
		t.Fatalf("%d runs, want 1", len(res.Runs))
	}
	r := res.Runs[0]
	if r.Error != "" || r.Services != 100 || r.InstancesPerService != 10 || r.ConsulRequestsSource == "" {
		t.Errorf("run %+v, want 100 services x 10 instances, no error, a Consul request counter", r)
	}
	if len(r.Phases) != 2 {
		t.Fatalf("%d steps, want 2 (20 and 50 streams)", len(r.Phases))
	}
	for _, ph := range r.Phases {
		g := ph.Generator
		if g.Streams != ph.Streams || g.Ready != ph.Streams || g.Conns != ph.Streams || g.Failed != 0 || g.NACKs != 0 || g.ACKs != g.Responses {
			t.Errorf("%d streams: generator %+v, want every stream ready on its own connection, every response ACKed", ph.Streams, g)
		}
		s := ph.Single
		if s.Changes != 4 || s.Latency.N != 4 || s.Missed != 0 || s.ResponsesToNonWatchers != 0 {
			t.Errorf("%d streams: single changes %+v, want 4 pushes measured, none missed, none to other streams", ph.Streams, s)
		}
		if s.Kinds["register"] != 2 || s.Kinds["critical"] != 2 {
			t.Errorf("%d streams: change kinds %v, want 2 registered instances and 2 checks going critical", ph.Streams, s.Kinds)
		}
		if s.BytesPerChangePerClient <= 0 || s.ResponsesPerChangePerClient < 1 || s.Latency.P50 <= 0 {
			t.Errorf("%d streams: %+v, want bytes, responses and latency measured", ph.Streams, s)
		}
		if ph.TrellisRSSBytes <= 0 || ph.WatchersPerService != 1 {
			t.Errorf("%d streams: RSS %d, %d watchers per service; want an RSS and one watcher", ph.Streams, ph.TrellisRSSBytes, ph.WatchersPerService)
		}
	}
	if c := r.Churn; c == nil || c.Changes == 0 || c.Missed != 0 || c.Latency.N != c.Changes {
		t.Errorf("churn %+v, want changes, each pushed", c)
	}
	if f := r.Fanout; f == nil || f.Streams != 50 || f.Changes.Latency.N != 4 || f.Changes.Missed != 0 || f.Changes.AllReceipts.N != 4*50 {
		t.Errorf("fan-out %+v, want 4 changes reaching all 50 streams", f)
	}
	if f := r.Fanout; f != nil && (f.ServerSent.N != 4 || f.ServerSentError != "" || f.ServerSent.Max > f.Changes.Latency.Max) {
		t.Errorf("fan-out server side %+v (%s), want 4 changes, each sent before it was received", f.ServerSent, f.ServerSentError)
	}
	if !strings.Contains(stdout.String(), "targets:") {
		t.Errorf("no targets in the table")
	}
}
