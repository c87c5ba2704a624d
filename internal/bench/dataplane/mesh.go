package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/policy"
	"github.com/trellis-mesh/trellis/internal/policy/store"
)

// startTimeout bounds the start of each component of the mesh: generous,
// for a loaded 2-core machine.
const startTimeout = 90 * time.Second

// mesh is the control plane of the benchmark: a Consul dev agent, a SPIRE
// server with one agent (when a configuration uses mTLS through xDS), and
// `trellis server` watching that Consul.
type mesh struct {
	dir         string
	consulAddr  string
	consul      *api.Client
	sockDir     string // holds the SPIRE sockets; removed by close
	spireSock   string // server admin socket
	agentSock   string // Workload API socket
	spireBin    string
	trustDomain spiffeid.TrustDomain
	xdsAddr     string
	procs       []*process
}

// meshTrustDomain is the trust domain of the benchmark's workloads.
const meshTrustDomain = "bench.trellis.test"

// startMesh starts the control plane; close stops it.
func startMesh(ctx context.Context, cfg Config, dir string) (m *mesh, err error) {
	m = &mesh{dir: dir, spireBin: cfg.SPIREServerBin, trustDomain: spiffeid.RequireTrustDomainFromString(meshTrustDomain)}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.close())
		}
	}()
	if err := m.startConsul(ctx, cfg.ConsulBin); err != nil {
		return m, err
	}
	if cfg.needsSPIRE() {
		if err := m.startSPIRE(ctx, cfg.SPIREServerBin, cfg.SPIREAgentBin); err != nil {
			return m, err
		}
	}
	if err := m.startTrellis(ctx, cfg.TrellisBin); err != nil {
		return m, err
	}
	return m, nil
}

// close stops the processes, last started first.
func (m *mesh) close() error {
	err := stopAll(m.procs)
	if m.sockDir != "" {
		err = errors.Join(err, os.RemoveAll(m.sockDir))
	}
	return err
}

func (m *mesh) startConsul(ctx context.Context, bin string) error {
	ports := map[string]int{}
	for _, name := range []string{"http", "serf-lan", "serf-wan", "server"} {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[name] = p
	}
	m.consulAddr = "127.0.0.1:" + strconv.Itoa(ports["http"])
	p, err := startProcess(m.dir, "consul", nil, false, bin, "agent", "-dev",
		"-node", "bench", "-datacenter", "dc1",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-http-port", strconv.Itoa(ports["http"]),
		"-serf-lan-port", strconv.Itoa(ports["serf-lan"]),
		"-serf-wan-port", strconv.Itoa(ports["serf-wan"]),
		"-server-port", strconv.Itoa(ports["server"]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-https-port", "-1",
		"-hcl", "disable_update_check = true")
	if err != nil {
		return err
	}
	m.procs = append(m.procs, p)
	cc := api.DefaultConfig()
	cc.Address = m.consulAddr
	if m.consul, err = api.NewClient(cc); err != nil {
		return fmt.Errorf("dataplane: consul client: %w", err)
	}
	return waitFor(ctx, p, startTimeout, "consul has a leader and its node", func(ctx context.Context) error {
		q := (&api.QueryOptions{}).WithContext(ctx)
		leader, err := m.consul.Status().LeaderWithQueryOptions(q)
		if err != nil {
			return err
		}
		if leader == "" {
			return errors.New("no leader")
		}
		node, _, err := m.consul.Catalog().Node("bench", q)
		if err != nil {
			return err
		}
		if node == nil || node.Node == nil {
			return errors.New("node not in the catalog")
		}
		return nil
	})
}

const spireServerConf = `server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  default_x509_svid_ttl = "1h"
  agent_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" { plugin_data {} }
  NodeAttestor "join_token" { plugin_data {} }
}
`

const spireAgentConf = `agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data {} }
}
`

func (m *mesh) startSPIRE(ctx context.Context, serverBin, agentBin string) error {
	// Unix socket paths must stay short: use a directory of their own.
	sockDir, err := os.MkdirTemp("", "tbsp")
	if err != nil {
		return fmt.Errorf("dataplane: spire socket directory: %w", err)
	}
	m.sockDir = sockDir
	m.spireSock = filepath.Join(sockDir, "server.sock")
	m.agentSock = filepath.Join(sockDir, "agent.sock")
	port, err := freePort()
	if err != nil {
		return err
	}
	serverDir := filepath.Join(m.dir, "spire-server")
	agentDir := filepath.Join(m.dir, "spire-agent")
	for _, d := range []string{serverDir, agentDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
	}
	serverConf := filepath.Join(serverDir, "server.conf")
	if err := os.WriteFile(serverConf, fmt.Appendf(nil, spireServerConf, port, m.spireSock, m.trustDomain.Name(), serverDir,
		filepath.Join(serverDir, "datastore.sqlite3")), 0o644); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	server, err := startProcess(m.dir, "spire-server", nil, false, serverBin, "run", "-config", serverConf)
	if err != nil {
		return err
	}
	m.procs = append(m.procs, server)
	if err := waitFor(ctx, server, startTimeout, "spire-server healthy", func(ctx context.Context) error {
		return checkHealth(ctx, "unix://"+m.spireSock)
	}); err != nil {
		return err
	}
	nodeID := spiffeid.RequireFromSegments(m.trustDomain, "bench", "node")
	out, err := m.spireServer(ctx, "token", "generate", "-spiffeID", nodeID.String(), "-ttl", "600")
	if err != nil {
		return err
	}
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok || token == "" {
		return fmt.Errorf("dataplane: spire-server token generate printed %q, want \"Token: <token>\"", out)
	}
	agentConf := filepath.Join(agentDir, "agent.conf")
	if err := os.WriteFile(agentConf, fmt.Appendf(nil, spireAgentConf, agentDir, port, m.agentSock, m.trustDomain.Name()), 0o644); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	agent, err := startProcess(m.dir, "spire-agent", nil, false, agentBin, "run", "-config", agentConf, "-joinToken", token)
	if err != nil {
		return err
	}
	m.procs = append(m.procs, agent)
	return waitFor(ctx, agent, startTimeout, "spire-agent healthy", func(ctx context.Context) error {
		return checkHealth(ctx, "unix://"+m.agentSock)
	})
}

// spireServer runs a spire-server CLI command against the running server.
func (m *mesh) spireServer(ctx context.Context, args ...string) (string, error) {
	n := 1
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		n = 2
	}
	full := append(append(append([]string{}, args[:n]...), "-socketPath", m.spireSock), args[n:]...)
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.spireBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("dataplane: spire-server %s: %w: %s", strings.Join(full, " "), err, stderr.Bytes())
	}
	return stdout.String(), nil
}

// serviceID is the SPIFFE ID of a service under Trellis's default scheme.
func (m *mesh) serviceID(service string) spiffeid.ID {
	return spiffeid.RequireFromSegments(m.trustDomain, "ns", "default", "dc", "dc1", "svc", service)
}

// registerSVID creates an entry giving every workload of this user the
// service's SPIFFE ID, and waits until the agent serves it.
func (m *mesh) registerSVID(ctx context.Context, service string) error {
	id := m.serviceID(service)
	nodeID := spiffeid.RequireFromSegments(m.trustDomain, "bench", "node")
	if _, err := m.spireServer(ctx, "entry", "create", "-parentID", nodeID.String(), "-spiffeID", id.String(),
		"-selector", "unix:uid:"+strconv.Itoa(os.Getuid())); err != nil {
		return err
	}
	return waitFor(ctx, nil, startTimeout, "the SVID of "+id.String(), func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+m.agentSock))
		if err != nil {
			return err
		}
		for _, s := range svids {
			if s.ID == id {
				return nil
			}
		}
		return fmt.Errorf("%d SVIDs, not yet %s", len(svids), id)
	})
}

func (m *mesh) startTrellis(ctx context.Context, bin string) error {
	xdsPort, err := freePort()
	if err != nil {
		return err
	}
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	m.xdsAddr = "127.0.0.1:" + strconv.Itoa(xdsPort)
	adminAddr := "127.0.0.1:" + strconv.Itoa(adminPort)
	p, err := startProcess(m.dir, "trellis", []string{"CONSUL_HTTP_ADDR=" + m.consulAddr}, false, bin, "server",
		"--xds-listen", m.xdsAddr, "--admin-listen", adminAddr, "--trust-domain", m.trustDomain.Name())
	if err != nil {
		return err
	}
	m.procs = append(m.procs, p)
	return waitFor(ctx, p, startTimeout, "trellis /readyz", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
}

// bootstrap writes the xDS bootstrap of a workload with the given node ID
// and, when service is not empty, the certificate providers serving that
// service's SVID as `trellis bootstrap --spiffe` writes them (the
// own-trust-domain instance too, declared in the node metadata); it
// returns the file's path.
func (m *mesh) bootstrap(nodeID, service string) (string, error) {
	cfg := bootstrap.Config{Servers: []string{m.xdsAddr}, NodeID: nodeID}
	if service != "" {
		pc := identity.ProviderConfig{WorkloadAPIAddr: "unix://" + m.agentSock, SPIFFEID: m.serviceID(service).String()}
		provider, err := identity.ProviderFragment(pc)
		if err != nil {
			return "", fmt.Errorf("dataplane: certificate provider of %s: %w", service, err)
		}
		pc.Roots = identity.RootsOwnTrustDomain
		own, err := identity.ProviderFragment(pc)
		if err != nil {
			return "", fmt.Errorf("dataplane: certificate provider of %s: %w", service, err)
		}
		cfg.CertificateProviders = map[string]json.RawMessage{bootstrap.CertificateProviderInstance: provider, bootstrap.OwnTrustDomainProviderInstance: own}
		cfg.Metadata = map[string]string{clients.OwnTrustDomainRootsMetadataKey: "true"}
	}
	raw, err := bootstrap.Generate(cfg)
	if err != nil {
		return "", fmt.Errorf("dataplane: bootstrap of %s: %w", nodeID, err)
	}
	path := filepath.Join(m.dir, nodeID+".bootstrap.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return "", fmt.Errorf("dataplane: %w", err)
	}
	return path, nil
}

// register adds an instance of service at addr (127.0.0.1:port) to Consul,
// without a health check (passing), with meta.
func (m *mesh) register(ctx context.Context, service, instance string, port int, meta map[string]string) error {
	reg := &api.AgentServiceRegistration{ID: instance, Name: service, Address: "127.0.0.1", Port: port, Meta: meta}
	if err := m.consul.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("dataplane: register %s in consul: %w", instance, err)
	}
	return nil
}

// allow sets the intentions of destination to allow source only.
func (m *mesh) allow(ctx context.Context, destination, source string) error {
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: destination,
		Sources: []*api.SourceIntention{{Name: source, Action: api.IntentionActionAllow}, {Name: "*", Action: api.IntentionActionDeny}}}
	if _, _, err := m.consul.ConfigEntries().Set(entry, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("dataplane: intentions of %s: %w", destination, err)
	}
	return nil
}

// retryPolicy is the route policy of configuration (e).
const retryPolicy = `service: %s
defaults:
  retry:
    retry_on: [UNAVAILABLE]
    num_retries: 2
`

// setRetryPolicy stores the retry policy of service in the policy store.
func (m *mesh) setRetryPolicy(ctx context.Context, service string) error {
	policies, err := policy.ParseDocuments(strings.NewReader(fmt.Sprintf(retryPolicy, service)))
	if err != nil {
		return fmt.Errorf("dataplane: retry policy: %w", err)
	}
	s, err := store.New(store.Config{Client: m.consul})
	if err != nil {
		return fmt.Errorf("dataplane: policy store: %w", err)
	}
	for _, p := range policies {
		if _, err := s.Put(ctx, p, nil); err != nil {
			return fmt.Errorf("dataplane: store the retry policy of %s: %w", service, err)
		}
	}
	return nil
}

// checkHealth calls the gRPC health service at target.
func checkHealth(ctx context.Context, target string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }() // a probe: nothing to report
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health status %s", resp.GetStatus())
	}
	return nil
}
