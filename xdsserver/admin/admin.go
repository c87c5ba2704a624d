// Package admin serves the control plane's admin HTTP listener: liveness
// (/healthz), readiness (/readyz), Prometheus metrics (/metrics) and the xDS
// debug views (/debug/xds/streams, /debug/xds/resources). /healthz, /readyz
// and /metrics answer anyone; /debug/* answers loopback callers, and others
// only when Config.DebugAuth accepts their credentials, since the debug
// views show every workload's node and every resource served. The listener
// speaks HTTP/1.1 and unencrypted HTTP/2 (h2c), so that a gRPC service can
// share the port: requests with content-type application/grpc go to the
// injected gRPC handler.
//
// Everything it shows is injected as functions and interfaces: it must not
// import the catalog, the translator, the xDS cache or the xDS server.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultShutdownTimeout is the default of Config.ShutdownTimeout.
const DefaultShutdownTimeout = 5 * time.Second

// Config configures a Server.
type Config struct {
	// Logger receives the server's logs. Default: logs are discarded.
	Logger *slog.Logger
	// Gatherer is what /metrics exposes. Default: /metrics is not served.
	Gatherer prometheus.Gatherer
	// Ready reports readiness and a human-readable detail for /readyz.
	// Default: always ready.
	Ready func() (ready bool, detail string)
	// Streams returns the JSON-encodable value of /debug/xds/streams.
	// Default: the endpoint is not served.
	Streams func() any
	// Resources returns the JSON-encodable value of /debug/xds/resources
	// (per type URL, resource name -> version). Default: the endpoint is
	// not served.
	Resources func() any
	// UI serves /ui/ (the dashboard), guarded by DebugAuth like /debug/*.
	// Default: /ui/ is not served.
	UI http.Handler
	// GRPC serves the requests whose content-type is application/grpc
	// (HTTP/2 only), typically a *grpc.Server. Its owner stops it.
	// Default: such requests get the HTTP endpoints (and 404).
	GRPC http.Handler
	// DebugAuth decides whether a /debug/* request from a caller that is
	// not on a loopback address may be answered: it returns nil to accept
	// it, an error wrapping ErrNoCredentials when the request carries no
	// credentials (answered 401), or another error (answered 403). The
	// error's message is shown to the caller. Loopback callers are always
	// answered. Default: only loopback callers are answered.
	DebugAuth func(r *http.Request) error
	// ShutdownTimeout is how long Serve waits, once its context is done,
	// for requests in flight before closing every connection.
	// Default: 5s.
	ShutdownTimeout time.Duration
}

// ErrNoCredentials is wrapped by the errors of Config.DebugAuth for
// requests that carry no credentials.
var ErrNoCredentials = errors.New("admin: no credentials")

// Server is the admin HTTP server.
type Server struct {
	logger          *slog.Logger
	grpc            http.Handler
	mux             *http.ServeMux
	debugAuth       func(*http.Request) error
	shutdownTimeout time.Duration
}

// New returns a Server; it does not listen until Serve.
func New(cfg Config) *Server {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	s := &Server{logger: logger, grpc: cfg.GRPC, mux: http.NewServeMux(), debugAuth: cfg.DebugAuth, shutdownTimeout: timeout}

	endpoints := []string{"/healthz", "/readyz"}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	ready := cfg.Ready
	if ready == nil {
		ready = func() (bool, string) { return true, "ready" }
	}
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, detail := ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		if detail == "" {
			detail = http.StatusText(code)
		}
		if !strings.HasSuffix(detail, "\n") {
			detail += "\n"
		}
		writeText(w, code, detail)
	})
	if cfg.Gatherer != nil {
		endpoints = append(endpoints, "/metrics")
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{
			ErrorLog:      slogErrorLog{logger},
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	if cfg.Streams != nil {
		endpoints = append(endpoints, "/debug/xds/streams")
		s.mux.HandleFunc("GET /debug/xds/streams", s.debug(s.jsonHandler(cfg.Streams)))
	}
	if cfg.Resources != nil {
		endpoints = append(endpoints, "/debug/xds/resources")
		s.mux.HandleFunc("GET /debug/xds/resources", s.debug(s.jsonHandler(cfg.Resources)))
	}
	if cfg.UI != nil {
		endpoints = append(endpoints, "/ui/")
		s.mux.Handle("GET /ui/", s.debug(cfg.UI.ServeHTTP))
		s.mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	}
	// Go's profiles, behind the same authentication as the debug views:
	// CPU and heap profiles of a running server are how its cost is found.
	endpoints = append(endpoints, "/debug/pprof/")
	s.mux.HandleFunc("GET /debug/pprof/", s.debug(pprof.Index))
	s.mux.HandleFunc("GET /debug/pprof/cmdline", s.debug(pprof.Cmdline))
	s.mux.HandleFunc("GET /debug/pprof/profile", s.debug(pprof.Profile))
	s.mux.HandleFunc("GET /debug/pprof/symbol", s.debug(pprof.Symbol))
	s.mux.HandleFunc("GET /debug/pprof/trace", s.debug(pprof.Trace))
	index := strings.Join(endpoints, "\n") + "\n"
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, index)
	})
	return s
}

// ServeHTTP routes gRPC requests to the gRPC handler and everything else to
// the admin endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.grpc != nil && r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		s.grpc.ServeHTTP(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Serve serves HTTP/1.1 and h2c on lis until ctx is done, then shuts down,
// waiting up to ShutdownTimeout for requests in flight. It returns nil
// after ctx is done, or the error that stopped serving. lis is closed on
// return.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s,
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	s.logger.Info("serving admin HTTP", "addr", lis.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		s.logger.Warn("requests still running after the shutdown timeout; closing connections", "timeout", s.shutdownTimeout)
		if err := srv.Close(); err != nil {
			s.logger.Warn("close admin listener", "error", err)
		}
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// debug answers loopback callers and the callers DebugAuth accepts with
// next, and everyone else with 401 or 403.
func (s *Server) debug(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if loopbackCaller(r) {
			next(w, r)
			return
		}
		err := errors.New("admin: /debug/* answers loopback callers only: no credentials are accepted here")
		if s.debugAuth != nil {
			err = s.debugAuth(r)
		}
		if err == nil {
			next(w, r)
			return
		}
		code := http.StatusForbidden
		if errors.Is(err, ErrNoCredentials) {
			code = http.StatusUnauthorized
			w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
		}
		s.logger.Info("debug request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "status", code, "error", err)
		writeText(w, code, err.Error()+"\n")
	}
}

// loopbackCaller tells whether the request came from a loopback address.
func loopbackCaller(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) jsonHandler(value func() any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		b, err := json.MarshalIndent(value(), "", "  ")
		if err != nil {
			s.logger.Error("encode debug view", "error", err)
			writeText(w, http.StatusInternalServerError, "admin: encode: "+err.Error()+"\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(b, '\n')) // the client went away; nothing to do
	}
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body)) // the client went away; nothing to do
}

// slogErrorLog adapts slog to promhttp's error logger.
type slogErrorLog struct{ l *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.l.Error(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }
