// Package x509watch streams X.509 contexts (SVIDs and trust bundles) from the
// SPIFFE Workload API for the identity subpackages. It must not import
// anything of Trellis outside identity.
package x509watch

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Handler receives what the Workload API stream delivers. Its methods are
// called from the goroutine running Watch, one at a time.
type Handler interface {
	// OnUpdate receives each X.509 context: at start and on every rotation.
	OnUpdate(*workloadapi.X509Context)
	// OnError receives each stream failure; Watch retries after it.
	OnError(error)
}

// Watch connects to the Workload API at addr and delivers X.509 contexts to
// h until ctx ends. A failed or unreachable Workload API is retried with the
// go-spiffe client's backoff (1 s, growing by 1 s up to 30 s), and each
// failure is reported to h.OnError. Watch returns nil once ctx ends, or an
// error when addr is unusable or the Workload API rejects the request.
func Watch(ctx context.Context, addr string, logger *slog.Logger, h Handler) error {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithLogger(debugLogger{logger}))
	if err != nil {
		return fmt.Errorf("identity: Workload API %s: %w", addr, err)
	}
	err = client.WatchX509Context(ctx, watcher{ctx: ctx, h: h})
	closeErr := client.Close()
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("identity: Workload API %s: %w", addr, err)
	}
	if closeErr != nil {
		return fmt.Errorf("identity: Workload API %s: close: %w", addr, closeErr)
	}
	return nil
}

type watcher struct {
	ctx context.Context
	h   Handler
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.h.OnUpdate(c) }

func (w watcher) OnX509ContextWatchError(err error) {
	if w.ctx.Err() != nil {
		return // shutting down: not a failure
	}
	w.h.OnError(err)
}

// debugLogger sends the go-spiffe client's own messages to logger at debug
// level: failures reach the Handler, which reports them.
type debugLogger struct{ l *slog.Logger }

func (d debugLogger) Debugf(format string, args ...any) { d.l.Debug(fmt.Sprintf(format, args...)) }
func (d debugLogger) Infof(format string, args ...any)  { d.l.Debug(fmt.Sprintf(format, args...)) }
func (d debugLogger) Warnf(format string, args ...any)  { d.l.Debug(fmt.Sprintf(format, args...)) }
func (d debugLogger) Errorf(format string, args ...any) { d.l.Debug(fmt.Sprintf(format, args...)) }
