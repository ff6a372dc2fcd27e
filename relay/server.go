package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/queue"
)

// Queue is where accepted mail goes.
type Queue interface {
	// NewID returns a fresh queue ID (used in the Received header before the
	// body is stored).
	NewID() queue.ID
	// Put stores env and the body read from body under id, and returns only
	// after both are committed to disk with fsync (pebble.Sync). body is
	// streamed (never read whole into memory by Put). An error means nothing
	// was stored. Put sets env.Size and env.Received itself.
	Put(ctx context.Context, id queue.ID, env *queue.Envelope, body io.Reader) error
}

// Defaults for the zero values of Config.
const (
	DefaultMaxMessageSize = 35 << 20
	DefaultMaxRecipients  = 100
	DefaultMaxHops        = 30
	// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command.
	DefaultTimeout = 5 * time.Minute
)

// rdnsTimeout bounds the reverse lookup made once per session at EHLO.
const rdnsTimeout = 5 * time.Second

// Config says how the server treats clients. The zero value of each field
// means its default.
type Config struct {
	Hostname        string         // EHLO greeting domain and the "by" of Received; default os.Hostname
	AllowedNetworks []netip.Prefix // may relay without AUTH; empty: nobody may
	MaxMessageSize  int64          // SIZE advertised and enforced: 552 5.3.4
	MaxRecipients   int            // beyond it: 452 4.5.3
	MaxHops         int            // Received headers above it: 554 5.4.6 at end of DATA
	// ReadTimeout is the idle limit for a command and, during DATA, for
	// progress: the read deadline slides with every read of the body, as
	// go-smtp sets it only once when DATA is read. A stalled body gets
	// 451 4.4.2 and the connection is closed.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// Now is the clock for the Received header; nil means time.Now.
	Now func() time.Time
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
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxRecipients <= 0 {
		c.MaxRecipients = DefaultMaxRecipients
	}
	if c.MaxHops <= 0 {
		c.MaxHops = DefaultMaxHops
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Server accepts mail over SMTP and puts it into a Queue.
type Server struct {
	cfg  Config
	q    Queue
	log  zerolog.Logger
	smtp *smtp.Server

	// ctx is the parent of every session's context; it is cancelled only
	// when Shutdown gives up waiting, to abort the Puts still running.
	ctx    context.Context
	cancel context.CancelFunc

	// txns counts open transactions (MAIL accepted, not yet reset) and
	// running Data calls; Shutdown waits for it to reach zero.
	txns sync.WaitGroup

	mu struct {
		sync.Mutex
		closing   bool
		listeners []*trackingListener
		conns     map[*trackedConn]struct{}
	}
}

// New returns a server for cfg that hands messages to q.
func New(cfg Config, q Queue, log zerolog.Logger) *Server {
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, q: q, log: log}
	// Sessions outlive any caller's context: they end with their connection
	// or when Shutdown cancels them, so their root is this server's own.
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.conns = make(map[*trackedConn]struct{})

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	// go-smtp advertises SIZE with this value and refuses a larger SIZE= at
	// MAIL with 552 5.3.4 itself; bodyReader enforces the same limit on the
	// body and maps go-smtp's own overflow error to the same reply.
	srv.MaxMessageBytes = cfg.MaxMessageSize
	// MaxRecipients stays 0: go-smtp would count duplicate RCPTs, which
	// relay collapses; Session.Rcpt enforces the limit.
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	errLog := log.With().Str("component", "go-smtp").Logger()
	srv.ErrorLog = &errLog
	s.smtp = srv
	return s
}

// Serve accepts SMTP connections on l until Shutdown; it advertises SIZE,
// 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, SMTPUTF8 and DSN (and go-smtp's
// CHUNKING, which relay handles like DATA). l must be a plain listener: the
// server tracks the raw connections to slide read deadlines and to close
// idle ones on Shutdown. Serve returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	tl := &trackingListener{Listener: l, s: s}
	s.mu.Lock()
	if s.mu.closing {
		s.mu.Unlock()
		return smtp.ErrServerClosed
	}
	s.mu.listeners = append(s.mu.listeners, tl)
	s.mu.Unlock()
	err := s.smtp.Serve(tl)
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
// connections. When ctx ends first, Shutdown cancels the Puts still running,
// closes every connection and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.mu.closing = true
	listeners := s.mu.listeners
	s.mu.Unlock()
	for _, l := range listeners {
		l.Close()
	}
	smtpDone := make(chan error, 1)
	go func() { smtpDone <- s.smtp.Shutdown(ctx) }()

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
	if serr := <-smtpDone; err == nil {
		err = serr
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

// mayRelayFrom reports whether ip is in an allowed network.
func (s *Server) mayRelayFrom(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.cfg.AllowedNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
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

// trackingListener records every accepted connection so Shutdown can close
// the idle ones (go-smtp's Shutdown would wait for them) and so a session
// can slide its read deadline during DATA.
type trackingListener struct {
	net.Listener
	s    *Server
	once sync.Once
	err  error
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	closing := l.s.mu.closing
	if !closing {
		l.s.mu.conns[tc] = struct{}{}
	}
	l.s.mu.Unlock()
	if closing {
		c.Close() // go-smtp's greeting fails and its read ends the conn
	}
	return tc, nil
}

// Close closes the listener once; both Shutdown and go-smtp close it.
func (l *trackingListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// trackedConn is a server connection. While slide is set, every read moves
// the read deadline to now+slide, so a body that keeps arriving never times
// out and one that stalls does after slide (go-smtp sets the deadline only
// when the DATA command is read).
type trackedConn struct {
	net.Conn
	s     *Server
	slide atomic.Int64 // a time.Duration; 0: off
	once  sync.Once
}

func (c *trackedConn) Read(p []byte) (int, error) {
	if d := time.Duration(c.slide.Load()); d > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(d)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.mu.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// setSlide turns the sliding read deadline on (d > 0) or off.
func (c *trackedConn) setSlide(d time.Duration) {
	if c != nil {
		c.slide.Store(int64(d))
	}
}

// trackedOf finds the trackedConn under c, which go-smtp may have wrapped
// in a *tls.Conn after STARTTLS.
func trackedOf(c net.Conn) *trackedConn {
	for range 4 {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
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
