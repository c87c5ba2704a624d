// Package loadgen puts the load of a fleet of gRPC xDS clients on a control
// plane: many concurrent state-of-the-world ADS streams
// (StreamAggregatedResources, v3 type URLs), each behaving as grpc-go's xDS
// client does for one channel to xds:///<service>.
//
// Every stream identifies itself with a node (its own ID, user agent
// "gRPC Go" and the client features grpc-go sends) on its first request,
// subscribes the Listener named after its service, then the
// RouteConfiguration that Listener names, the Clusters the routes name and
// the ClusterLoadAssignments those Clusters name, and ACKs every response
// by echoing its version and nonce (a response it cannot decode is NACKed
// with the previous version, as grpc-go does). It records when each
// response arrived, of which type, its encoded size and, for endpoints, how
// many endpoints a gRPC client would use, so that a benchmark can measure
// push latency and bytes per change per stream.
//
// Connections: each grpc-go xDS client has its own connection to the
// control plane, so Config.StreamsPerConn defaults to 1. A larger value
// multiplexes streams over fewer connections to save the generator's own
// memory; a server then holds fewer connections than a real fleet would
// make it hold, which a benchmark using it must say.
//
// Memory per stream is kept small: the protocol state (subscribed names,
// last version and nonce per type) and a bounded log of 24-byte events
// (Config.MaxEventsPerStream). Streams do not reconnect: a stream that ends
// is reported by Err and Stats, since a benchmark must not hide a broken
// stream behind a retry.
//
// The package owns the client side of the streams and the record of what
// each received. It sees a control plane only through the wire, like any
// client: it must not import Trellis's server-side packages (internal/catalog,
// xdsserver and its subpackages, internal/model).
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Defaults of Config.
const (
	DefaultStreamsPerConn     = 1
	DefaultNodeIDPrefix       = "loadgen"
	DefaultMaxEventsPerStream = 1024
	DefaultUserAgentVersion   = "1.85.0"
)

// Config configures a Generator.
type Config struct {
	// Target is the control plane's ADS address, host:port. Required.
	Target string
	// DialOptions are added after the defaults (insecure transport
	// credentials; keepalive pings every 5m with a 20s timeout, as grpc-go's
	// xDS client sets them), e.g. transport credentials. Optional.
	DialOptions []grpc.DialOption
	// StreamsPerConn is how many streams share one gRPC connection.
	// Default: 1 (one connection per stream, as a fleet of grpc-go clients).
	StreamsPerConn int
	// NodeIDPrefix prefixes each stream's node ID, "<prefix>-<index>".
	// Default: "loadgen".
	NodeIDPrefix string
	// UserAgentVersion is the node's user agent version. Default: "1.85.0"
	// (the grpc-go version the project is tested against).
	UserAgentVersion string
	// MaxEventsPerStream bounds each stream's event log; once it is full,
	// further events are counted in Stats.DroppedEvents and not kept until
	// ResetEvents. Default: 1024.
	MaxEventsPerStream int
	// Logger receives stream failures. Default: logs are discarded.
	Logger *slog.Logger
}

// Stats are totals over every stream of a Generator.
type Stats struct {
	// Streams is how many streams were opened.
	Streams int `json:"streams"`
	// Conns is how many gRPC connections carry them.
	Conns int `json:"conns"`
	// Ready is how many streams have ACKed a response of every type.
	Ready int `json:"ready"`
	// Failed is how many streams ended with an error.
	Failed int `json:"failed"`
	// Responses, ACKs and NACKs count what the streams received and sent.
	Responses int64 `json:"responses"`
	ACKs      int64 `json:"acks"`
	NACKs     int64 `json:"nacks"`
	// Bytes is the encoded size of every response received.
	Bytes int64 `json:"bytes"`
	// DroppedEvents counts events not kept because a stream's log was full.
	DroppedEvents int64 `json:"dropped_events"`
}

// Generator owns a set of ADS streams and their connections.
type Generator struct {
	cfg    Config
	logger *slog.Logger
	start  time.Time
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	conns   []*grpc.ClientConn
	streams []*stream
	// connUse is how many streams the last connection carries.
	connUse int

	// memo decodes each distinct resource once for every stream.
	memo decodeMemo
	// readyCh is closed, and replaced, whenever the ready count reaches
	// the number of streams or a stream fails: WaitReady re-checks then.
	readyCh  chan struct{}
	firstErr error

	ready         atomic.Int64
	failed        atomic.Int64
	responses     atomic.Int64
	acks          atomic.Int64
	nacks         atomic.Int64
	bytes         atomic.Int64
	droppedEvents atomic.Int64
}

// New validates cfg and returns a Generator with no streams. Close it to
// end the streams that Add opens.
func New(cfg Config) (*Generator, error) {
	if cfg.Target == "" {
		return nil, errors.New("loadgen: Config.Target is required (host:port of the ADS server)")
	}
	if cfg.StreamsPerConn < 0 {
		return nil, fmt.Errorf("loadgen: Config.StreamsPerConn %d: accepted: 0 (default %d) or more", cfg.StreamsPerConn, DefaultStreamsPerConn)
	}
	if cfg.StreamsPerConn == 0 {
		cfg.StreamsPerConn = DefaultStreamsPerConn
	}
	if cfg.NodeIDPrefix == "" {
		cfg.NodeIDPrefix = DefaultNodeIDPrefix
	}
	if cfg.UserAgentVersion == "" {
		cfg.UserAgentVersion = DefaultUserAgentVersion
	}
	if cfg.MaxEventsPerStream < 0 {
		return nil, fmt.Errorf("loadgen: Config.MaxEventsPerStream %d: accepted: 0 (default %d) or more", cfg.MaxEventsPerStream, DefaultMaxEventsPerStream)
	}
	if cfg.MaxEventsPerStream == 0 {
		cfg.MaxEventsPerStream = DefaultMaxEventsPerStream
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Generator{
		cfg:     cfg,
		logger:  logger,
		start:   time.Now(),
		ctx:     ctx,
		cancel:  cancel,
		readyCh: make(chan struct{}),
	}, nil
}

// Now returns the time elapsed since the Generator was created, on the
// monotonic clock that Event.At uses.
func (g *Generator) Now() time.Duration { return time.Since(g.start) }

// Since converts a wall-clock instant taken in this process to the
// Generator's clock (time.Time keeps its monotonic reading).
func (g *Generator) Since(t time.Time) time.Duration { return t.Sub(g.start) }

// Add opens one stream per entry of services, stream k subscribing to
// services[k], and returns once each has sent its first request (it does
// not wait for responses: see WaitReady). Streams are numbered in the order
// they are added, from 0. ctx bounds the opening only; the streams run
// until Close.
func (g *Generator) Add(ctx context.Context, services []string) error {
	for _, svc := range services {
		if svc == "" {
			return errors.New("loadgen: Add: a service name is empty")
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("loadgen: Add: %w", err)
		}
		conn, st, err := g.reserve(svc)
		if err != nil {
			return err
		}
		// The stream's context is the Generator's: it outlives ctx.
		client := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn)
		ads, err := client.StreamAggregatedResources(g.ctx)
		if err != nil {
			g.fail(st, fmt.Errorf("open stream: %w", err))
			return fmt.Errorf("loadgen: stream %d (%s): open: %w", st.index, svc, err)
		}
		if err := st.start(ads); err != nil {
			g.fail(st, err)
			return fmt.Errorf("loadgen: stream %d (%s): %w", st.index, svc, err)
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.run(st, ads)
		}()
	}
	return nil
}

// reserve creates the stream's record and picks (or dials) its connection.
func (g *Generator) reserve(svc string) (*grpc.ClientConn, *stream, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, errors.New("loadgen: Add after Close")
	}
	if len(g.conns) == 0 || g.connUse >= g.cfg.StreamsPerConn {
		opts := append([]grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}),
		}, g.cfg.DialOptions...)
		conn, err := grpc.NewClient(g.cfg.Target, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("loadgen: dial %s: %w", g.cfg.Target, err)
		}
		g.conns = append(g.conns, conn)
		g.connUse = 0
	}
	g.connUse++
	index := len(g.streams)
	st := newStream(g, index, svc)
	g.streams = append(g.streams, st)
	// A new stream is not ready: wake WaitReady callers so they re-count.
	g.wakeLocked()
	return g.conns[len(g.conns)-1], st, nil
}

// run receives on one stream until it ends.
func (g *Generator) run(st *stream, ads discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient) {
	err := st.loop(ads)
	if err != nil && g.ctx.Err() == nil {
		g.fail(st, err)
	}
}

// fail records that a stream ended with err.
func (g *Generator) fail(st *stream, err error) {
	g.failed.Add(1)
	g.logger.Warn("ADS stream failed", "stream", st.index, "service", st.service, "error", err)
	g.mu.Lock()
	if g.firstErr == nil {
		g.firstErr = fmt.Errorf("loadgen: stream %d (%s): %w", st.index, st.service, err)
	}
	g.wakeLocked()
	g.mu.Unlock()
}

// markReady counts a stream that has ACKed every type.
func (g *Generator) markReady() {
	g.ready.Add(1)
	g.mu.Lock()
	g.wakeLocked()
	g.mu.Unlock()
}

func (g *Generator) wakeLocked() {
	close(g.readyCh)
	g.readyCh = make(chan struct{})
}

// WaitReady blocks until every stream added so far has ACKed a non-empty
// response of each of the four types, a stream has failed (its error is
// returned), or ctx is done.
func (g *Generator) WaitReady(ctx context.Context) error {
	for {
		g.mu.Lock()
		n, err, ch := len(g.streams), g.firstErr, g.readyCh
		g.mu.Unlock()
		if err != nil {
			return err
		}
		ready := g.ready.Load()
		if ready >= int64(n) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("loadgen: %d of %d streams ready: %w", ready, n, ctx.Err())
		}
	}
}

// Err returns the first stream failure, or nil.
func (g *Generator) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.firstErr
}

// Len returns how many streams were added.
func (g *Generator) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.streams)
}

// Service returns the service stream i subscribes to.
func (g *Generator) Service(i int) string { return g.stream(i).service }

// NodeID returns the node ID of stream i.
func (g *Generator) NodeID(i int) string { return g.stream(i).nodeID() }

func (g *Generator) stream(i int) *stream {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.streams[i]
}

// Events returns a copy of the events stream i recorded since the last
// ResetEvents, oldest first.
func (g *Generator) Events(i int) []Event { return g.stream(i).eventsCopy() }

// FirstAfter returns the first event of type typ that stream i recorded at
// or after at, and whether there is one.
func (g *Generator) FirstAfter(i int, typ Type, at time.Duration) (Event, bool) {
	return g.stream(i).firstAfter(typ, at)
}

// CountAfter returns how many responses stream i recorded at or after at,
// and their total size in bytes.
func (g *Generator) CountAfter(i int, at time.Duration) (n int, bytes int64) {
	return g.stream(i).countAfter(at)
}

// ResetEvents empties every stream's event log.
func (g *Generator) ResetEvents() {
	g.mu.Lock()
	streams := g.streams
	g.mu.Unlock()
	for _, st := range streams {
		st.resetEvents()
	}
}

// Stats returns totals over every stream.
func (g *Generator) Stats() Stats {
	g.mu.Lock()
	n, conns := len(g.streams), len(g.conns)
	g.mu.Unlock()
	return Stats{
		Streams:       n,
		Conns:         conns,
		Ready:         int(g.ready.Load()),
		Failed:        int(g.failed.Load()),
		Responses:     g.responses.Load(),
		ACKs:          g.acks.Load(),
		NACKs:         g.nacks.Load(),
		Bytes:         g.bytes.Load(),
		DroppedEvents: g.droppedEvents.Load(),
	}
}

// Close ends every stream and connection and waits for the streams'
// goroutines. It is idempotent.
func (g *Generator) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	conns := g.conns
	g.mu.Unlock()
	g.cancel()
	var errs []error
	for _, c := range conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	g.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadgen: close connections: %w", err)
	}
	return nil
}
