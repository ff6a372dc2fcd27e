package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"relayq/pressure"
	"relayq/queue"
)

// Queue is what the admin server needs of the store; *queue.Store is one.
type Queue interface {
	// List returns up to limit messages selected by f with IDs after after,
	// oldest first.
	List(f queue.Filter, after queue.ID, limit int) ([]queue.Message, error)
	// Get returns one message, or queue.ErrNotFound.
	Get(id queue.ID) (*queue.Message, error)
	// Body streams one message as stored (headers and body), or returns
	// queue.ErrNotFound; the caller closes it.
	Body(id queue.ID) (io.ReadCloser, error)
	// Hold, Release, Flush, Bounce and Delete are the operator actions;
	// each is one synced commit and returns queue.ErrNotFound for an
	// unknown ID (Flush: queue.ErrHeld for a held message).
	Hold(ctx context.Context, id queue.ID) error
	Release(ctx context.Context, id queue.ID) error
	Flush(ctx context.Context, id queue.ID) error
	Bounce(ctx context.Context, id queue.ID) error
	Delete(ctx context.Context, id queue.ID) error
	// Messages and Bytes are the queue totals, read without a scan.
	Messages() int64
	Bytes() int64
}

var _ Queue = (*queue.Store)(nil)

// BackPressure is the state of graded back pressure: the overall level and
// each resource that feeds it.
type BackPressure struct {
	Level     pressure.Level `json:"level"` // normal | medium | high
	Resources []Resource     `json:"resources"`
}

// Resource is one back-pressure input with its reading and thresholds.
type Resource struct {
	Name    string         `json:"name"`  // "free_disk", "memory", "queue_messages"
	Level   pressure.Level `json:"level"` // what this resource alone calls for
	Reading float64        `json:"reading"`
	Medium  float64        `json:"medium"`
	High    float64        `json:"high"`
	// Unit is "bytes", "ratio" (0..1), "seconds" or "count".
	Unit string `json:"unit"`
	// Medium and High are 0 for a resource shown for information only.
	// Falling is true when a lower reading is worse (free disk space).
	Falling bool `json:"falling,omitempty"`
}

// BackPressureSource reports back pressure; pressure.Monitor is one
// (through an adapter in internal/server).
type BackPressureSource interface {
	BackPressure() BackPressure
}

// Destination is what the delivery side knows of one next hop.
type Destination struct {
	Name string `json:"name"`
	// Cap is the current connection cap; ConfiguredCap the configured one.
	// LearnedCap is the cap set by the destination's last "too many
	// connections" reply (421 4.3.2, a per-source limit at the destination),
	// 0 if none; CapReason is that reply.
	Cap           int    `json:"cap"`
	ConfiguredCap int    `json:"configured_cap"`
	LearnedCap    int    `json:"learned_cap,omitempty"`
	CapReason     string `json:"cap_reason,omitempty"`
	Open          int    `json:"open"`              // connections open now
	Waiting       int    `json:"waiting,omitempty"` // deliveries waiting for a connection slot or the rate
	// RateLimit is the configured message rate ("600/min", "100/h"), ""
	// for none; LearnedRate the lower one set by a reply saying we send
	// too fast, "" for none, and RateReason that reply. The per-hour
	// figures are the same rates as numbers (0: none), for /metrics.
	RateLimit          string  `json:"rate_limit,omitempty"`
	LearnedRate        string  `json:"learned_rate,omitempty"`
	RateReason         string  `json:"rate_reason,omitempty"`
	RateLimitPerHour   float64 `json:"rate_limit_per_hour,omitempty"`
	LearnedRatePerHour float64 `json:"learned_rate_per_hour,omitempty"`
	// State is the delivery side's word for the destination
	// (smarthost.DestState: "ok", "capped", "failing"), for operators.
	State       string    `json:"state,omitempty"`
	LastReply   string    `json:"last_reply,omitempty"`
	LastReplyAt time.Time `json:"last_reply_at,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// DestinationSource lists the destinations the delivery side knows.
type DestinationSource interface {
	Destinations() []Destination
}

// Options configure a Server. Queue is required; everything else is
// optional.
type Options struct {
	Queue        Queue
	BackPressure BackPressureSource // nil: not shown
	Destinations DestinationSource  // nil: none shown
	RateLimits   RateLimitSource    // nil: not shown (ratelimit.go)
	Cluster      ClusterSource      // nil: no [cluster] (cluster.go)
	// Reload re-reads the configuration (POST /api/reload); nil answers 501.
	Reload func() error
	// Metrics is the registry served at /metrics; nil: New makes one. New
	// adds the queue, back-pressure and destination gauges to it, so one
	// Metrics serves one Server.
	Metrics *Metrics
	// Events is the feed of deferrals and bounces; nil: New makes one of
	// DefaultEvents.
	Events *Events
	// Token is the bearer token; "" means none (loopback only).
	Token string
	// Hostname and Version are shown on the status page.
	Hostname, Version string
	// SampleEvery is how often the queue depth is sampled for the status
	// page chart (an hour of samples is kept); 0 means 10 s.
	SampleEvery time.Duration
	Now         func() time.Time
	Log         zerolog.Logger
}

// Server is the admin HTTP server.
type Server struct {
	opts    Options
	metrics *Metrics
	events  *Events
	depth   *depthRing
	started time.Time
	handler http.Handler
	http    *http.Server

	stopOnce sync.Once
	stop     chan struct{}
	sampling sync.WaitGroup
}

// New builds a server; Serve starts it.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SampleEvery <= 0 {
		opts.SampleEvery = 10 * time.Second
	}
	s := &Server{
		opts:    opts,
		metrics: opts.Metrics,
		events:  opts.Events,
		depth:   newDepthRing(int(time.Hour/opts.SampleEvery) + 1),
		started: opts.Now(),
		stop:    make(chan struct{}),
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	if s.events == nil {
		s.events = NewEvents(DefaultEvents)
	}
	s.metrics.registerSources(opts.Queue, opts.BackPressure, opts.Destinations)
	if opts.RateLimits != nil {
		s.metrics.reg.MustRegister(&rateCollector{src: opts.RateLimits})
	}
	if opts.Cluster != nil {
		s.metrics.reg.MustRegister(&clusterCollector{src: opts.Cluster})
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("GET /api/status", s.apiStatus)
	mux.HandleFunc("GET /api/queue", s.apiList)
	mux.HandleFunc("GET /api/queue/{id}", s.apiShow)
	mux.HandleFunc("GET /api/queue/{id}/body", s.apiBody)
	mux.HandleFunc("POST /api/queue/{id}/{action}", s.apiAction)
	mux.HandleFunc("POST /api/queue/{action}", s.apiBulk)
	mux.HandleFunc("POST /api/reload", s.apiReload)
	// Profiles, for when relayq is slow or big: behind the same token
	// and loopback rules as the rest of the API.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", s.page)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(staticFS)))
	s.handler = s.guard(mux)
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// An action on a whole large queue is one request: thousands of
		// synced commits a second, so minutes for half a million messages.
		WriteTimeout: 15 * time.Minute,
		IdleTimeout:  2 * time.Minute,
	}
	return s
}

// Handler returns the server's HTTP handler, with authentication.
func (s *Server) Handler() http.Handler { return s.handler }

// Metrics returns the metrics the server exposes, for the relay and the
// delivery worker to count into.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Event records a deferral or a bounce for the status page.
func (s *Server) Event(e Event) { s.events.Add(e) }

// Serve samples the queue depth and serves HTTP on l until Shutdown; it
// returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.sampling.Add(1)
	go s.sample()
	s.opts.Log.Info().Str("address", l.Addr().String()).Bool("token", s.opts.Token != "").Msg("admin API listening")
	if err := s.http.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting, waits for requests in flight (bounded by ctx)
// and stops the sampler.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	s.stopOnce.Do(func() { close(s.stop) })
	s.sampling.Wait()
	return err
}

// sample records the queue depth every SampleEvery for the chart.
func (s *Server) sample() {
	defer s.sampling.Done()
	t := time.NewTicker(s.opts.SampleEvery)
	defer t.Stop()
	for {
		s.depth.add(s.opts.Now(), s.opts.Queue.Messages())
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// guard authenticates requests and, without a token, keeps browsers on
// other sites out (see doc.go).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		if s.opts.Token == "" {
			if !loopbackHost(r.Host) {
				writeError(w, http.StatusForbidden, "the admin API without a token answers only requests to a loopback address (Host: %q)", r.Host)
				return
			}
		} else if !s.tokenOK(r) {
			if r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/static/") {
				w.Header().Set("WWW-Authenticate", `Basic realm="relayq admin (password: the admin token)"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="relayq admin"`)
			}
			writeError(w, http.StatusUnauthorized, "admin token required")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && crossOrigin(r) {
			writeError(w, http.StatusForbidden, "cross-origin request refused")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) tokenOK(r *http.Request) bool {
	var got string
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		got = strings.TrimSpace(h[7:])
	} else if _, pass, ok := r.BasicAuth(); ok {
		got = pass
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) == 1
}

// loopbackHost reports whether a Host header names this machine by a
// loopback address or "localhost".
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// crossOrigin reports whether a browser sent r from another site: its
// Origin names another host, or Sec-Fetch-Site says so. Non-browser clients
// (the CLI, curl) send neither.
func crossOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err != nil || !strings.EqualFold(u.Host, r.Host)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz says whether relayq takes mail: not at back-pressure high, when
// every new message gets 452 4.3.1.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.opts.BackPressure != nil {
		if bp := s.opts.BackPressure.BackPressure(); bp.Level == pressure.High {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: back pressure high (" + DescribePressure(bp) + ")\n"))
			return
		}
	}
	if s.opts.Cluster != nil && s.opts.Cluster.Cluster().State == ClusterDegraded {
		// Still delivering, on local limits: ready, and says so.
		_, _ = w.Write([]byte("ready (cluster: degraded: Redis unreachable; each destination's cap divided by expected_nodes)\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) apiReload(w http.ResponseWriter, r *http.Request) {
	if s.opts.Reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not available")
		return
	}
	if err := s.opts.Reload(); err != nil {
		writeError(w, http.StatusUnprocessableEntity, "reload rejected, the running configuration stays: %v", err)
		return
	}
	s.opts.Log.Info().Str("remote", r.RemoteAddr).Msg("configuration reloaded through the admin API")
	writeJSON(w, http.StatusOK, map[string]any{"reloaded": true})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Error is the body of every error answer of the API.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, Error{Error: fmt.Sprintf(format, args...)})
}
