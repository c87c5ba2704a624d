package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/dashboard"
	"github.com/trellis-mesh/trellis/xdsserver/lrs"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// loadReportingOptions are the LRS flags of `trellis server`.
type loadReportingOptions struct {
	enabled   bool
	interval  time.Duration
	maxSeries int
}

func addLoadReportingFlags(f *pflag.FlagSet, o *loadReportingOptions) {
	f.BoolVar(&o.enabled, "load-reporting", true, "serve LRS on the xDS listener and set lrs_server on every Cluster, so that gRPC clients report the calls they make (trellis_lrs_* metrics, the dashboard's service graph); false: neither")
	f.DurationVar(&o.interval, "load-reporting-interval", lrs.DefaultInterval, "how often clients report their calls over LRS; at least 1s")
	f.IntVar(&o.maxSeries, "load-reporting-max-series", lrs.DefaultMaxSeries, "most (source, destination, locality, endpoint) series of LRS reports kept at once; calls of new series beyond it are counted in trellis_lrs_unrecorded_requests_total only")
}

// loadReporting is the LRS server of `trellis server`; its methods do
// nothing when --load-reporting=false.
type loadReporting struct {
	srv *lrs.Server
	// security, once identifyBy set it, names the sources of mTLS peers.
	security atomic.Pointer[translate.Security]
}

// newLoadReporting builds the LRS server. With xdsTLS, a stream's source
// is the service its peer's verified SPIFFE ID names under the mesh's
// scheme (once identifyBy gave them), which a client cannot forge, rather
// than the cluster its node declares.
func newLoadReporting(o loadReportingOptions, xdsTLS bool, reg prometheus.Registerer, logger *slog.Logger) (*loadReporting, error) {
	l := &loadReporting{}
	if !o.enabled {
		logger.Info("load reporting off (--load-reporting=false): Clusters carry no lrs_server")
		return l, nil
	}
	if o.interval < lrs.MinInterval {
		return nil, fmt.Errorf("--load-reporting-interval %s: accepted: %s or more", o.interval, lrs.MinInterval)
	}
	if o.maxSeries < 1 {
		return nil, fmt.Errorf("--load-reporting-max-series %d: accepted: 1 or more", o.maxSeries)
	}
	window := max(lrs.DefaultRateWindow, 2*o.interval)
	idle := max(lrs.DefaultIdleAfter, 2*o.interval)
	cfg := lrs.Config{Interval: o.interval, MaxSeries: o.maxSeries, RateWindow: window, IdleAfter: idle, Registerer: reg, Logger: logger}
	if xdsTLS {
		cfg.Source = l.source
	}
	srv, err := lrs.New(cfg)
	if err != nil {
		return nil, err
	}
	l.srv = srv
	return l, nil
}

// identifyBy gives the trust domain and SPIFFE ID scheme of the mesh.
func (l *loadReporting) identifyBy(sec translate.Security) { l.security.Store(&sec) }

// source is the service the stream's peer's SPIFFE ID names, or else the
// node's cluster.
func (l *loadReporting) source(ctx context.Context, node *corev3.Node) string {
	sec := l.security.Load()
	if sec == nil || sec.TrustDomain.IsZero() {
		return lrs.SourceOf(node)
	}
	id, err := spiffetls.PeerID(ctx)
	if err != nil || id.TrustDomain() != sec.TrustDomain {
		return lrs.SourceOf(node)
	}
	scheme := sec.Scheme
	if scheme == nil {
		scheme = identity.DefaultScheme()
	}
	w, err := scheme.Parse(id)
	if err != nil || w.Service == "" {
		return lrs.SourceOf(node)
	}
	return w.Service
}

// disabled is translate.Options.DisableLoadReporting.
func (l *loadReporting) disabled() bool { return l.srv == nil }

// services are served beside ADS.
func (l *loadReporting) services() []xdsserver.ServiceRegistrant {
	if l.srv == nil {
		return nil
	}
	return []xdsserver.ServiceRegistrant{l.srv}
}

func (l *loadReporting) run(ctx context.Context) error {
	if l.srv == nil {
		return nil
	}
	return l.srv.Run(ctx)
}

// graph is the dashboard's service graph; nil when load reporting is off.
func (l *loadReporting) graph() func() []dashboard.Edge {
	if l.srv == nil {
		return nil
	}
	return func() []dashboard.Edge {
		edges := l.srv.Edges()
		out := make([]dashboard.Edge, 0, len(edges))
		for _, e := range edges {
			out = append(out, dashboard.Edge{
				Source: e.Source, Destination: e.Destination,
				Succeeded: e.Totals.Succeeded, Errored: e.Totals.Errored + e.Totals.Dropped, InProgress: e.InProgress,
				RatePerSecond: e.RatePerSecond, ErrorRatio: e.ErrorRatio, LastReport: e.LastReport,
			})
		}
		return out
	}
}
