package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/queued"
)

// Queue is where accepted mail goes.
type Queue interface {
	// NewID returns a fresh queue ID (used in the Received header before the
	// body is stored).
	NewID() queued.ID
	// Put stores env and the body read from body under id, and returns only
	// after both are committed to disk with fsync (pebble.Sync). body is
	// streamed (never read whole into memory by Put) and not read after Put
	// returns (its buffers are reused). An error means nothing was stored.
	// Put sets env.Size and env.Received itself, and reads env only after
	// body returned io.EOF: Data sets env.MessageID and env.Subject while
	// the body is read.
	Put(ctx context.Context, id queued.ID, env *queued.Envelope, body io.Reader) error
}

// Defaults for the zero values of Config, besides the limits of config
// (config.DefaultMaxMessageSize and the others).
const (
	// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command.
	DefaultTimeout = 5 * time.Minute
	// DefaultAuthFailuresPerSource failed AUTH attempts within
	// DefaultAuthFailureWindow make a source wait (454 4.7.0).
	DefaultAuthFailuresPerSource = 10
	DefaultAuthFailureWindow     = 10 * time.Minute
)

// rdnsTimeout bounds the reverse lookup made once per session at EHLO.
const rdnsTimeout = 5 * time.Second

// BareLineEndings says what happens to a bare CR or bare LF inside DATA.
type BareLineEndings int

const (
	// BareNormalize rewrites each bare CR and bare LF to CRLF before queueing.
	BareNormalize BareLineEndings = iota
	// BareReject refuses the message with 550 5.5.2.
	BareReject
)

// Config says how the server treats clients. The zero value of each field
// means its default. Policy is the initial policy: SetPolicy changes it
// while the server runs; the other fields are fixed.
type Config struct {
	Policy
	Hostname       string // EHLO greeting domain and the "by" of Received; default os.Hostname
	MaxMessageSize int64  // SIZE advertised and enforced: 552 5.3.4
	// ReadTimeout is the idle limit for a command and, during DATA, for
	// progress: the read deadline slides with every read of the body, as
	// go-smtp sets it only once when DATA is read. A stalled body gets
	// 451 4.4.2 and the connection is closed.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// TLS is the certificate for STARTTLS and for smtps listeners; nil
	// means no STARTTLS is offered and no smtps listener can be served.
	TLS *tls.Config
	// AuthFailuresPerSource failed AUTH attempts from one source (an IPv4
	// address or an IPv6 /64) within AuthFailureWindow make further AUTH
	// from it wait with 454 4.7.0 until the oldest failure leaves the window.
	AuthFailuresPerSource int
	AuthFailureWindow     time.Duration
	// Signer, if set, signs each message before it is queued (DKIM,
	// sign.go); a signing error is a failure to store (451 4.3.0).
	Signer Signer
	// Pressure is the back pressure consulted at MAIL; nil means always
	// normal. Its owner samples and runs it; only intake is refused.
	Pressure Pressure
	// Now is the clock for the Received header and AUTH rate limiting;
	// nil means time.Now.
	Now func() time.Time
	// Accepted, if set, is called for every message queued, with the time
	// from the end of the client's data to the commit (then the 250 goes
	// out): the accept latency that metrics export.
	Accepted func(took time.Duration)
	// LookupAddr finds the client's name for the Received header, as
	// net.Resolver.LookupAddr does; nil means no reverse lookup is made and
	// the header shows the address only.
	LookupAddr func(ctx context.Context, addr string) ([]string, error)
}

func (c Config) withDefaults() Config {
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
		if c.Hostname == "" {
			c.Hostname = "localhost"
		}
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = int64(config.DefaultMaxMessageSize)
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultTimeout
	}
	if c.AuthFailuresPerSource <= 0 {
		c.AuthFailuresPerSource = DefaultAuthFailuresPerSource
	}
	if c.AuthFailureWindow <= 0 {
		c.AuthFailureWindow = DefaultAuthFailureWindow
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Pressure == nil {
		c.Pressure = noPressure{}
	}
	return c
}

// Mode is how a listener treats its clients (config `[[listener]] mode`).
type Mode string

const (
	// ModeRelay is port 25 style: a client relays when its address is in
	// AllowedNetworks or after AUTH; STARTTLS is offered when Config.TLS is
	// set.
	ModeRelay Mode = "relay"
	// ModeSubmission is port 587 style (RFC 6409 §4.3): AUTH is required
	// before MAIL from every client, AllowedNetworks included (530 5.7.0).
	ModeSubmission Mode = "submission"
	// ModeSMTPS is implicit TLS from the first byte (RFC 8314 §3.3), with
	// the relay policy of ModeRelay.
	ModeSMTPS Mode = "smtps"
)

// ListenerConfig is what differs between listeners.
type ListenerConfig struct {
	Mode Mode // "" means ModeRelay
	// AllowInsecureAuth offers and accepts AUTH on a connection without
	// TLS; otherwise AUTH needs STARTTLS first (RFC 4954 §4) and gets
	// 523 5.7.10 before it.
	AllowInsecureAuth bool
}

// Server accepts mail over SMTP and puts it into a Queue.
type Server struct {
	// cfg is fixed at New; its Policy fields are read from pol instead.
	cfg   Config
	pol   atomic.Pointer[policy] // never nil after New; see SetPolicy
	q     Queue
	log   zerolog.Logger
	fails *failureLimiter
	rate  *rateLimiter // hourly limits per user and source, clock cfg.Now

	// ctx is the parent of every session's context; it is cancelled only
	// when Shutdown gives up waiting, to abort the Puts still running.
	ctx    context.Context
	cancel context.CancelFunc

	// txns counts open transactions (MAIL accepted, not yet reset) and
	// running Data calls; Shutdown waits for it to reach zero.
	txns sync.WaitGroup
	// fastBodies counts the DATA bodies read by the fast path
	// (fastdata.go).
	fastBodies atomic.Int64
	// probeRounds counts the rounds of uncountGone (conn.go).
	probeRounds atomic.Int64

	mu struct {
		sync.Mutex
		closing   bool
		listeners []*trackingListener
		servers   []*smtp.Server // one per Serve call
		conns     map[*trackedConn]struct{}
		// sources counts the open connections per client address;
		// leaving, those no longer in sources because their client has
		// quit or closed its side, until relay has closed them.
		sources, leaving map[netip.Addr]int
		// probed holds when a probe round for a source at its cap last
		// found none of its connections closed (conn.go, probeInterval).
		probed map[netip.Addr]time.Time
		// warned holds the sources (and allSources, for the total) whose
		// refusal has been logged since they were last below their cap,
		// so a flood gives one warn line, not one per connection.
		warned map[netip.Addr]bool
	}
	refusing refusals
	// beforeClose, if set, runs first in every Close of a connection:
	// tests hold a connection's teardown with it.
	beforeClose func()
}

// allSources is the key in Server.mu.warned for the total cap.
var allSources = netip.IPv6Unspecified()

// New returns a server for cfg that hands messages to q.
func New(cfg Config, q Queue, log zerolog.Logger) *Server {
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, q: q, log: log}
	// Sessions outlive any caller's context: they end with their connection
	// or when Shutdown cancels them, so their root is this server's own.
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.conns = make(map[*trackedConn]struct{})
	s.mu.sources = make(map[netip.Addr]int)
	s.mu.leaving = make(map[netip.Addr]int)
	s.mu.probed = make(map[netip.Addr]time.Time)
	s.mu.warned = make(map[netip.Addr]bool)
	s.SetPolicy(cfg.Policy)
	s.fails = newFailureLimiter(cfg.AuthFailuresPerSource, cfg.AuthFailureWindow, cfg.Now)
	s.rate = newRateLimiter(cfg.Now, log)
	return s
}

// newSMTP makes the go-smtp server of one listener: go-smtp keeps the TLS
// and insecure-AUTH settings per server, not per connection.
func (s *Server) newSMTP(lc ListenerConfig) *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return s.newSession(c, lc)
	}))
	srv.Domain = s.cfg.Hostname
	// go-smtp advertises SIZE with this value and refuses a larger SIZE= at
	// MAIL with 552 5.3.4 itself; bodyReader enforces the same limit on the
	// body and maps go-smtp's own overflow error to the same reply.
	srv.MaxMessageBytes = s.cfg.MaxMessageSize
	// MaxRecipients stays 0: go-smtp would count duplicate RCPTs, which
	// relay collapses; Session.Rcpt enforces the limit.
	srv.ReadTimeout = s.cfg.ReadTimeout
	srv.WriteTimeout = s.cfg.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	// STARTTLS is offered when set and TLS is not already up; with smtps
	// the connection arrives as a *tls.Conn and go-smtp runs its handshake
	// before the greeting.
	srv.TLSConfig = s.cfg.TLS
	// go-smtp offers AUTH only when this is set or the connection has TLS,
	// and answers AUTH otherwise with 523 5.7.10; the session checks again.
	srv.AllowInsecureAuth = lc.AllowInsecureAuth
	errLog := s.log.With().Str("component", "go-smtp").Str("mode", string(lc.Mode)).Logger()
	srv.ErrorLog = &errLog
	return srv
}

// Serve accepts SMTP connections on l until Shutdown, treating them as lc
// says; it advertises SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES,
// SMTPUTF8 and DSN (and go-smtp's CHUNKING, which relay handles like DATA),
// STARTTLS when Config.TLS is set, and AUTH PLAIN LOGIN when there are
// users and the connection has TLS (or lc.AllowInsecureAuth). l must be a
// plain listener: the server wraps each raw connection itself (connection
// caps, sliding read deadlines, reply coalescing, closing idle ones on
// Shutdown) and layers implicit TLS on top for ModeSMTPS. Serve returns nil
// after Shutdown.
func (s *Server) Serve(l net.Listener, lc ListenerConfig) error {
	if lc.Mode == "" {
		lc.Mode = ModeRelay
	}
	switch lc.Mode {
	case ModeRelay, ModeSubmission:
	case ModeSMTPS:
		if s.cfg.TLS == nil {
			return errors.New("relay: an smtps listener needs Config.TLS")
		}
	default:
		return fmt.Errorf("relay: unknown listener mode %q", lc.Mode)
	}
	srv := s.newSMTP(lc)
	tl := &trackingListener{Listener: l, s: s, lc: lc}
	s.mu.Lock()
	if s.mu.closing {
		s.mu.Unlock()
		return smtp.ErrServerClosed
	}
	s.mu.listeners = append(s.mu.listeners, tl)
	s.mu.servers = append(s.mu.servers, srv)
	s.mu.Unlock()
	err := srv.Serve(tl)
	if s.closing() {
		// Shutdown closed the listener, possibly before go-smtp knew it
		// was shutting down and would have returned nil itself.
		return nil
	}
	return err
}

// Shutdown stops accepting and waits (bounded by ctx) for in-flight
// transactions to finish: a transaction that has passed MAIL gets to finish
// and receive its reply; a new MAIL gets 421. Then it closes the idle
// connections. When ctx ends first, Shutdown cancels the Puts still
// running, closes every connection and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.mu.closing = true
	listeners := s.mu.listeners
	servers := s.mu.servers
	s.mu.Unlock()
	for _, l := range listeners {
		l.Close()
	}
	smtpDone := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { smtpDone <- srv.Shutdown(ctx) }()
	}

	txnsDone := make(chan struct{})
	go func() {
		s.txns.Wait()
		close(txnsDone)
	}()
	var err error
	select {
	case <-txnsDone:
	case <-ctx.Done():
		err = ctx.Err()
		s.cancel()
	}
	s.closeConns()
	for range servers {
		if serr := <-smtpDone; err == nil {
			err = serr
		}
	}
	return err
}

// closeConns closes every connection; go-smtp then ends their sessions.
func (s *Server) closeConns() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// beginTxn counts a new transaction, or reports false when shutting down.
func (s *Server) beginTxn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closing {
		return false
	}
	s.txns.Add(1)
	return true
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closing
}

// mayRelayFrom reports whether ip is in an allowed network now.
func (s *Server) mayRelayFrom(ip netip.Addr) bool {
	return s.pol.Load().mayRelayFrom(ip)
}

// lookupName returns the client's reverse DNS name, or "".
func (s *Server) lookupName(ctx context.Context, ip netip.Addr) string {
	if s.cfg.LookupAddr == nil || !ip.IsValid() {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, rdnsTimeout)
	defer cancel()
	names, err := s.cfg.LookupAddr(ctx, ip.String())
	if err != nil || len(names) == 0 {
		return ""
	}
	return names[0]
}

// remoteIP returns the address of the client of c.
func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
