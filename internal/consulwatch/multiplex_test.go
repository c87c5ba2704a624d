package consulwatch

import (
	"context"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// blockingServer answers every request with an empty health read once
// released, counting the requests in flight and the connections opened.
type blockingServer struct {
	srv      *httptest.Server
	release  chan struct{}
	inflight peakCounter // requests being answered
	conns    peakCounter // open TCP connections
}

// peakCounter counts something open and remembers the most at once.
type peakCounter struct{ now, peak atomic.Int64 }

func (c *peakCounter) add(d int64) {
	n := c.now.Add(d)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// countingListener counts its open connections.
type countingListener struct {
	net.Listener
	open *peakCounter
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.add(1)
	return &countedConn{Conn: conn, open: l.open}, nil
}

type countedConn struct {
	net.Conn
	once sync.Once
	open *peakCounter
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.add(-1) })
	return c.Conn.Close()
}

func startBlockingServer(t *testing.T, http2 bool) *blockingServer {
	t.Helper()
	b := &blockingServer{release: make(chan struct{})}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.inflight.add(1)
		defer b.inflight.add(-1)
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Consul-Index", "7")
		w.Header().Set("X-Consul-KnownLeader", "true")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]"))
	}))
	b.srv.Listener = countingListener{Listener: b.srv.Listener, open: &b.conns}
	b.srv.EnableHTTP2 = http2
	b.srv.StartTLS()
	t.Cleanup(b.srv.Close)
	return b
}

// apiConfig addresses the server over HTTPS, trusting its certificate.
func (b *blockingServer) apiConfig() *api.Config {
	cfg := api.DefaultConfig()
	cfg.Address = "https://" + b.srv.Listener.Addr().String()
	cfg.TLSConfig = api.TLSConfig{CAPem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw})}
	return cfg
}

// TestMultiplexedClientBoundsStreamsAndConns: more blocking queries than
// the client is sized for all complete, never more in flight than its
// bound, over at most MultiplexedConns connections, every one counted.
func TestMultiplexedClientBoundsStreamsAndConns(t *testing.T) {
	b := startBlockingServer(t, true)
	const bound, queries = 450, 520
	reg := prometheus.NewRegistry()
	client, err := NewMultiplexedClient(ClientConfig{API: b.apiConfig(), Registerer: reg}, bound)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, queries)
	for range queries {
		wg.Go(func() {
			_, _, err := client.Health().Service("svc", "", false, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				errs <- err
			}
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for b.inflight.now.Load() < bound && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := b.inflight.now.Load(); got != bound {
		t.Fatalf("%d queries in flight at the server, want the bound %d", got, bound)
	}
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("query failed: %v", err)
	}
	if peak := b.inflight.peak.Load(); peak > bound {
		t.Errorf("%d queries in flight at once, bound %d", peak, bound)
	}
	if conns, most := b.conns.peak.Load(), int64(MultiplexedConns(bound)); conns > most || conns < 1 {
		t.Errorf("%d connections open at once, want 1 to %d", conns, most)
	}
	if got := testutil.ToFloat64(requestsCounter(t, reg, "200")); got != queries {
		t.Errorf("trellis_consul_requests_total{code=\"200\"} = %v, want %d", got, queries)
	}
}

// TestMultiplexedClientRefusesHTTP1: an HTTPS server without HTTP/2 is
// an error naming the cause, and so is a plain-HTTP address.
func TestMultiplexedClientRefusesHTTP1(t *testing.T) {
	b := startBlockingServer(t, false)
	close(b.release)
	client, err := NewMultiplexedClient(ClientConfig{API: b.apiConfig()}, 10)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = client.Health().Service("svc", "", false, nil)
	if !errors.Is(err, ErrNotHTTP2) {
		t.Errorf("read over HTTP/1.1: error %v, want ErrNotHTTP2", err)
	}

	plain := api.DefaultConfig()
	plain.Address = "127.0.0.1:8500"
	if _, err := NewMultiplexedClient(ClientConfig{API: plain}, 10); err == nil {
		t.Error("a multiplexed client for a plain-HTTP address was accepted")
	}
	if _, err := NewMultiplexedClient(ClientConfig{API: b.apiConfig()}, 0); err == nil {
		t.Error("a multiplexed client for 0 requests was accepted")
	}
}
