package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
)

// policySPIFFEOptions are the flags by which the policy commands call the
// policy API over mTLS (the server's --api-tls-listen) with the caller's
// SVID from the Workload API.
type policySPIFFEOptions struct {
	enabled         bool
	workloadAPIAddr string
	spiffeID        string
	serverIDs       []string
	serverDomains   []string
}

func addPolicySPIFFEFlags(f *pflag.FlagSet, o *policySPIFFEOptions) {
	f.BoolVar(&o.enabled, "spiffe", false, "call the policy API over mTLS with this workload's SVID from the Workload API; --server is then the server's --api-tls-listen address, and --server-spiffe-id or --server-trust-domain is required")
	f.StringVar(&o.workloadAPIAddr, "workload-api-addr", "", "Workload API address for --spiffe, unix:///path or tcp://ip:port (default: "+workloadapi.SocketEnv+")")
	f.StringVar(&o.spiffeID, "spiffe-id", "", "SPIFFE ID of the SVID to call with when the Workload API offers several, with --spiffe (default: the first)")
	f.StringArrayVar(&o.serverIDs, "server-spiffe-id", nil, "SPIFFE ID the policy API server must present, with --spiffe; repeatable")
	f.StringArrayVar(&o.serverDomains, "server-trust-domain", nil, "trust domain any of whose SPIFFE IDs the policy API server may present, with --spiffe; repeatable")
}

// policySPIFFE is the caller's SVID for policy commands over mTLS, and the
// server identities it accepts.
type policySPIFFE struct {
	src       *certprovider.Provider
	addr      string // Workload API
	self      spiffeid.ID
	authorize spiffetls.Authorizer
}

// open validates the flags and, with --spiffe, waits (until ctx ends) for
// the caller's SVID from the Workload API. Without --spiffe it returns nil.
// The caller closes the result.
func (o policySPIFFEOptions) open(ctx context.Context) (*policySPIFFE, error) {
	if !o.enabled {
		if o.workloadAPIAddr != "" || o.spiffeID != "" || len(o.serverIDs) > 0 || len(o.serverDomains) > 0 {
			return nil, errors.New("--workload-api-addr, --spiffe-id, --server-spiffe-id and --server-trust-domain apply to --spiffe only")
		}
		return nil, nil
	}
	var errs []error
	var want spiffeid.ID
	if o.spiffeID != "" {
		var err error
		if want, err = spiffeid.FromString(o.spiffeID); err != nil {
			errs = append(errs, fmt.Errorf("--spiffe-id %q: %w (want spiffe://<trust domain>/<path>)", o.spiffeID, err))
		}
	}
	var auths []spiffetls.Authorizer
	var ids []spiffeid.ID
	for _, raw := range o.serverIDs {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("--server-spiffe-id %q: %w (want spiffe://<trust domain>/<path>)", raw, err))
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) > 0 {
		auths = append(auths, spiffetls.AuthorizeIDs(ids...))
	}
	var tds []spiffeid.TrustDomain
	for _, name := range o.serverDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err == nil && td.Name() != name {
			err = errors.New("not a bare trust domain name")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--server-trust-domain %q: %w (want a name such as example.org)", name, err))
			continue
		}
		tds = append(tds, td)
	}
	if len(tds) > 0 {
		auths = append(auths, spiffetls.AuthorizeTrustDomains(tds...))
	}
	if len(o.serverIDs) == 0 && len(o.serverDomains) == 0 {
		errs = append(errs, errors.New("--spiffe needs --server-spiffe-id, the SPIFFE ID of the trellis server's SVID (such as spiffe://example.org/trellis/control-plane), or --server-trust-domain"))
	}
	addr, err := identity.WorkloadAPIAddr(o.workloadAPIAddr)
	if err != nil {
		errs = append(errs, fmt.Errorf("--workload-api-addr: %w", err))
	} else if err := checkSocket(addr, o.workloadAPIAddr == ""); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	src, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: addr, SPIFFEID: want, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("--spiffe: %w", err)
	}
	p := &policySPIFFE{src: src, addr: addr, authorize: spiffetls.AuthorizeEither(auths...)}
	km, err := src.KeyMaterial(ctx)
	if err == nil {
		p.self, err = spiffeIDOf(km.Certs[0].Leaf)
	}
	if err != nil {
		src.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("--spiffe: no X.509 SVID from the Workload API at %s before the command's --timeout: %w", addr, err)
		}
		return nil, fmt.Errorf("--spiffe: %w", err)
	}
	return p, nil
}

// checkSocket fails when a unix Workload API address names no socket here.
func checkSocket(addr string, fromEnv bool) error {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "unix" {
		return nil // tcp: the connection says
	}
	source := "--workload-api-addr"
	if fromEnv {
		source = workloadapi.SocketEnv
	}
	fi, err := os.Stat(u.Path)
	switch {
	case err != nil:
		return fmt.Errorf("--spiffe: no Workload API socket at %s (%s): %w; is a SPIRE agent running there?", u.Path, source, err)
	case fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("--spiffe: %s (%s) is not a socket: want the SPIRE agent's Workload API socket", u.Path, source)
	}
	return nil
}

// credentials returns the transport credentials that present the caller's
// SVID and accept the server by its SPIFFE ID.
func (p *policySPIFFE) credentials() credentials.TransportCredentials {
	return spiffetls.ClientCredentials(p.src, p.authorize)
}

// hint explains a connection failure over mTLS, or returns "".
func (p *policySPIFFE) hint(msg string) string {
	switch {
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "; with --spiffe, --server must be the server's --api-tls-listen address"
	case strings.Contains(msg, "is not one of the accepted SPIFFE IDs"), strings.Contains(msg, "is not in an accepted trust domain"):
		return "; the server's SVID does not match --server-spiffe-id / --server-trust-domain"
	}
	return ""
}

// Close stops following the Workload API. It is idempotent.
func (p *policySPIFFE) Close() { p.src.Close() }
