package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

// policyOptions are the policy flags of `trellis server`.
type policyOptions struct {
	prefix       string
	apiTokenFile string
	// authenticators are accepted besides the bearer token, e.g. SPIFFE
	// IDs over mTLS (set from the server's TLS flags).
	authenticators []policyapi.Authenticator
}

func addPolicyServerFlags(f *pflag.FlagSet, o *policyOptions) {
	f.StringVar(&o.prefix, "policy-prefix", store.DefaultPrefix, "Consul KV prefix under which service policies are stored, one key per service")
	f.StringVar(&o.apiTokenFile, "api-token-file", "", "file holding the bearer token of the policy API (default: "+envAPIToken+"; with neither, the API refuses every call)")
}

// policyServer is the policy side of `trellis server`: the watcher that
// follows the policies in Consul, and the policy API served on the admin
// listener.
type policyServer struct {
	watcher *store.Watcher
	// grpc serves the policy API; the admin listener hands it the
	// application/grpc requests.
	grpc *grpc.Server
}

// newPolicyServer builds the policy watcher and API. knownService tells
// whether a service is in the catalog (for validation warnings).
func newPolicyServer(opts policyOptions, client *consulapi.Client, logger *slog.Logger, reg prometheus.Registerer, knownService func(string) bool, consulMetrics *consulwatch.Metrics, acl *consulwatch.ACL) (*policyServer, error) {
	st, err := store.New(store.Config{Client: client, Prefix: opts.prefix})
	if err != nil {
		return nil, err
	}
	watcher, err := store.NewWatcher(store.WatcherConfig{
		Client:        client,
		Prefix:        opts.prefix,
		Logger:        logger.With("component", "policy"),
		Registerer:    reg,
		KnownService:  knownService,
		ConsulMetrics: consulMetrics,
		ACL:           acl,
	})
	if err != nil {
		return nil, err
	}
	auths, err := policyAuthenticators(opts.apiTokenFile, os.Getenv(envAPIToken))
	if err != nil {
		return nil, err
	}
	auths = append(auths, opts.authenticators...)
	apiLogger := logger.With("component", "policyapi")
	if len(auths) == 0 {
		apiLogger.Warn(policyapi.DisabledMessage)
	}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{
		Store:          st,
		Authenticators: auths,
		KnownService:   knownService,
		Logger:         apiLogger,
	})
	if err != nil {
		return nil, err
	}
	return &policyServer{watcher: watcher, grpc: gs}, nil
}

// policyAuthenticators returns the policy API's authenticators: a bearer
// token read from tokenFile, or else envToken; none when neither is set.
func policyAuthenticators(tokenFile, envToken string) ([]policyapi.Authenticator, error) {
	token := strings.TrimSpace(envToken)
	if tokenFile != "" {
		var err error
		if token, err = policyapi.ReadTokenFile(tokenFile); err != nil {
			return nil, fmt.Errorf("--api-token-file: %w", err)
		}
	}
	if token == "" {
		return nil, nil
	}
	auth, err := policyapi.BearerToken(token)
	if err != nil {
		return nil, err
	}
	return []policyapi.Authenticator{auth}, nil
}

// run follows the policies until ctx is done, then stops the policy API.
func (p *policyServer) run(ctx context.Context) error {
	defer p.grpc.Stop()
	return p.watcher.Run(ctx)
}

// readyDetail appends the policy watcher's state to the /readyz detail.
func (p *policyServer) readyDetail(b *strings.Builder) {
	st := p.watcher.Status()
	fmt.Fprintf(b, "policies synced: %t\npolicies in effect: %d\n", st.Synced, st.Policies)
	for _, inv := range st.Invalid {
		kept := "no policy in effect"
		if inv.KeptRevision != 0 {
			kept = fmt.Sprintf("revision %d still in effect", inv.KeptRevision)
		}
		fmt.Fprintf(b, "policy key ignored: %s at revision %d (%s): %s\n", inv.Key, inv.Revision, kept, inv.Reason)
	}
	if st.LastError != "" {
		fmt.Fprintf(b, "policy store last error: %s\n", st.LastError)
	}
	// What clients are actually given: routes of policies in effect whose
	// destination no longer exists.
	if snap := p.watcher.Latest(); snap != nil {
		for _, line := range snap.DegradedDetail() {
			fmt.Fprintln(b, line)
		}
	}
}
