// Package runtest holds the test helpers that the watcher, pipeline and
// server packages share: running a component for the length of a test,
// waiting for a condition, and reading one metric sample.
//
// It is imported by tests only; it imports only the standard library and
// the Prometheus client.
package runtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Run calls run in a goroutine with a context cancelled when the test ends,
// and then checks that run returned nil within stopTimeout.
func Run(t testing.TB, stopTimeout time.Duration, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("Run did not return within %s of its context being cancelled", stopTimeout)
		}
	})
}

// Eventually polls cond until it returns nil, failing the test with its
// last error after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Metric returns the value of the gauge or counter sample of name whose
// labels include labels (nil: the first sample), failing the test when
// there is none.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := metric(g, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func metric(g prometheus.Gatherer, name string, labels map[string]string) (float64, error) {
	families, err := g.Gather()
	if err != nil {
		return 0, fmt.Errorf("runtest: gather: %w", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue samples
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), nil
			}
			return m.GetGauge().GetValue(), nil
		}
		return 0, fmt.Errorf("runtest: metric %s has no sample with labels %v", name, labels)
	}
	return 0, fmt.Errorf("runtest: metric %s not registered", name)
}
