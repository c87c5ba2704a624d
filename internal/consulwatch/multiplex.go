package consulwatch

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
)

// StreamsPerConn is how many requests a multiplexed client runs at once on
// one HTTP/2 connection. Consul serves HTTP/2 on its HTTPS listener with
// golang.org/x/net/http2's defaults, 250 concurrent streams per
// connection. Staying below that matters: net/http's client opens another
// connection only when every open one is full, and a request that finds
// the connection bound reached waits for a connection to close, not for a
// stream to end. With at most StreamsPerConn requests per allowed
// connection, some open connection always has a free stream.
const StreamsPerConn = 200

// MultiplexedConns is the number of connections a multiplexed client for
// requests concurrent requests holds at most.
func MultiplexedConns(requests int) int {
	return max(1, (requests+StreamsPerConn-1)/StreamsPerConn)
}

// ErrNotHTTP2 reports a Consul that answered a multiplexed client over
// HTTP/1.1: each blocking query would then hold a connection of its own.
var ErrNotHTTP2 = errors.New("Consul answered over HTTP/1.1; many concurrent blocking queries need HTTP/2, which Consul serves on its HTTPS listener only")

// NewMultiplexedClient returns a Consul client for up to requests
// concurrent requests (blocking queries, typically one per service),
// multiplexed over HTTP/2 on at most MultiplexedConns(requests)
// connections of its own; a request beyond requests waits for one to
// finish. Its requests are counted like NewClient's (share
// cfg.Requests with the process's other clients). cfg.MaxConns and
// cfg.ProbeConns are not used.
//
// Consul speaks HTTP/2 only on its HTTPS listener: cfg.API must address it
// with the https scheme. A response over HTTP/1.1 (something in between
// that does not speak HTTP/2) fails with ErrNotHTTP2 rather than holding a
// connection per request.
func NewMultiplexedClient(cfg ClientConfig, requests int) (*api.Client, error) {
	if cfg.API == nil {
		return nil, errors.New("consulwatch: ClientConfig.API is required")
	}
	if requests <= 0 {
		return nil, fmt.Errorf("consulwatch: multiplexed client for %d requests; accepted: a positive number", requests)
	}
	if scheme := apiScheme(cfg.API); scheme != "https" {
		return nil, fmt.Errorf("consulwatch: multiplexed client for Consul at %q: scheme %q; accepted: https (Consul serves HTTP/2 on its HTTPS listener only)", cfg.API.Address, scheme)
	}
	counter, err := cfg.requests()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := api.SetupTLSConfig(&cfg.API.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consulwatch: Consul TLS configuration: %w", err)
	}
	tlsCfg = tlsCfg.Clone()
	if tlsCfg.ServerName == "" {
		addr := strings.TrimPrefix(cfg.API.Address, "https://")
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		tlsCfg.ServerName = host
	}
	conns := MultiplexedConns(requests)
	// golang.org/x/net/http2's own transport, not net/http's: net/http
	// stops counting an HTTP/2 connection against MaxConnsPerHost once
	// it is full, and opens more; http2.Transport dials one connection at
	// a time per host, only when every open one is full. With at most
	// StreamsPerConn requests per allowed connection in flight, it never
	// opens more than conns.
	tr := &http2.Transport{
		TLSClientConfig: tlsCfg,
		IdleConnTimeout: 90 * time.Second,
		// A connection that stops answering (a paused Consul, a dropped
		// route) is closed after ReadIdleTimeout+PingTimeout rather than
		// holding its blocking queries until their deadlines.
		ReadIdleTimeout: 30 * time.Second,
		PingTimeout:     10 * time.Second,
	}
	gate := &streamGate{next: tr, slots: make(chan struct{}, min(requests, conns*StreamsPerConn))}
	apiCfg := *cfg.API
	apiCfg.HttpClient = &http.Client{Transport: countingTransport{next: gate, requests: counter}}
	client, err := api.NewClient(&apiCfg)
	if err != nil {
		return nil, fmt.Errorf("consulwatch: Consul client: %w", err)
	}
	return client, nil
}

// apiScheme is the scheme a consul/api configuration addresses Consul
// with: the address's own ("https://host:port") or Scheme's.
func apiScheme(cfg *api.Config) string {
	if i := strings.Index(cfg.Address, "://"); i >= 0 {
		return cfg.Address[:i]
	}
	if cfg.Scheme == "" {
		return "http"
	}
	return cfg.Scheme
}

// streamGate bounds the requests in flight, from the start of the round
// trip to the close of the response body (a blocking query's stream stays
// open until its answer is read), and refuses HTTP/1.1 answers.
type streamGate struct {
	next  http.RoundTripper
	slots chan struct{}
}

func (g *streamGate) RoundTrip(req *http.Request) (*http.Response, error) {
	select {
	case g.slots <- struct{}{}:
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	resp, err := g.next.RoundTrip(req)
	if err != nil {
		<-g.slots
		if refusedHTTP2(err) {
			return nil, fmt.Errorf("%w (%v)", ErrNotHTTP2, err)
		}
		return nil, err
	}
	if resp.ProtoMajor != 2 {
		resp.Body.Close()
		<-g.slots
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), ErrNotHTTP2)
	}
	resp.Body = &gatedBody{ReadCloser: resp.Body, release: func() { <-g.slots }}
	return resp, nil
}

// refusedHTTP2 reports a TLS handshake that failed on the application
// protocol: a server that offers protocols, none of them HTTP/2 (the
// "no_application_protocol" alert), or one that chose none (http2's own
// check). Neither error has a type of its own.
func refusedHTTP2(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "no application protocol") || strings.Contains(msg, "unexpected ALPN protocol")
}

// gatedBody releases its request's slot when closed.
type gatedBody struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (b *gatedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}
