package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/atomicfile"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
)

// bootstrapSecurityOptions are the identity flags of `trellis bootstrap`.
type bootstrapSecurityOptions struct {
	spiffe           bool
	workloadAPIAddr  string
	spiffeID         string
	files            string
	filesRefresh     time.Duration
	xdsServerTLS     string
	xdsServerIDs     []string
	xdsServerDomains []string
	ownTrustDomain   bool
}

// Modes of --xds-server-tls.
const (
	xdsTLSInsecure = "insecure"
	xdsTLSSPIFFE   = "spiffe"
	xdsTLSFiles    = "files"
)

func newBootstrapCommand() *cobra.Command {
	var (
		cfg     bootstrap.Config
		sec     bootstrapSecurityOptions
		output  string
		forImpl string
		rbac    bool
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Write a GRPC_XDS_BOOTSTRAP file pointing a workload at Trellis",
		Long: `Write the bootstrap file that grpc-go's xDS client and xds.NewGRPCServer read
from the file named by GRPC_XDS_BOOTSTRAP. Several --xds-server flags give an
ordered list: later servers are fallbacks.

SPIFFE identity for mTLS between services (the certificate provider instance
"` + bootstrap.CertificateProviderInstance + `" that the control plane's TLS settings name), one of:
  --spiffe             the workload fetches its SVID from the Workload API in
                       process (--workload-api-addr, default the workload's
                       SPIFFE_ENDPOINT_SOCKET; --spiffe-id to pick one). Go
                       workloads import github.com/trellis-mesh/trellis/identity/certprovider.
                       With --for go the file also defines the instance
                       "` + bootstrap.OwnTrustDomainProviderInstance + `", trusting only the workload's own
                       trust domain, and declares it in the node metadata
                       (` + clients.OwnTrustDomainRootsMetadataKey + `): a server
                       whose only rule is "any workload of the trust domain"
                       then authorizes callers in the TLS handshake, without
                       the RBAC filter's cost per call. A workload built with
                       an identity/certprovider older than this option fails
                       to start with the file rather than trust every trust
                       domain; --own-trust-domain-roots=false leaves it out.
  --spiffe-files DIR   gRPC's file_watcher reads the files that
                       trellis identity sync --dir DIR keeps (any gRPC language).

Other gRPC implementations (--for):
  go     grpc-go (default): everything below.
  node   grpc-js-xds: only the first --xds-server is written (it uses no
         fallback), --xds-server-tls insecure only, identity only from
         --spiffe-files (file_watcher, without the SPIFFE bundle map:
         ca.pem carries the roots). Its xDS server gets Listeners with
         RBAC (every mTLS server Listener) only with --rbac, declaring that
         the workload runs with GRPC_XDS_EXPERIMENTAL_RBAC=true; without
         it, such Listeners are withheld and the server serves nothing.
  cpp    gRPC C-core 1.51 (Python, C++, Ruby, PHP): --xds-server-tls
         insecure only, identity only from --spiffe-files (file_watcher,
         without the SPIFFE bundle map).

The connection to the xDS server itself (--xds-server-tls):
  insecure   plaintext (default)
  spiffe     mTLS with the workload's SVID from the Workload API, in process
             (Go workloads importing identity/certprovider); the server is
             accepted by its SPIFFE ID: --xds-server-spiffe-id, or any ID of
             --xds-server-trust-domain, by default of the workload's own
             trust domain.
  files      gRPC's "tls" credentials with the files in --spiffe-files DIR.
             gRPC checks the server's host name, not its SPIFFE ID: the
             control plane's SVID needs a DNS SAN equal to the --xds-server
             host (SPIRE: entry create -dns HOST). With
             GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true in the workload, gRPC
             instead accepts any SVID of a trust domain in the bundle map.`,
		Example: `  trellis bootstrap --xds-server 127.0.0.1:18000 --node-id echo-1 -o bootstrap.json
  GRPC_XDS_BOOTSTRAP=bootstrap.json ./my-client   # dials xds:///echo

  trellis bootstrap --xds-server trellis.example:18000 --node-id echo-1 \
    --spiffe --workload-api-addr unix:///run/spire/agent.sock \
    --xds-server-tls spiffe --xds-server-spiffe-id spiffe://example.org/trellis/control-plane

  trellis identity sync --dir /run/trellis/identity &
  trellis bootstrap --xds-server trellis.example:18000 --node-id echo-1 \
    --spiffe-files /run/trellis/identity --xds-server-tls files`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyImplementation(cmd, &cfg, forImpl, rbac); err != nil {
				return err
			}
			if err := sec.apply(cmd, &cfg); err != nil {
				return err
			}
			out, err := bootstrap.Generate(cfg)
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			return atomicfile.Write(output, out, 0o644)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&cfg.Servers, "xds-server", nil, "xDS server host:port, or dns://<DNS server>/<name>:<port> to reach every replica registered under one name (see trellis server --register-service); repeat for ordered fallbacks (required)")
	f.StringVar(&cfg.NodeID, "node-id", "", "node id of the workload, e.g. its instance id (required)")
	f.StringVar(&cfg.Cluster, "cluster", "", "node cluster, usually the service name")
	f.StringVar(&cfg.Zone, "zone", "", "node locality zone")
	f.StringVar(&cfg.Region, "region", "", "node locality region")
	f.StringToStringVar(&cfg.Metadata, "metadata", nil, "node metadata key=value pairs")
	f.StringVarP(&output, "output", "o", "", "file to write (default: standard output)")
	f.StringVar(&forImpl, "for", string(bootstrap.ForGo), "gRPC implementation reading the file: go (grpc-go), node (grpc-js-xds), cpp (C-core: Python, C++, Ruby, PHP); the file holds only what it accepts")
	f.BoolVar(&rbac, "rbac", false, "with --for node: the workload runs with GRPC_XDS_EXPERIMENTAL_RBAC=true, so its xDS server may be given Listeners carrying RBAC (node metadata "+clients.RBACMetadataKey+")")
	f.BoolVar(&sec.spiffe, "spiffe", false, "SVID for mTLS between services from the Workload API, in process (certificate provider "+identity.ProviderPluginName+")")
	f.StringVar(&sec.workloadAPIAddr, "workload-api-addr", "", "Workload API address for --spiffe and --xds-server-tls spiffe, unix:///path or tcp://ip:port (default: the workload's "+workloadapi.SocketEnv+")")
	f.StringVar(&sec.spiffeID, "spiffe-id", "", "SPIFFE ID of the workload's SVID when the Workload API offers several (default: the first)")
	f.StringVar(&sec.files, "spiffe-files", "", "directory where trellis identity sync keeps the SVID files; SVID for mTLS between services from them (certificate provider "+identity.FileWatcherPluginName+")")
	f.DurationVar(&sec.filesRefresh, "spiffe-files-refresh", identity.DefaultFileRefreshInterval, "how often gRPC re-reads the --spiffe-files files; keep it well under the SVID lifetime")
	f.StringVar(&sec.xdsServerTLS, "xds-server-tls", xdsTLSInsecure, "transport to the xDS server: insecure, spiffe or files")
	f.StringArrayVar(&sec.xdsServerIDs, "xds-server-spiffe-id", nil, "SPIFFE ID the xDS server may present, with --xds-server-tls spiffe; repeatable")
	f.BoolVar(&sec.ownTrustDomain, "own-trust-domain-roots", true, "with --spiffe and --for go: also write the certificate provider instance "+bootstrap.OwnTrustDomainProviderInstance+" that trusts only the workload's own trust domain, and declare it (node metadata "+clients.OwnTrustDomainRootsMetadataKey+"); false for workloads built with an identity/certprovider without the roots option")
	f.StringArrayVar(&sec.xdsServerDomains, "xds-server-trust-domain", nil, "trust domain any of whose IDs the xDS server may present, with --xds-server-tls spiffe; repeatable (default: the workload's own, unless --xds-server-spiffe-id is given)")
	return cmd
}

// apply checks the identity flags and adds the certificate provider and
// channel credentials they ask for to cfg. It warns on the command's
// standard error about a Workload API socket that does not exist here.
func (o bootstrapSecurityOptions) apply(cmd *cobra.Command, cfg *bootstrap.Config) error {
	flags := cmd.Flags()
	if o.spiffe && o.files != "" {
		return errors.New("--spiffe and --spiffe-files are exclusive: the SVID comes from the Workload API in process, or from files")
	}
	switch o.xdsServerTLS {
	case xdsTLSInsecure, xdsTLSSPIFFE, xdsTLSFiles:
	default:
		return fmt.Errorf("--xds-server-tls %q: accepted: %s, %s, %s", o.xdsServerTLS, xdsTLSInsecure, xdsTLSSPIFFE, xdsTLSFiles)
	}
	inProcess := o.spiffe || o.xdsServerTLS == xdsTLSSPIFFE
	if !inProcess && (o.workloadAPIAddr != "" || o.spiffeID != "") {
		return errors.New("--workload-api-addr and --spiffe-id apply to --spiffe and --xds-server-tls spiffe only (trellis identity sync takes them for --spiffe-files)")
	}
	if o.xdsServerTLS != xdsTLSSPIFFE && (len(o.xdsServerIDs) > 0 || len(o.xdsServerDomains) > 0) {
		return errors.New("--xds-server-spiffe-id and --xds-server-trust-domain apply to --xds-server-tls spiffe only")
	}
	if o.xdsServerTLS == xdsTLSFiles && o.files == "" {
		return errors.New("--xds-server-tls files needs --spiffe-files DIR, the directory trellis identity sync keeps")
	}
	if flags.Changed("spiffe-files-refresh") && o.files == "" {
		return errors.New("--spiffe-files-refresh applies to --spiffe-files only")
	}
	goBootstrap := cfg.For == "" || cfg.For == bootstrap.ForGo
	if flags.Changed("own-trust-domain-roots") && (!o.spiffe || !goBootstrap) {
		return errors.New("--own-trust-domain-roots applies to --spiffe with --for go only (the trellis_spiffe certificate provider of Go workloads)")
	}

	var dir string
	if o.files != "" {
		var err error
		if dir, err = filepath.Abs(o.files); err != nil {
			return fmt.Errorf("--spiffe-files %q: %w", o.files, err)
		}
	}
	providers := map[string]json.RawMessage{}
	switch {
	case o.spiffe:
		frag, err := identity.ProviderFragment(identity.ProviderConfig{WorkloadAPIAddr: o.workloadAPIAddr, SPIFFEID: o.spiffeID})
		if err != nil {
			return fmt.Errorf("--spiffe: %w", err)
		}
		providers[bootstrap.CertificateProviderInstance] = frag
		if goBootstrap && o.ownTrustDomain {
			own, err := identity.ProviderFragment(identity.ProviderConfig{WorkloadAPIAddr: o.workloadAPIAddr, SPIFFEID: o.spiffeID, Roots: identity.RootsOwnTrustDomain})
			if err != nil {
				return fmt.Errorf("--spiffe: %w", err)
			}
			providers[bootstrap.OwnTrustDomainProviderInstance] = own
			if cfg.Metadata == nil {
				cfg.Metadata = map[string]string{}
			}
			cfg.Metadata[clients.OwnTrustDomainRootsMetadataKey] = "true"
		}
	case o.files != "":
		frag, err := identity.FileWatcherProvider(dir, o.filesRefresh)
		if err != nil {
			return fmt.Errorf("--spiffe-files: %w", err)
		}
		providers[bootstrap.CertificateProviderInstance] = frag
	}
	if len(providers) > 0 {
		if cfg.CertificateProviders == nil {
			cfg.CertificateProviders = map[string]json.RawMessage{}
		}
		maps.Copy(cfg.CertificateProviders, providers)
	}

	var creds json.RawMessage
	switch o.xdsServerTLS {
	case xdsTLSSPIFFE:
		entry, err := identity.ChannelCreds(identity.ChannelCredsConfig{
			WorkloadAPIAddr:    o.workloadAPIAddr,
			SPIFFEID:           o.spiffeID,
			ServerSPIFFEIDs:    o.xdsServerIDs,
			ServerTrustDomains: o.xdsServerDomains,
		})
		if err != nil {
			return fmt.Errorf("--xds-server-tls spiffe: %w", err)
		}
		creds = entry
	case xdsTLSFiles:
		entry, err := identity.TLSFilesChannelCreds(dir, o.filesRefresh)
		if err != nil {
			return fmt.Errorf("--xds-server-tls files: %w", err)
		}
		creds = entry
	}
	if creds != nil {
		cfg.ChannelCreds = json.RawMessage("[" + string(creds) + "]")
	}

	if inProcess && o.workloadAPIAddr != "" {
		if u, err := url.Parse(o.workloadAPIAddr); err == nil && u.Scheme == "unix" {
			if _, err := os.Stat(u.Path); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "trellis: warning: --workload-api-addr %s: %v; the workload needs the SPIFFE agent's socket there when it runs\n", o.workloadAPIAddr, err)
			}
		}
	}
	return nil
}

// applyImplementation sets cfg.For from --for and the node metadata of
// --rbac, and warns about the xDS servers left out for grpc-js-xds.
func applyImplementation(cmd *cobra.Command, cfg *bootstrap.Config, forImpl string, rbac bool) error {
	impl := bootstrap.Implementation(forImpl)
	if !slices.Contains(bootstrap.Implementations(), impl) {
		return fmt.Errorf("--for %q: accepted: go, node, cpp", forImpl)
	}
	cfg.For = impl
	if rbac {
		if impl != bootstrap.ForNode {
			return errors.New("--rbac applies to --for node only: grpc-go and C-core always have the RBAC filter")
		}
		if cfg.Metadata == nil {
			cfg.Metadata = map[string]string{}
		}
		cfg.Metadata[clients.RBACMetadataKey] = "true"
	}
	if impl == bootstrap.ForNode && len(cfg.Servers) > 1 {
		fmt.Fprintf(cmd.ErrOrStderr(), "trellis: warning: --for node: grpc-js-xds uses only the first xDS server; %s written, %v left out\n", cfg.Servers[0], cfg.Servers[1:])
	}
	return nil
}
