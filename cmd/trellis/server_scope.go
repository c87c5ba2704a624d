package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// Values of --xds-scope.
const (
	xdsScopeAll        = "all"
	xdsScopeIntentions = "intentions"
)

// scopeRecheck is how often the intentions scope looks for a new catalog
// or intentions snapshot.
const scopeRecheck = 500 * time.Millisecond

// checkXDSScope validates --xds-scope: the intentions scope identifies
// workloads by their SVID, so it needs --xds-tls.
func checkXDSScope(scope string, xdsTLS bool, trustDomain string) error {
	switch scope {
	case xdsScopeAll:
		return nil
	case xdsScopeIntentions:
		var errs []error
		if !xdsTLS {
			errs = append(errs, errors.New("--xds-scope=intentions needs --xds-tls: workloads are told apart by their SVID"))
		}
		if trustDomain == "" {
			errs = append(errs, errors.New("--xds-scope=intentions needs --trust-domain: the trust domain of the workloads whose SPIFFE IDs name their services"))
		}
		return errors.Join(errs...)
	default:
		return fmt.Errorf("--xds-scope %q: accepted: %s (every client receives every resource), %s (each workload receives the services its SPIFFE ID may call under the intentions, and its own server Listeners)", scope, xdsScopeAll, xdsScopeIntentions)
	}
}

// intentionScope is --xds-scope=intentions: a workload, identified by the
// SPIFFE ID of its SVID under the SPIFFE ID scheme, receives the client
// resources (Listener, RouteConfiguration, Clusters, endpoints) of the
// services its service may call under the intentions and
// --intention-default, and the server Listeners of its own service's
// instances. Intentions with conditions that gRPC cannot enforce count as
// deny, as in the RBAC the translation serves. An SVID of another trust
// domain, or one the scheme cannot parse, receives nothing.
//
// It follows the latest catalog and intentions, looking for new ones every
// scopeRecheck, and tells the streams of a SPIFFE ID when what that ID may
// receive changed. It keeps one entry per SPIFFE ID seen.
type intentionScope struct {
	catalog func() *model.Snapshot
	logger  *slog.Logger

	mu sync.Mutex
	// base and intentions are set by follow.
	base       translate.Security
	intentions func() *model.Intentions
	snap       *model.Snapshot
	ins        *model.Intentions
	peers      map[string]*peerScope
}

// peerScope is what one SPIFFE ID may receive, and the channel closed when
// that changes.
type peerScope struct {
	services map[string]bool // callable services
	servers  map[string]bool // own server Listener names
	key      string
	changed  chan struct{}
}

var _ xdsserver.Scope = (*intentionScope)(nil)

// newXDSScope validates --xds-scope and returns the intentions scope, or
// nil for every resource to every client. follow must be called before
// run.
func newXDSScope(scope string, xdsTLS bool, trustDomain string, catalog func() *model.Snapshot, logger *slog.Logger) (*intentionScope, error) {
	if err := checkXDSScope(scope, xdsTLS, trustDomain); err != nil {
		return nil, err
	}
	if scope != xdsScopeIntentions {
		return nil, nil
	}
	return &intentionScope{catalog: catalog, logger: logger.With("component", "xds-scope"), peers: map[string]*peerScope{}}, nil
}

// follow sets the mesh's security settings (trust domain, SPIFFE ID
// scheme, default action) and the source of the latest intentions.
func (s *intentionScope) follow(base translate.Security, intentions func() *model.Intentions) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.base, s.intentions = base, intentions
}

// scope returns s as the xDS server's Scope: nil when s is nil.
func (s *intentionScope) scope() xdsserver.Scope {
	if s == nil {
		return nil
	}
	return s
}

// Identify returns the SPIFFE ID of the stream's peer, verified by the
// xDS listener's mTLS.
func (s *intentionScope) Identify(ctx context.Context) (string, error) {
	id, err := spiffetls.PeerID(ctx)
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// Allow returns what peer may receive under the latest catalog and
// intentions.
func (s *intentionScope) Allow(peer string) (func(typeURL, name string) bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps, ok := s.peers[peer]
	if !ok {
		if s.snap == nil && s.intentions != nil {
			s.snap, s.ins = s.catalog(), s.intentions()
		}
		ps = s.compute(peer)
		s.peers[peer] = ps
		s.logger.Debug("xds scope", "peer", peer, "services", ps.key)
	}
	return ps.allow, ps.changed
}

// run looks for new catalog and intentions snapshots until ctx is done,
// and tells the streams whose scope they change.
func (s *intentionScope) run(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.logger.Info("xDS scoped by intentions: each workload receives the services its SPIFFE ID may call, and its own server Listeners")
	tick := time.NewTicker(scopeRecheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		s.update()
	}
}

func (s *intentionScope) update() {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, ins := s.catalog(), s.intentions()
	if snap == s.snap && ins == s.ins {
		return
	}
	s.snap, s.ins = snap, ins
	for peer, old := range s.peers {
		ps := s.compute(peer)
		if ps.key == old.key {
			continue
		}
		s.logger.Info("xds scope changed; the peer's streams subscribe again", "peer", peer, "from", old.key, "to", ps.key)
		close(old.changed)
		s.peers[peer] = ps
	}
}

// compute builds the scope of peer from s.snap and s.ins. s.mu is held.
func (s *intentionScope) compute(peer string) *peerScope {
	ps := &peerScope{services: map[string]bool{}, servers: map[string]bool{}, changed: make(chan struct{})}
	self, ok := s.serviceOf(peer)
	if !ok || s.snap == nil {
		ps.key = "nothing"
		return ps
	}
	var names []string
	for name, svc := range s.snap.Services {
		if s.mayCall(self, name) {
			ps.services[name] = true
			names = append(names, name)
		}
		if name != self {
			continue
		}
		for _, inst := range svc.Instances {
			addr, err := netip.ParseAddr(inst.Address)
			if err != nil || inst.Port < 1 || inst.Port > 65535 {
				continue
			}
			hostPort := netip.AddrPortFrom(addr, uint16(inst.Port)).String()
			ps.servers[translate.ServerListenerName(hostPort)] = true
			names = append(names, "server "+hostPort)
		}
	}
	slices.Sort(names)
	ps.key = strings.Join(names, ",")
	if ps.key == "" {
		ps.key = "nothing"
	}
	return ps
}

// serviceOf returns the service a SPIFFE ID names under the scheme, in
// the mesh's trust domain.
func (s *intentionScope) serviceOf(peer string) (string, bool) {
	id, err := spiffeid.FromString(peer)
	if err != nil || id.TrustDomain() != s.base.TrustDomain {
		return "", false
	}
	scheme := s.base.Scheme
	if scheme == nil {
		scheme = identity.DefaultScheme()
	}
	w, err := scheme.Parse(id)
	if err != nil || w.Service == "" {
		return "", false
	}
	return w.Service, true
}

// mayCall decides calls from source to destination as the served RBAC
// does: the deciding intention, or the default; an intention with
// conditions gRPC cannot enforce denies.
func (s *intentionScope) mayCall(source, destination string) bool {
	if s.ins == nil {
		return s.base.DefaultAction() == model.IntentionAllow
	}
	in, ok := s.ins.For(destination).Decide(source)
	if !ok {
		return s.base.DefaultAction() == model.IntentionAllow
	}
	return in.Action == model.IntentionAllow && len(in.Conditions) == 0
}

// allow tells whether a resource belongs to a service the peer may call,
// or is one of its own server Listeners.
func (ps *peerScope) allow(typeURL, name string) bool {
	switch typeURL {
	case resource.ListenerType:
		if strings.HasPrefix(name, strings.TrimSuffix(bootstrap.ServerListenerTemplate, "%s")) {
			return ps.servers[name]
		}
		return ps.services[withoutPort(name)]
	case resource.RouteType:
		return ps.services[name]
	case resource.ClusterType, resource.EndpointType:
		service, _, _ := strings.Cut(name, "/") // translate.SubsetClusterName
		return ps.services[service]
	default:
		return false
	}
}

// withoutPort strips the ":port" of a client Listener name (xds:///svc:port).
func withoutPort(name string) string {
	i := strings.LastIndexByte(name, ':')
	if i < 0 {
		return name
	}
	if _, err := strconv.ParseUint(name[i+1:], 10, 16); err != nil {
		return name
	}
	return name[:i]
}
