package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/intentions"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// securityOptions are the mTLS and authorization flags of `trellis server`.
type securityOptions struct {
	mtls             bool
	trustDomain      string
	spiffeIDTemplate string
	intentionDefault string
}

func addSecurityServerFlags(f *pflag.FlagSet, o *securityOptions) {
	f.BoolVar(&o.mtls, "mtls", false, "serve every service with mTLS, except services whose instances carry the meta "+
		translate.MTLSMetaKey+"=false (default: plaintext, except services whose instances carry "+translate.MTLSMetaKey+"=true); requires --trust-domain")
	f.StringVar(&o.trustDomain, "trust-domain", "", "SPIFFE trust domain of the mesh's workloads, e.g. example.org; required with --mtls, and for any service to use mTLS")
	f.StringVar(&o.spiffeIDTemplate, "spiffe-id-template", identity.DefaultTemplate,
		"path of a workload's SPIFFE ID, with the placeholders {service}, {datacenter} and {namespace} (always \"default\")")
	f.StringVar(&o.intentionDefault, "intention-default", "allow",
		"what mTLS services do with calls that no Consul intention matches: allow (as Consul with ACLs disabled) or deny")
}

// securityServer is the security side of `trellis server`: it follows
// Consul's intentions and hands the translator its Security input, built
// from the flags and the latest intentions.
//
// Transport: a service uses mTLS when --mtls is set, unless its instances
// say otherwise in their meta (trellis-mtls=true or false; when instances
// disagree, true wins, so that no instance can downgrade the others). A
// service in mTLS mode only accepts callers presenting an SVID of the trust
// domain, and of those only the ones its intentions (and
// --intention-default) allow. Plaintext services accept every caller:
// their intentions cannot be enforced, which the translation reports.
//
// Workloads use the certificate provider instance named
// bootstrap.CertificateProviderInstance ("trellis") of their xDS bootstrap
// for their SVID and trust bundle.
type securityServer struct {
	watcher *intentions.Watcher
	base    translate.Security
	logger  *slog.Logger
	// inputs holds the latest Security input not yet received.
	inputs chan *translate.Security
}

// newSecurityServer validates the flags and builds the intentions watcher.
// knownService tells whether a service is in the catalog (for debug logs).
func newSecurityServer(opts securityOptions, client *consulapi.Client, logger *slog.Logger, reg prometheus.Registerer, knownService func(string) bool, consulMetrics *consulwatch.Metrics, acl *consulwatch.ACL) (*securityServer, error) {
	base, err := opts.security()
	if err != nil {
		return nil, err
	}
	w, err := intentions.New(intentions.Config{
		Client:        client,
		Logger:        logger.With("component", "intentions"),
		Registerer:    reg,
		KnownService:  knownService,
		ConsulMetrics: consulMetrics,
		ACL:           acl,
	})
	if err != nil {
		return nil, err
	}
	return &securityServer{watcher: w, base: base, logger: logger.With("component", "security"), inputs: make(chan *translate.Security, 1)}, nil
}

// security turns the flags into the translator's Security input, without
// intentions.
func (o securityOptions) security() (translate.Security, error) {
	var sec translate.Security
	var errs []error
	if o.trustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(o.trustDomain)
		if err != nil {
			errs = append(errs, fmt.Errorf("--trust-domain %q: %w (want a name such as example.org)", o.trustDomain, err))
		}
		sec.TrustDomain = td
	} else if o.mtls {
		errs = append(errs, errors.New("--mtls requires --trust-domain: the SPIFFE trust domain of the mesh's workloads, e.g. --trust-domain example.org"))
	}
	scheme, err := identity.NewScheme(o.spiffeIDTemplate)
	if err != nil {
		errs = append(errs, fmt.Errorf("--spiffe-id-template: %w", err))
	}
	sec.Scheme = scheme
	switch o.intentionDefault {
	case "allow":
		sec.DefaultDeny = false
	case "deny":
		sec.DefaultDeny = true
	default:
		errs = append(errs, fmt.Errorf("--intention-default %q: accepted: allow, deny", o.intentionDefault))
	}
	sec.MTLS = o.mtls
	return sec, errors.Join(errs...)
}

// snapshots returns the latest-value channel of Security inputs: one after
// the first complete read of the intentions, then one per change.
func (s *securityServer) snapshots() <-chan *translate.Security { return s.inputs }

// run follows the intentions until ctx is done.
func (s *securityServer) run(ctx context.Context) error {
	mode := "plaintext unless a service's meta asks for mTLS"
	if s.base.MTLS {
		mode = "mTLS unless a service's meta opts out"
	}
	s.logger.Info("transport security", "default", mode, "trust_domain", s.base.TrustDomain.Name(),
		"spiffe_id_template", s.base.Scheme.Template(), "intention_default", s.base.DefaultAction().String())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.watcher.Run(ctx) })
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case in := <-s.watcher.Snapshots():
				sec := s.base
				sec.Intentions = in
				select {
				case <-s.inputs:
				default:
				}
				s.inputs <- &sec // never blocks: this goroutine is the only sender
			}
		}
	})
	return g.Wait()
}

// readyDetail appends the intentions watcher's state to the /readyz
// detail.
func (s *securityServer) readyDetail(b *strings.Builder) {
	st := s.watcher.Status()
	fmt.Fprintf(b, "intentions synced: %t\nintentions in effect: %d\n", st.Synced, st.Intentions)
	for _, ig := range st.Ignored {
		fmt.Fprintf(b, "intention ignored: %s -> %s: %s\n", ig.Source, ig.Destination, ig.Reason)
	}
	if st.LastError != "" {
		fmt.Fprintf(b, "intentions last error: %s\n", st.LastError)
	}
}
