// Package logtest holds a slog handler that keeps what is logged, for tests
// that assert on log lines. It imports no other Trellis package.
package logtest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Recorder is a slog.Handler that keeps every record.
type Recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

var _ slog.Handler = (*Recorder)(nil)

// Enabled accepts every level.
func (r *Recorder) Enabled(context.Context, slog.Level) bool { return true }

// Handle keeps a copy of rec.
func (r *Recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}

// WithAttrs returns r: attributes added this way are not kept.
func (r *Recorder) WithAttrs([]slog.Attr) slog.Handler { return r }

// WithGroup returns r.
func (r *Recorder) WithGroup(string) slog.Handler { return r }

// WaitFor polls until a record whose message contains msg has been logged
// and returns it, failing the test after timeout.
func (r *Recorder) WaitFor(t testing.TB, msg string, timeout time.Duration) slog.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r.mu.Lock()
		for _, rec := range r.records {
			if strings.Contains(rec.Message, msg) {
				r.mu.Unlock()
				return rec
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no log record %q within %s", msg, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
