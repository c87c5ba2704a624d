package consulwatch

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxConns is the default bound on concurrent connections to Consul.
const DefaultMaxConns = 16

// ClientConfig configures NewClient.
type ClientConfig struct {
	// API is Consul's client configuration, as api.DefaultConfig reads it
	// from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ... with the
	// caller's overrides. Required. Its Transport and HttpClient are
	// replaced.
	API *api.Config
	// MaxConns bounds the TCP connections the client opens to Consul: a
	// request that finds them all busy waits for one. Consul refuses an
	// address holding more than limits.http_max_conns_per_client (default
	// 200) connections, and every other Consul client of the host shares
	// that address: keep it well below. Default: DefaultMaxConns (16).
	MaxConns int
	// Registerer receives trellis_consul_requests_total{code}. Default: nil.
	Registerer prometheus.Registerer
	// Requests, when set, counts the requests instead of a counter
	// registered with Registerer: clients of one process share it
	// (NewRequestsCounter).
	Requests *prometheus.CounterVec
	// ProbeConns is how many of the MaxConns connections NewClientAndProber
	// gives its IndexProber; the client keeps the others.
	// Default: DefaultProbeConns (2).
	ProbeConns int
}

// NewClient returns a Consul client whose connections are bounded by
// cfg.MaxConns and kept alive (idle connections up to the same bound are
// reused, never closed and reopened under load), and whose requests are
// counted.
func NewClient(cfg ClientConfig) (*api.Client, error) {
	if err := checkClientConfig(&cfg); err != nil {
		return nil, err
	}
	requests, err := cfg.requests()
	if err != nil {
		return nil, err
	}
	return newClient(cfg.API, cfg.MaxConns, requests)
}

// NewClientAndProber returns a Consul client as NewClient does, holding
// cfg.MaxConns-cfg.ProbeConns connections, and an IndexProber holding the
// other cfg.ProbeConns: together they never hold more than cfg.MaxConns,
// and their requests are counted together.
func NewClientAndProber(cfg ClientConfig) (*api.Client, *IndexProber, error) {
	if err := checkClientConfig(&cfg); err != nil {
		return nil, nil, err
	}
	if cfg.ProbeConns < 0 || cfg.ProbeConns >= cfg.MaxConns {
		return nil, nil, fmt.Errorf("consulwatch: ClientConfig.ProbeConns is %d; accepted: 1 to MaxConns-1 (%d), or 0 for the default (%d)", cfg.ProbeConns, cfg.MaxConns-1, DefaultProbeConns)
	}
	if cfg.ProbeConns == 0 {
		cfg.ProbeConns = min(DefaultProbeConns, cfg.MaxConns-1)
	}
	requests, err := cfg.requests()
	if err != nil {
		return nil, nil, err
	}
	client, err := newClient(cfg.API, cfg.MaxConns-cfg.ProbeConns, requests)
	if err != nil {
		return nil, nil, err
	}
	prober, err := newIndexProber(cfg.API, cfg.ProbeConns, requests)
	if err != nil {
		return nil, nil, err
	}
	return client, prober, nil
}

func checkClientConfig(cfg *ClientConfig) error {
	if cfg.API == nil {
		return errors.New("consulwatch: ClientConfig.API is required")
	}
	if cfg.MaxConns < 0 {
		return fmt.Errorf("consulwatch: ClientConfig.MaxConns is %d; accepted: a positive number, or 0 for the default (%d)", cfg.MaxConns, DefaultMaxConns)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	return nil
}

// requests is the counter of the client's requests.
func (cfg ClientConfig) requests() (*prometheus.CounterVec, error) {
	if cfg.Requests != nil {
		return cfg.Requests, nil
	}
	return NewRequestsCounter(cfg.Registerer)
}

// NewRequestsCounter returns trellis_consul_requests_total, registered with
// reg unless it is nil, for ClientConfig.Requests.
func NewRequestsCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_consul_requests_total",
		Help: "HTTP requests sent to Consul, by response status code (\"error\" when no response arrived).",
	}, []string{"code"})
	if reg != nil {
		if err := reg.Register(requests); err != nil {
			return nil, fmt.Errorf("consulwatch: register metrics: %w", err)
		}
	}
	return requests, nil
}

func newClient(cfg *api.Config, maxConns int, requests *prometheus.CounterVec) (*api.Client, error) {
	tr := cleanhttp.DefaultPooledTransport()
	tr.MaxConnsPerHost = maxConns
	tr.MaxIdleConnsPerHost = maxConns
	tr.MaxIdleConns = maxConns
	apiCfg := *cfg
	apiCfg.Transport = tr
	hc, err := api.NewHttpClient(tr, apiCfg.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consulwatch: Consul TLS configuration: %w", err)
	}
	hc.Transport = countingTransport{next: hc.Transport, requests: requests}
	apiCfg.HttpClient = hc
	client, err := api.NewClient(&apiCfg)
	if err != nil {
		return nil, fmt.Errorf("consulwatch: Consul client: %w", err)
	}
	return client, nil
}

// countingTransport counts requests by status code.
type countingTransport struct {
	next     http.RoundTripper
	requests *prometheus.CounterVec
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err != nil {
		c.requests.WithLabelValues("error").Inc()
		return nil, err
	}
	c.requests.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
	return resp, nil
}
