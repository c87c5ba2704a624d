package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

// serverTLSOptions are the flags by which `trellis server` takes its own
// SPIFFE identity: mTLS on the xDS listener, and a policy API listener over
// mTLS.
type serverTLSOptions struct {
	xdsTLS          bool
	workloadAPIAddr string
	spiffeID        string
	trustDomains    []string
	apiTLSListen    string
	apiAllowedIDs   []string
	svidTimeout     time.Duration
}

func addServerTLSFlags(f *pflag.FlagSet, o *serverTLSOptions) {
	f.BoolVar(&o.xdsTLS, "xds-tls", false, "serve xDS over mTLS only, with the control plane's SVID from the Workload API; clients need an SVID of an accepted trust domain (--xds-tls-trust-domain)")
	f.StringVar(&o.workloadAPIAddr, "workload-api-addr", "", "Workload API address of the control plane's SVID, unix:///path or tcp://ip:port (default: "+workloadapi.SocketEnv+"); used with --xds-tls and --api-tls-listen")
	f.StringVar(&o.spiffeID, "spiffe-id", "", "SPIFFE ID of the control plane's SVID when the Workload API offers several (default: the first)")
	f.StringArrayVar(&o.trustDomains, "xds-tls-trust-domain", nil, "trust domain whose SVIDs may fetch xDS configuration with --xds-tls; repeatable (default: the control plane's own)")
	f.StringVar(&o.apiTLSListen, "api-tls-listen", "", "address of a policy API listener over mTLS with the control plane's SVID, which also serves the admin endpoints (/debug/* to --api-allowed-spiffe-id) (default: none)")
	f.StringArrayVar(&o.apiAllowedIDs, "api-allowed-spiffe-id", nil, "SPIFFE ID allowed to call the policy API over --api-tls-listen; repeatable")
	f.DurationVar(&o.svidTimeout, "workload-api-timeout", 30*time.Second, "how long to wait at startup for the control plane's first SVID")
}

// serverTLS is the control plane's own SPIFFE identity and what it secures:
// the xDS listener and the policy API's mTLS listener. A zero serverTLS
// (no flag set) secures nothing.
type serverTLS struct {
	src    *certprovider.Provider // nil when disabled
	addr   string
	self   spiffeid.ID
	xds    bool
	xdsTDs []spiffeid.TrustDomain
	apiLis net.Listener
	apiIDs []spiffeid.ID
	logger *slog.Logger
}

// newServerTLS validates the flags and, when they ask for TLS, waits for the
// control plane's first SVID (up to --workload-api-timeout) and binds the
// policy API's mTLS listener. The caller closes it.
func newServerTLS(ctx context.Context, o serverTLSOptions, logger *slog.Logger) (*serverTLS, error) {
	s := &serverTLS{xds: o.xdsTLS, logger: logger.With("component", "identity")}
	var errs []error
	for _, name := range o.trustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err == nil && td.Name() != name {
			err = errors.New("not a bare trust domain name")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--xds-tls-trust-domain %q: %w (want a name such as example.org)", name, err))
			continue
		}
		s.xdsTDs = append(s.xdsTDs, td)
	}
	for _, raw := range o.apiAllowedIDs {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("--api-allowed-spiffe-id %q: %w (want spiffe://<trust domain>/<path>)", raw, err))
			continue
		}
		s.apiIDs = append(s.apiIDs, id)
	}
	var want spiffeid.ID
	if o.spiffeID != "" {
		var err error
		if want, err = spiffeid.FromString(o.spiffeID); err != nil {
			errs = append(errs, fmt.Errorf("--spiffe-id %q: %w (want spiffe://<trust domain>/<path>)", o.spiffeID, err))
		}
	}
	enabled := o.xdsTLS || o.apiTLSListen != ""
	if !o.xdsTLS && len(o.trustDomains) > 0 {
		errs = append(errs, errors.New("--xds-tls-trust-domain applies to --xds-tls only"))
	}
	if o.apiTLSListen == "" && len(o.apiAllowedIDs) > 0 {
		errs = append(errs, errors.New("--api-allowed-spiffe-id needs --api-tls-listen: the policy API listener over mTLS"))
	}
	if !enabled && (o.workloadAPIAddr != "" || o.spiffeID != "") {
		errs = append(errs, errors.New("--workload-api-addr and --spiffe-id apply to --xds-tls and --api-tls-listen only"))
	}
	if o.svidTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--workload-api-timeout %s: must be positive", o.svidTimeout))
	}
	var err error
	if enabled {
		if s.addr, err = identity.WorkloadAPIAddr(o.workloadAPIAddr); err != nil {
			errs = append(errs, fmt.Errorf("--workload-api-addr: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil || !enabled {
		return s, err
	}

	s.src, err = certprovider.New(certprovider.Config{WorkloadAPIAddr: s.addr, SPIFFEID: want, Logger: s.logger})
	if err != nil {
		return nil, err
	}
	if s.self, err = s.waitForSVID(ctx, o.svidTimeout); err != nil {
		s.Close()
		return nil, err
	}
	if o.apiTLSListen != "" {
		if s.apiLis, err = net.Listen("tcp", o.apiTLSListen); err != nil {
			s.Close()
			return nil, fmt.Errorf("policy API mTLS listener: %w", err)
		}
	}
	accepted := s.acceptedTrustDomains()
	s.logger.Info("control plane identity", "spiffe_id", s.self.String(), "workload_api", s.addr,
		"xds_tls", s.xds, "xds_trust_domains", strings.Join(accepted, ","), "api_tls_listen", o.apiTLSListen)
	if s.apiLis != nil && len(s.apiIDs) == 0 {
		s.logger.Warn("no --api-allowed-spiffe-id: the policy API over mTLS accepts only the other credentials configured (bearer token)")
	}
	return s, nil
}

// waitForSVID waits until the Workload API has delivered the control
// plane's SVID, and returns its SPIFFE ID.
func (s *serverTLS) waitForSVID(ctx context.Context, timeout time.Duration) (spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		km, err := s.src.KeyMaterial(attempt)
		cancelAttempt()
		if err == nil {
			id, err := spiffeIDOf(km.Certs[0].Leaf)
			if err != nil {
				return spiffeid.ID{}, fmt.Errorf("control plane SVID: %w", err)
			}
			return id, nil
		}
		select {
		case <-ctx.Done():
			return spiffeid.ID{}, fmt.Errorf("no X.509 SVID for the control plane from the Workload API at %s within %s (--workload-api-timeout): %w", s.addr, timeout, err)
		case <-tick.C:
		}
	}
}

// acceptedTrustDomains names the trust domains whose SVIDs may fetch xDS
// configuration.
func (s *serverTLS) acceptedTrustDomains() []string {
	if !s.xds {
		return nil
	}
	tds := s.xdsTDs
	if len(tds) == 0 {
		tds = []spiffeid.TrustDomain{s.self.TrustDomain()}
	}
	names := make([]string, len(tds))
	for i, td := range tds {
		names[i] = td.Name()
	}
	return names
}

// xdsServerOptions returns the xDS server's transport credentials, if any.
func (s *serverTLS) xdsServerOptions() []grpc.ServerOption {
	if !s.xds {
		return nil
	}
	// With no --xds-tls-trust-domain, AuthorizeTrustDomains accepts the
	// control plane's own trust domain.
	return []grpc.ServerOption{grpc.Creds(spiffetls.ServerCredentials(s.src, spiffetls.AuthorizeTrustDomains(s.xdsTDs...)))}
}

// policyAuthenticators returns the policy API authenticator of the SPIFFE
// IDs allowed over mTLS, if any.
func (s *serverTLS) policyAuthenticators() []policyapi.Authenticator {
	if len(s.apiIDs) == 0 {
		return nil
	}
	return []policyapi.Authenticator{spiffeAuthenticator(s.apiIDs)}
}

// spiffeAuthenticator accepts the policy API calls that come over mTLS
// from one of allowed. It relies on the listener's TLS configuration having
// verified the caller's chain (spiffetls.ServerConfig does).
func spiffeAuthenticator(allowed []spiffeid.ID) policyapi.Authenticator {
	allow := spiffetls.AuthorizeIDs(allowed...)
	return func(ctx context.Context) error {
		id, err := spiffetls.PeerID(ctx)
		if err != nil {
			return status.Error(codes.Unauthenticated, "no SPIFFE ID: call the mTLS policy listener (--api-tls-listen) with an X.509 SVID")
		}
		if err := allow(id, spiffeid.ID{}); err != nil {
			return status.Errorf(codes.PermissionDenied, "SPIFFE ID %s is not allowed to call the policy API (--api-allowed-spiffe-id)", id)
		}
		return nil
	}
}

// serveAPI serves the policy API (a gRPC handler) over mTLS on the
// --api-tls-listen listener until ctx is done. Callers present an SVID of
// any trust domain the control plane has a bundle for; the API's
// authenticators decide who may call. Without the listener it returns nil
// at once.
func (s *serverTLS) serveAPI(ctx context.Context, api http.Handler) error {
	if s.apiLis == nil {
		return nil
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	srv := &http.Server{
		Handler:           api,
		Protocols:         &protocols,
		TLSConfig:         spiffetls.ServerConfig(s.src, spiffetls.AuthorizeAny()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(s.apiLis, "", "") }()
	s.logger.Info("serving the policy API over mTLS", "addr", s.apiLis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("policy API mTLS listener: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		if err := srv.Close(); err != nil {
			s.logger.Warn("close policy API mTLS listener", "error", err)
		}
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("policy API mTLS listener: %w", err)
	}
	return nil
}

// readyDetail appends the control plane's SVID to the /readyz detail.
func (s *serverTLS) readyDetail(b *strings.Builder) {
	if s.src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	km, err := s.src.KeyMaterial(ctx)
	if err != nil {
		fmt.Fprintf(b, "control plane SVID: none: %v\n", err)
		return
	}
	leaf := km.Certs[0].Leaf
	id, _ := spiffeIDOf(leaf) // checked when the SVID arrived
	state := "valid"
	if !time.Now().Before(leaf.NotAfter) {
		state = "EXPIRED, the Workload API has not delivered a new one"
	}
	fmt.Fprintf(b, "control plane SVID: %s, expires %s (%s)\n", id, leaf.NotAfter.UTC().Format(time.RFC3339), state)
	if s.xds {
		fmt.Fprintf(b, "xds mTLS: accepting trust domains %s\n", strings.Join(s.acceptedTrustDomains(), ", "))
	}
}

// Close stops following the Workload API and closes the policy API
// listener if it was never served. It is idempotent.
func (s *serverTLS) Close() {
	if s.apiLis != nil {
		_ = s.apiLis.Close() // closed already once served
	}
	if s.src != nil {
		s.src.Close()
	}
}

// spiffeIDOf returns the SPIFFE ID of an SVID's leaf certificate.
func spiffeIDOf(leaf *x509.Certificate) (spiffeid.ID, error) {
	if leaf == nil {
		return spiffeid.ID{}, errors.New("no leaf certificate")
	}
	return x509svid.IDFromCert(leaf)
}
