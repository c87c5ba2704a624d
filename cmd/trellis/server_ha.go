package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/xdsserver/admin"
)

// Defaults of the replica flags of `trellis server`.
const (
	defaultRegisterService = "trellis-xds"
	// Consul reaps critical services no sooner than a minute, and only
	// every 30 s; a shorter value is rounded up by Consul.
	defaultDeregisterAfter = time.Minute
	// registrationRecheck is how often the registration is checked and
	// made again when the agent lost it (a restarted dev agent, a
	// deregistration by an operator).
	registrationRecheck = 15 * time.Second
	// registerCheckInterval and registerCheckTimeout tune the readiness
	// check: a replica killed without deregistering leaves Consul's DNS
	// answers (and every healthy-only query) within about a second.
	registerCheckInterval = time.Second
	registerCheckTimeout  = time.Second
)

// haOptions are the flags by which replicas of `trellis server` are
// exposed: the xDS listener's reach, and the registration in Consul that
// lets one server URI (Consul DNS, or any resolver gRPC supports) resolve
// to every ready replica.
type haOptions struct {
	xdsInsecure     bool
	service         string
	address         string
	deregisterAfter time.Duration
	xdsScope        string
}

func addHAServerFlags(f *pflag.FlagSet, o *haOptions) {
	f.BoolVar(&o.xdsInsecure, "xds-insecure", false, "allow plaintext xDS on a non-loopback --xds-listen: any client that reaches it can read every service's configuration (default: plaintext xDS listens on loopback only; use --xds-tls)")
	f.StringVar(&o.service, "register-service", defaultRegisterService, "Consul service name under which this replica registers its xDS listener, with a readiness check on the admin listener's /readyz, so that clients can use e.g. the server URI dns://<consul-dns>/"+defaultRegisterService+".service.consul:<port>; empty: do not register")
	f.StringVar(&o.address, "register-address", "", "address registered for the xDS listener (default: the host of --xds-listen, or the Consul node's address when it listens on every address)")
	f.StringVar(&o.xdsScope, "xds-scope", xdsScopeAll, "what each xDS client receives: "+xdsScopeAll+" (every resource), or "+xdsScopeIntentions+" (with --xds-tls: the services its SPIFFE ID may call under the intentions and its own server Listeners; anything else is answered as does-not-exist and counted in trellis_xds_scope_denied_total)")
	f.DurationVar(&o.deregisterAfter, "register-deregister-after", defaultDeregisterAfter, "how long Consul keeps a replica whose readiness check is critical (killed without a clean shutdown) before removing it; at least 1m")
}

// checkXDSListen refuses a plaintext xDS listener that is not on loopback
// unless --xds-insecure says so. A listener that is not a literal IP (a
// host name, or every address) counts as non-loopback.
func checkXDSListen(listen string, xdsTLS bool, o haOptions, logger *slog.Logger) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--xds-listen %q: want host:port, e.g. 127.0.0.1:18000: %w", listen, err)
	}
	if xdsTLS {
		if o.xdsInsecure {
			return errors.New("--xds-insecure and --xds-tls: choose one; --xds-tls serves mTLS clients only")
		}
		return nil
	}
	loopback := isLoopbackHost(host)
	switch {
	case o.xdsInsecure:
		logger.Warn("plaintext xDS without authentication (--xds-insecure): any client that reaches the listener can read every service's endpoints, routes and authorization rules", "xds_listen", listen)
	case !loopback:
		return fmt.Errorf("--xds-listen %q: plaintext xDS listens on a loopback address only (127.0.0.1, ::1, localhost); to serve other hosts use --xds-tls (mTLS with SPIFFE identities), or accept unauthenticated plaintext explicitly with --xds-insecure", listen)
	}
	return nil
}

// isLoopbackHost tells whether host is "localhost" or a loopback IP.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// replicaRegistration keeps this replica's xDS listener registered in the
// local Consul agent while the server runs, and deregisters it on a clean
// shutdown. A replica killed without shutting down is taken out of
// healthy-only answers by its readiness check within about a second, and
// removed by Consul after --register-deregister-after.
type replicaRegistration struct {
	agent *consulapi.Agent
	reg   *consulapi.AgentServiceRegistration
	// recheck is how often the registration is checked.
	// Default: registrationRecheck.
	recheck time.Duration
	logger  *slog.Logger
}

// newReplicaRegistration validates the flags and builds the registration
// of the xDS listener xdsAddr, with a readiness check on the admin
// listener adminAddr. It returns nil when --register-service is empty.
func newReplicaRegistration(o haOptions, client *consulapi.Client, xdsAddr, adminAddr net.Addr, xdsTLS bool, logger *slog.Logger) (*replicaRegistration, error) {
	if o.service == "" {
		return nil, nil
	}
	if o.deregisterAfter < time.Minute {
		return nil, fmt.Errorf("--register-deregister-after %s: at least 1m (Consul's shortest)", o.deregisterAfter)
	}
	xdsHost, xdsPort, err := hostPort(xdsAddr)
	if err != nil {
		return nil, fmt.Errorf("register xDS listener: %w", err)
	}
	address := o.address
	if address == "" && !net.ParseIP(xdsHost).IsUnspecified() {
		address = xdsHost
	}
	adminHost, adminPort, err := hostPort(adminAddr)
	if err != nil {
		return nil, fmt.Errorf("register xDS listener: admin listener: %w", err)
	}
	if net.ParseIP(adminHost).IsUnspecified() {
		adminHost = "127.0.0.1"
	}
	id := o.service + "-" + net.JoinHostPort(xdsHost, strconv.Itoa(xdsPort))
	meta := map[string]string{"trellis-xds-tls": strconv.FormatBool(xdsTLS)}
	return &replicaRegistration{
		agent: client.Agent(),
		reg: &consulapi.AgentServiceRegistration{
			ID:      id,
			Name:    o.service,
			Address: address,
			Port:    xdsPort,
			Meta:    meta,
			Check: &consulapi.AgentServiceCheck{
				CheckID:                        id + "-ready",
				Name:                           "trellis xDS replica ready",
				HTTP:                           "http://" + net.JoinHostPort(adminHost, strconv.Itoa(adminPort)) + "/readyz",
				Method:                         "GET",
				Interval:                       registerCheckInterval.String(),
				Timeout:                        registerCheckTimeout.String(),
				DeregisterCriticalServiceAfter: o.deregisterAfter.String(),
			},
		},
		recheck: registrationRecheck,
		logger:  logger.With("component", "registration"),
	}, nil
}

func hostPort(a net.Addr) (string, int, error) {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", a, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: port: %w", a, err)
	}
	return host, p, nil
}

// run registers the replica, keeps it registered until ctx is done, then
// deregisters it. Consul being unreachable delays the registration but
// never stops the server: run returns nil.
func (r *replicaRegistration) run(ctx context.Context) error {
	if r == nil {
		return nil
	}
	registered := false
	backoff := 250 * time.Millisecond
	for {
		wait := r.recheck
		if err := r.ensure(ctx, &registered); err != nil {
			r.logger.Warn("registering the xDS replica in Consul failed; retrying", "service", r.reg.Name, "id", r.reg.ID, "error", err, "retry_in", backoff)
			wait = backoff
			backoff = min(2*backoff, 10*time.Second)
		} else {
			backoff = 250 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			r.deregister(registered)
			return nil
		case <-time.After(wait):
		}
	}
}

// ensure registers the replica when the agent does not hold it.
func (r *replicaRegistration) ensure(ctx context.Context, registered *bool) error {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	if *registered {
		svc, _, err := r.agent.Service(r.reg.ID, q)
		if err == nil && svc != nil {
			return nil
		}
		var se consulapi.StatusError
		if err != nil && !(errors.As(err, &se) && se.Code == 404) {
			return fmt.Errorf("read registration %q: %w", r.reg.ID, err)
		}
		r.logger.Warn("the Consul agent lost the xDS replica's registration; registering again", "id", r.reg.ID)
	}
	opts := consulapi.ServiceRegisterOpts{}.WithContext(ctx)
	if err := r.agent.ServiceRegisterOpts(r.reg, opts); err != nil {
		return fmt.Errorf("register service %q: %w", r.reg.Name, err)
	}
	if !*registered {
		r.logger.Info("registered the xDS replica in Consul", "service", r.reg.Name, "id", r.reg.ID,
			"address", r.reg.Address, "port", r.reg.Port, "check", r.reg.Check.HTTP,
			"deregister_critical_after", r.reg.Check.DeregisterCriticalServiceAfter)
	}
	*registered = true
	return nil
}

// deregister removes the registration on shutdown, so that no client is
// sent to a replica that is going away.
func (r *replicaRegistration) deregister(registered bool) {
	if !registered {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	if err := r.agent.ServiceDeregisterOpts(r.reg.ID, q); err != nil {
		r.logger.Warn("deregistering the xDS replica from Consul failed; its readiness check turns critical and Consul removes it later",
			"id", r.reg.ID, "error", err, "deregister_critical_after", r.reg.Check.DeregisterCriticalServiceAfter)
		return
	}
	r.logger.Info("deregistered the xDS replica from Consul", "id", r.reg.ID)
}

// debugAuth returns the admin listener's authenticator of /debug/*
// requests from non-loopback callers: the policy API's credentials (its
// bearer token, and the SPIFFE IDs allowed over mTLS when the request came
// over TLS), checked by the policy API's own authenticators.
func debugAuth(o policyOptions) func(*http.Request) error {
	auths, err := policyAuthenticators(o.apiTokenFile, os.Getenv(envAPIToken))
	if err != nil {
		// The policy API refuses to start with the same error.
		return func(*http.Request) error { return fmt.Errorf("debug views: %w", err) }
	}
	auths = append(auths, o.authenticators...)
	return func(r *http.Request) error {
		if len(auths) == 0 {
			return errors.New("debug views answer loopback callers only: no policy API credentials are configured (--api-token-file, " + envAPIToken + ")")
		}
		ctx := metadata.NewIncomingContext(r.Context(), metadata.MD{"authorization": r.Header.Values("Authorization")})
		p := &peer.Peer{}
		if r.TLS != nil {
			p.AuthInfo = credentials.TLSInfo{State: *r.TLS}
		}
		ctx = peer.NewContext(ctx, p)
		// As the policy API decides: the first authenticator to accept
		// lets the request through; credentials seen and refused are
		// reported before missing ones.
		var denied, unauthenticated error
		for _, auth := range auths {
			err := auth(ctx)
			switch {
			case err == nil:
				return nil
			case status.Code(err) == codes.Unauthenticated:
				unauthenticated = cmp.Or(unauthenticated, err)
			default:
				denied = cmp.Or(denied, err)
			}
		}
		if denied != nil {
			return errors.New(status.Convert(denied).Message())
		}
		return fmt.Errorf("%s: %w", status.Convert(unauthenticated).Message(), admin.ErrNoCredentials)
	}
}
