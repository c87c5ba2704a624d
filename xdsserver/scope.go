package xdsserver

import (
	"context"
	"maps"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Scope limits the resources each ADS stream may receive to those its
// peer is entitled to, as Config.Scope.
//
// A stream whose peer Identify refuses is ended with PermissionDenied
// before any resource is sent. Every other stream is served as if the
// cache held only the resources Allow accepts: a name it refuses, or the
// wildcard "*", is left out of the subscription handed to the cache, so
// the client is answered as if the resource did not exist (gRPC clients
// report Listeners and Clusters left out of a response they were sent
// before as deleted at once, and others as does-not-exist after their
// resource timeout), and each refusal is counted in
// trellis_xds_scope_denied_total. When what a peer may receive changes,
// the stream is ended with Unavailable: the client opens a new stream at
// once, asks again for every resource it uses, and is answered under its
// new scope, while its channels keep their last configuration.
type Scope interface {
	// Identify returns the identity of the peer of a stream from the
	// stream's context (gRPC peer and TLS state), or an error to refuse
	// the stream.
	Identify(ctx context.Context) (peer string, err error)
	// Allow returns what peer may receive now: allow(typeURL, name) tells
	// whether the named resource may be sent, and changed is closed once
	// that answer may have changed for some resource.
	Allow(peer string) (allow func(typeURL, name string) bool, changed <-chan struct{})
}

// scopeMetrics are the metrics of a Scope.
type scopeMetrics struct {
	denied *prometheus.CounterVec
}

func newScopeMetrics(reg prometheus.Registerer) (*scopeMetrics, error) {
	m := &scopeMetrics{denied: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_xds_scope_denied_total",
		Help: "Resource names requested on ADS streams and withheld because the peer may not receive them (--xds-scope), by resource type.",
	}, []string{"type"})}
	if err := reg.Register(m.denied); err != nil {
		return nil, err
	}
	return m, nil
}

// scopedStream serves one ADS stream under s.scope: a sotw server of its
// own, whose watcher filters the subscriptions, and whose context ends
// when the peer's scope changes.
func (s *Server) scopedStream(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	peer, err := s.scope.Identify(st.Context())
	if err != nil {
		s.logger.Info("ADS stream refused by the xDS scope", "error", err)
		return status.Errorf(codes.PermissionDenied, "xds scope: %v", err)
	}
	allow, changed := s.scope.Allow(peer)
	ctx, cancel := context.WithCancel(s.serveCtx)
	defer cancel()
	var rescoped atomic.Bool
	go func() {
		select {
		case <-changed:
			rescoped.Store(true)
			cancel()
		case <-ctx.Done():
		}
	}()
	w := &scopedWatcher{inner: s.watcher, allow: allow, peer: peer, server: s}
	cb := &renumbered{inner: s.tracker, id: s.streamIDs.Add(1)}
	err = sotw.NewServer(ctx, w, cb, s.sotwOpts...).StreamHandler(st, resource.AnyType)
	if rescoped.Load() && st.Context().Err() == nil {
		s.logger.Debug("xds scope of the peer changed; ending its stream so that it subscribes again", "peer", peer)
		return status.Error(codes.Unavailable, "xds scope of this client changed: subscribe again")
	}
	return err
}

// scopedWatcher hands the cache only the resource names allow accepts.
type scopedWatcher struct {
	inner  cache.ConfigWatcher
	allow  func(typeURL, name string) bool
	peer   string
	server *Server
}

var _ cache.ConfigWatcher = (*scopedWatcher)(nil)

func (w *scopedWatcher) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	scoped, withheld := w.filter(req.GetTypeUrl(), sub)
	if withheld && req.GetResponseNonce() == "" {
		// The first request of a type on a stream, e.g. from a client
		// that reconnected after its scope shrank, at a version it
		// already holds: without a reply it would keep the resources it
		// may no longer receive. A reply at once, even one listing
		// nothing, tells it the withheld Listeners and Clusters are gone.
		req = proto.CloneOf(req)
		req.VersionInfo = ""
	}
	return w.inner.CreateWatch(req, scoped, ch)
}

func (w *scopedWatcher) CreateDeltaWatch(*cache.DeltaRequest, cache.Subscription, chan cache.DeltaResponse) (func(), error) {
	return nil, status.Error(codes.Unimplemented, "xdsserver: delta xDS is not served")
}

// filter returns the subscription without the names w.allow refuses,
// and whether it refused any, counting and logging each refusal once per
// request.
func (w *scopedWatcher) filter(typeURL string, sub cache.Subscription) (cache.Subscription, bool) {
	subscribed := sub.SubscribedResources()
	allowed := make(map[string]struct{}, len(subscribed))
	var denied []string
	for name := range subscribed {
		if name != "*" && w.allow(typeURL, name) {
			allowed[name] = struct{}{}
			continue
		}
		denied = append(denied, name)
	}
	if sub.IsWildcard() && len(subscribed) == 0 {
		denied = append(denied, "*")
	}
	if len(denied) > 0 {
		w.server.scopeMetrics.denied.WithLabelValues(typeLabel(typeURL)).Add(float64(len(denied)))
		w.server.logger.Debug("resources withheld by the xDS scope", "peer", w.peer, "type", typeLabel(typeURL), "names", denied)
	}
	return scopedSubscription{returned: sub.ReturnedResources(), subscribed: allowed}, len(denied) > 0
}

// scopedSubscription is a subscription to the allowed names only; it is
// never a wildcard.
type scopedSubscription struct {
	returned   map[string]string
	subscribed map[string]struct{}
}

func (s scopedSubscription) ReturnedResources() map[string]string {
	// Only what the peer may hold counts as returned: a resource it may
	// no longer receive is gone from its point of view.
	out := make(map[string]string, len(s.returned))
	for name, v := range s.returned {
		if _, ok := s.subscribed[name]; ok {
			out[name] = v
		}
	}
	return out
}

func (s scopedSubscription) SubscribedResources() map[string]struct{} {
	return maps.Clone(s.subscribed)
}

func (s scopedSubscription) IsWildcard() bool { return false }

// renumbered passes the callbacks of a one-stream sotw server on with a
// stream ID unique across the Server, since every sotw server numbers its
// streams from 1.
type renumbered struct {
	inner sotw.Callbacks
	id    int64
}

func (r *renumbered) OnStreamOpen(ctx context.Context, _ int64, typeURL string) error {
	return r.inner.OnStreamOpen(ctx, r.id, typeURL)
}

func (r *renumbered) OnStreamClosed(_ int64, node *corev3.Node) { r.inner.OnStreamClosed(r.id, node) }

func (r *renumbered) OnStreamRequest(_ int64, req *discoveryv3.DiscoveryRequest) error {
	return r.inner.OnStreamRequest(r.id, req)
}

func (r *renumbered) OnStreamResponse(ctx context.Context, _ int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	r.inner.OnStreamResponse(ctx, r.id, req, resp)
}
