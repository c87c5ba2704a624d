package consulwatch

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultProbeConns is the default number of connections an IndexProber
// holds, out of ClientConfig.MaxConns.
const DefaultProbeConns = 2

// MaxProbeBatch bounds the names of one IndexProber.ServiceIndexes call.
const MaxProbeBatch = 1024

// IndexProber reads the indexes of many services at a time, for index
// sweeps: the X-Consul-Index of /v1/health/service/:name narrowed by a tag,
// for every name, over a few kept-alive HTTP/1.1 connections on which the
// requests of a batch are pipelined (written back to back, answered in
// order, as HTTP/1.1 requires of a server; Consul's is Go's net/http,
// which serves pipelined requests one after the other).
//
// Why: a sweep asks Consul one question per service. Sent one by one
// through net/http's client, each costs the asker about 65 µs of CPU and
// a round trip (a write, a read, three goroutine hand-offs); pipelined,
// a batch costs one write and a few reads, about 10 µs per service, and
// Consul answers it in a third less CPU too (measured against a
// consul agent -dev holding 10,000 services: 10,000 index reads took
// 0.95 s and 0.67 s of the asker's CPU one by one over 8 connections;
// 0.38 s and 0.10 s pipelined over 2).
//
// An IndexProber is safe for concurrent use; at most Conns calls run at
// once, each on its own connection, and the others wait.
type IndexProber struct {
	dial     func(ctx context.Context) (net.Conn, error)
	host     string // Host header
	query    string // appended query parameters (dc, ...), each "&k=v"
	token    string
	requests *prometheus.CounterVec
	conns    chan *probeConn // idle connections, nil entries for undialed ones
}

type probeConn struct {
	conn  net.Conn
	paced *pacedConn // conn, its reads paced
	r     *bufio.Reader
}

// newIndexProber returns a prober with n connections for the Consul of
// cfg, counting its requests in requests.
func newIndexProber(cfg *api.Config, n int, requests *prometheus.CounterVec) (*IndexProber, error) {
	addr := cfg.Address
	scheme := cfg.Scheme
	if scheme == "" {
		scheme = "http"
	}
	if i := strings.Index(addr, "://"); i >= 0 {
		scheme, addr = addr[:i], addr[i+3:]
	}
	p := &IndexProber{host: addr, token: cfg.Token, requests: requests, conns: make(chan *probeConn, n)}
	if p.token == "" && cfg.TokenFile != "" {
		data, err := readTokenFile(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		p.token = data
	}
	q := url.Values{}
	if cfg.Datacenter != "" {
		q.Set("dc", cfg.Datacenter)
	}
	if cfg.Namespace != "" {
		q.Set("ns", cfg.Namespace)
	}
	if cfg.Partition != "" {
		q.Set("partition", cfg.Partition)
	}
	if len(q) > 0 {
		p.query = "&" + q.Encode()
	}
	var d net.Dialer
	switch scheme {
	case "unix":
		p.host = "localhost"
		path := addr
		p.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
	case "http":
		p.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	case "https":
		tlsCfg, err := api.SetupTLSConfig(&cfg.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consulwatch: Consul TLS configuration: %w", err)
		}
		tlsCfg = tlsCfg.Clone()
		// Pipelining is HTTP/1.1's: never negotiate HTTP/2.
		tlsCfg.NextProtos = []string{"http/1.1"}
		if tlsCfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			tlsCfg.ServerName = host
		}
		p.dial = func(ctx context.Context) (net.Conn, error) {
			td := tls.Dialer{NetDialer: &d, Config: tlsCfg}
			return td.DialContext(ctx, "tcp", addr)
		}
	default:
		return nil, fmt.Errorf("consulwatch: Consul address scheme %q: accepted: http, https, unix", scheme)
	}
	for range n {
		p.conns <- nil
	}
	return p, nil
}

// Conns is the number of connections the prober holds, and of calls it
// runs at once.
func (p *IndexProber) Conns() int { return cap(p.conns) }

// ServiceIndexes returns, in the order of names, the X-Consul-Index of a
// read of each service's healthy-or-not instances carrying tag (pass a tag
// no instance carries, and every answer is an empty list: the index is
// the service's own, the raft index of its last change). names holds at
// most MaxProbeBatch names.
//
// An error means no index of the batch is known; it is what the api
// client's would be (an api.StatusError for an answer other than 200, so
// that Classify tells a 429 from a 403), and the connection is closed.
func (p *IndexProber) ServiceIndexes(ctx context.Context, names []string, tag string) ([]uint64, error) {
	if len(names) > MaxProbeBatch {
		return nil, fmt.Errorf("consulwatch: %d names in one probe batch; accepted: at most %d", len(names), MaxProbeBatch)
	}
	if len(names) == 0 {
		return nil, nil
	}
	var pc *probeConn
	select {
	case pc = <-p.conns:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	indexes, err := p.probe(ctx, &pc, names, tag)
	if err != nil && pc != nil {
		pc.conn.Close()
		pc = nil
	}
	p.conns <- pc
	return indexes, err
}

func (p *IndexProber) probe(ctx context.Context, pcp **probeConn, names []string, tag string) ([]uint64, error) {
	if *pcp == nil {
		conn, err := p.dial(ctx)
		if err != nil {
			p.requests.WithLabelValues("error").Add(float64(len(names)))
			return nil, fmt.Errorf("probe %d services: %w", len(names), err)
		}
		paced := &pacedConn{Conn: conn}
		*pcp = &probeConn{conn: conn, paced: paced, r: bufio.NewReaderSize(paced, 64<<10)}
	}
	pc := *pcp
	pc.paced.reads = 0
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	pc.conn.SetDeadline(deadline)
	// A cancelled ctx ends the exchange at once.
	stop := context.AfterFunc(ctx, func() { pc.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		w := bufio.NewWriterSize(pc.conn, 32<<10)
		for _, name := range names {
			p.writeRequest(w, name, tag)
		}
		werr = w.Flush()
	})
	indexes := make([]uint64, len(names))
	var rerr error
	answered := 0
	closing := false
	for i := range names {
		idx, closes, err := readIndex(pc.r)
		if err == nil && closes && i < len(names)-1 {
			err = errors.New("Consul closed the connection before answering every request")
		}
		if err != nil {
			rerr = fmt.Errorf("probe service %s: %w", names[i], err)
			break
		}
		indexes[i] = idx
		answered++
		closing = closes
	}
	if rerr != nil {
		// Unblock the writer, if it is still writing.
		pc.conn.SetDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	p.requests.WithLabelValues("200").Add(float64(answered))
	if rerr != nil {
		var se api.StatusError
		if errors.As(rerr, &se) {
			p.requests.WithLabelValues(strconv.Itoa(se.Code)).Inc()
			answered++
		}
		p.requests.WithLabelValues("error").Add(float64(len(names) - answered))
		return nil, rerr
	}
	if werr != nil {
		return nil, fmt.Errorf("probe %d services: %w", len(names), werr)
	}
	if closing {
		pc.conn.Close()
		*pcp = nil
	}
	return indexes, nil
}

func (p *IndexProber) writeRequest(w *bufio.Writer, name, tag string) {
	w.WriteString("GET /v1/health/service/")
	w.WriteString(url.PathEscape(name))
	w.WriteString("?tag=")
	w.WriteString(url.QueryEscape(tag))
	w.WriteString(p.query)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(p.host)
	w.WriteString("\r\nUser-Agent: trellis\r\n")
	if p.token != "" {
		w.WriteString("X-Consul-Token: ")
		w.WriteString(p.token)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// readIndex reads one response and returns its X-Consul-Index, and
// whether Consul closes the connection after it. An answer other than 200
// is an api.StatusError, as the api client returns; an answer without a
// leader and with index 0 or 1 (a Consul restoring its state) is an error
// too.
//
// It reads only what a probe needs (the status line, four headers, a body
// of Content-Length bytes) without building a header map: a sweep reads
// one response per service. A response it does not expect (no
// Content-Length, a transfer encoding) is an error, after which the
// connection is dropped and the caller probes another way.
func readIndex(r *bufio.Reader) (uint64, bool, error) {
	line, err := readLine(r)
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK"
	proto, rest, _ := bytes.Cut(line, []byte(" "))
	codeText, _, _ := bytes.Cut(rest, []byte(" "))
	code, err := strconv.Atoi(string(codeText))
	if !bytes.HasPrefix(proto, []byte("HTTP/1.")) || err != nil {
		return 0, false, fmt.Errorf("malformed status line %q", line)
	}
	closes := string(proto) == "HTTP/1.0"
	var index, length uint64
	var haveIndex, haveLength, leader bool
	for {
		line, err := readLine(r)
		if err != nil {
			return 0, false, err
		}
		if len(line) == 0 {
			break
		}
		key, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("malformed header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(key, []byte("X-Consul-Index")):
			index, err = strconv.ParseUint(string(value), 10, 64)
			if err != nil {
				return 0, false, fmt.Errorf("X-Consul-Index %q: %w", value, err)
			}
			haveIndex = true
		case bytes.EqualFold(key, []byte("X-Consul-Knownleader")):
			leader = string(value) == "true"
		case bytes.EqualFold(key, []byte("Content-Length")):
			length, err = strconv.ParseUint(string(value), 10, 64)
			if err != nil || length > 1<<20 {
				return 0, false, fmt.Errorf("Content-Length %q: accepted: 0 to 1 MiB", value)
			}
			haveLength = true
		case bytes.EqualFold(key, []byte("Connection")):
			closes = closes || bytes.EqualFold(value, []byte("close"))
		case bytes.EqualFold(key, []byte("Transfer-Encoding")):
			return 0, false, fmt.Errorf("unexpected Transfer-Encoding %q", value)
		}
	}
	if !haveLength {
		return 0, false, errors.New(`Content-Length "": accepted: 0 to 1 MiB`)
	}
	if code != http.StatusOK {
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return 0, false, err
		}
		return 0, false, api.StatusError{Code: code, Body: strings.TrimSpace(string(body))}
	}
	if _, err := r.Discard(int(length)); err != nil {
		return 0, false, err
	}
	if !haveIndex {
		return 0, false, errors.New(`X-Consul-Index "": missing`)
	}
	if index <= 1 && !leader {
		return 0, false, errors.New("Consul has no leader and an empty state (still starting)")
	}
	return index, closes, nil
}

// readLine reads one CRLF-terminated line, without the line ending; the
// line is valid until the next read from r.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("header line too long")
		}
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// pacedConn delays each read that would find nothing buffered by
// readPace, so that the answers to a batch, which Consul writes one at a
// time, are read a few dozen at once rather than each with a read of its
// own (a read, a park and a wake-up per answer cost more than parsing
// it); a batch takes Consul milliseconds, so this adds less than readPace
// to it.
type pacedConn struct {
	net.Conn
	// reads counts the reads since the batch began: the first is not
	// delayed.
	reads int
}

const readPace = time.Millisecond

func (c *pacedConn) Read(p []byte) (int, error) {
	if c.reads > 0 {
		time.Sleep(readPace)
	}
	c.reads++
	return c.Conn.Read(p)
}

// readTokenFile reads an ACL token from a file, as the api client does.
func readTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("consulwatch: Consul token file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
