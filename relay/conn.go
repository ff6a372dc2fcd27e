package relay

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"relayq/internal/smtpreply"
)

const (
	// refuseTimeout bounds the TLS handshake and the write of a 421 to a
	// connection over a cap.
	refuseTimeout = 5 * time.Second
	// maxRefusing bounds the refusals being written at once; beyond it an
	// over-cap connection is closed without a reply, so a flood cannot
	// pile up goroutines.
	maxRefusing = 256
	// maxCoalesce bounds what a trackedConn holds back of a multi-line reply.
	maxCoalesce = 16 << 10
	// probeInterval is how long a source at its cap waits for its next
	// probe round (uncountGone) after one that found none of its
	// connections closed. A round costs relay's accept loop a getsockopt
	// per connection of the source (about 0.3 ms for 50 on a 2-core VM,
	// BenchmarkAdmitOverSourceCap), so a source that keeps its cap open and
	// keeps connecting would otherwise hold the accept loop up.
	probeInterval = 2 * time.Millisecond
)

// trackingListener admits connections within the caps and wraps each in a
// trackedConn: so Shutdown can close the idle ones (go-smtp's Shutdown
// would wait for them), a session can slide its read deadline during DATA,
// and replies are coalesced. go-smtp has no hook before its greeting, so
// the caps (421 4.3.2) live here (docs/design.md "What the code relies on").
type trackingListener struct {
	net.Listener
	s    *Server
	lc   ListenerConfig
	once sync.Once
	err  error
}

// admission is what admit decided for a new connection.
type admission int

const (
	admitted admission = iota
	admitClosing
	overTotal
	overSource
)

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, s: l.s, ip: remoteIP(c.RemoteAddr())}
		switch a := l.s.admit(tc); a {
		case admitted:
			if l.lc.Mode == ModeSMTPS {
				// Implicit TLS on top of the tracked conn: go-smtp sees a
				// *tls.Conn, runs the handshake under its deadlines and
				// treats the session as TLS (ESMTPS, AUTH); the tracked
				// conn below still slides deadlines and is closed on
				// Shutdown.
				tc.tls = true
				return tls.Server(tc, l.s.cfg.TLS), nil
			}
			return tc, nil
		case admitClosing:
			c.Close() // go-smtp's greeting fails and its read ends the conn
			return tc, nil
		default:
			l.s.refuse(c, l.lc, a)
		}
	}
}

// Close closes the listener once; both Shutdown and go-smtp close it.
func (l *trackingListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// admit counts tc in if it is within both connection caps. Over the
// per-source cap, it first stops counting the source's connections whose
// client has already closed (uncountGone), as far as leaveSourceLocked
// allows, unless a probe round for the source found none within
// probeInterval.
func (s *Server) admit(tc *trackedConn) admission {
	a := s.admitLocked(tc)
	if a == overSource && s.mayProbe(tc.ip) && s.uncountGone(tc.ip) > 0 {
		a = s.admitLocked(tc)
	}
	return a
}

// mayProbe reports whether a probe round for ip may run now.
func (s *Server) mayProbe(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	last, ok := s.mu.probed[ip]
	return !ok || time.Since(last) >= probeInterval
}

// admitLocked is one try of admit; it takes s.mu itself.
func (s *Server) admitLocked(tc *trackedConn) admission {
	p := s.pol.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.mu.closing:
		return admitClosing
	case len(s.mu.conns) >= p.MaxConnections:
		return overTotal
	case s.mu.sources[tc.ip] >= p.MaxConnectionsPerSource:
		return overSource
	}
	s.mu.conns[tc] = struct{}{}
	s.mu.sources[tc.ip]++
	tc.counted = true
	return admitted
}

// uncountGone stops counting against ip its connections whose client has
// closed its side (its FIN or RST has arrived) while relay has not yet
// finished with them: a client that sent QUIT and closed is gone, however
// long relay's goroutine takes over its teardown (a TLS close, a session
// still logging out), and a client that keeps exactly
// max_connections_per_source open, closing one and opening the next at
// once, must not be refused for it. They still count in the total until
// released. It runs only for a source at its cap, and costs one
// getsockopt per connection of that source. It returns how many it
// stopped counting.
func (s *Server) uncountGone(ip netip.Addr) int {
	s.probeRounds.Add(1)
	s.mu.Lock()
	var open []*trackedConn
	for c := range s.mu.conns {
		if c.counted && c.ip == ip {
			open = append(open, c)
		}
	}
	s.mu.Unlock()
	var gone []*trackedConn
	for _, c := range open {
		if peerClosed(c.Conn) {
			gone = append(gone, c)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range gone {
		if s.leaveSourceLocked(c) {
			n++
		}
	}
	if n == 0 {
		s.mu.probed[ip] = time.Now()
	}
	return n
}

// leaveSourceLocked stops counting c against its source, its client having
// quit or closed its side, unless max_connections_per_source of the
// source's connections are already in that state: a client that closes
// its side and leaves relay busy (pipelined commands whose replies it does
// not read block relay's writes until WriteTimeout) would otherwise have
// as many connections as the total cap allows. So a source holds at most
// twice its cap. c still counts in the total until release.
func (s *Server) leaveSourceLocked(c *trackedConn) bool {
	if !c.counted || s.mu.leaving[c.ip] >= s.pol.Load().MaxConnectionsPerSource {
		return false
	}
	c.counted, c.leaving = false, true
	s.mu.leaving[c.ip]++
	s.uncountLocked(c.ip)
	return true
}

// release counts tc out; it runs once per admitted connection.
func (s *Server) release(tc *trackedConn) {
	p := s.pol.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.conns, tc)
	if len(s.mu.conns) < p.MaxConnections {
		delete(s.mu.warned, allSources)
	}
	if tc.counted {
		tc.counted = false
		s.uncountLocked(tc.ip)
	}
	if tc.leaving {
		tc.leaving = false
		if n := s.mu.leaving[tc.ip] - 1; n > 0 {
			s.mu.leaving[tc.ip] = n
		} else {
			delete(s.mu.leaving, tc.ip)
		}
	}
}

// uncountLocked takes one connection off ip's count.
func (s *Server) uncountLocked(ip netip.Addr) {
	if n := s.mu.sources[ip] - 1; n > 0 {
		s.mu.sources[ip] = n
	} else {
		delete(s.mu.sources, ip)
	}
	if s.mu.sources[ip] < s.pol.Load().MaxConnectionsPerSource {
		delete(s.mu.warned, ip)
		delete(s.mu.probed, ip)
	}
}

// refusals counts the 421 replies being written.
type refusals struct {
	n  atomic.Int32
	wg sync.WaitGroup
}

// refuse answers c, a connection over a cap, with 421 4.3.2 in place of
// the greeting (inside TLS on an smtps listener, where plaintext would be
// noise to the client) and closes it, in the background.
func (s *Server) refuse(c net.Conn, lc ListenerConfig, a admission) {
	ip := remoteIP(c.RemoteAddr())
	p := s.pol.Load()
	reply, limit, key := replyTooManyConnsFrom, p.MaxConnectionsPerSource, ip
	if a == overTotal {
		reply, limit, key = replyTooManyConns, p.MaxConnections, allSources
	}
	s.mu.Lock()
	first := !s.mu.warned[key]
	s.mu.warned[key] = true
	s.mu.Unlock()
	if first {
		// Once per episode: an operator whose gateway hits a per-source
		// limit needs to see which source hit which cap, not one line per
		// refused connection.
		s.log.Warn().Str("ip", ip.String()).Int("limit", limit).Int("code", reply.Code).
			Str("enhanced", reply.Status().String()).Bool("per_source", a == overSource).
			Msg("connection refused: over the connection limit (further refusals until it drops below are not logged)")
	}
	if s.refusing.n.Add(1) > maxRefusing {
		s.refusing.n.Add(-1)
		c.Close()
		return
	}
	s.refusing.wg.Add(1)
	go func() {
		defer s.refusing.wg.Done()
		defer s.refusing.n.Add(-1)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(refuseTimeout))
		var w net.Conn = c
		if lc.Mode == ModeSMTPS {
			tc := tls.Server(c, s.cfg.TLS)
			if tc.Handshake() != nil {
				return
			}
			w = tc
		}
		_, _ = w.Write([]byte(replyLine(reply)))
	}()
}

// replyLine formats r as one reply line.
func replyLine(r *smtpreply.Reply) string {
	return r.Error() + "\r\n"
}

// trackedConn is a server connection. While slide is set, every read moves
// the read deadline to now+slide, so a body that keeps arriving never times
// out and one that stalls does after slide (go-smtp sets the deadline only
// when the DATA command is read).
//
// Writes coalesce a multi-line reply: go-smtp writes each line of a reply
// (the EHLO list) in its own Write; trackedConn holds back the lines that
// continue a reply ("250-…") and sends them with the final one ("250 …") in
// one write, which saves syscalls and fixes clients that read one segment
// per reply (docs/design.md "What the code relies on"). Below TLS it sees only records
// (they never start with a digit) and passes them through.
type trackedConn struct {
	net.Conn
	s       *Server
	ip      netip.Addr
	counted bool // in s.mu.sources; guarded by s.mu
	leaving bool // in s.mu.leaving; guarded by s.mu

	slide atomic.Int64 // a time.Duration; 0: off
	once  sync.Once
	// closeAfterReply makes the next write that completes a reply close
	// the connection once it is sent (AUTH failures).
	closeAfterReply atomic.Bool
	authFailures    atomic.Int32

	wmu   sync.Mutex
	wbuf  []byte // continuation lines held back
	grown bool   // growStack has run (the first write: the greeting)

	// The DATA fast path (fastdata.go). Only the goroutine go-smtp serves
	// the connection with reads and writes these: it reads commands, writes
	// the 354 and runs Session.Data for DATA.
	fastState int
	fast      *fastData // while fastActive
	// pending is what was read from the socket and not yet handed to
	// go-smtp: what followed a DATA line in the same read, or a body the
	// fast path read and what followed it. held is its reused buffer.
	pending, held []byte
	scan          dataScan // the lines handed to go-smtp so far
	// lastData: the last bytes handed to go-smtp ended with a DATA command
	// line, so go-smtp holds nothing of what follows it.
	lastData bool
	// tls: the bytes are TLS records (smtps, or after STARTTLS): never
	// scanned, never the fast path.
	tls bool
}

func (c *trackedConn) Read(p []byte) (int, error) {
	switch c.fastState {
	case fastArmed:
		// Session.Data did not take the body: go-smtp reads it itself.
		c.fastState = fastOff
	case fastActive:
		// go-smtp drains its reader after Data: finish the body first, as
		// its own drain would, then give it ".\r\n" (an empty body, which
		// its reader ends at once) and what the client sent after the body.
		if err := c.fast.drain(); err != io.EOF {
			return 0, err // sticky: every later read fails the same
		}
		c.pending, c.fast, c.fastState = c.fast.rest(), nil, fastOff
	}
	if c.tls {
		return c.readRaw(p)
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		if end := c.scan.dataLineEnd(p[:n]); end >= 0 {
			n = end
		}
		c.pending = c.pending[n:]
		c.lastData = len(c.pending) == 0 && c.scan.afterData
		return n, nil
	}
	n, err := c.readRaw(p)
	if end := c.scan.dataLineEnd(p[:n]); end >= 0 && end < n && err == nil {
		// Keep what follows the DATA line from go-smtp: it is the body
		// (or the next commands) and decides the path at the 354.
		c.pending = append(c.held[:0], p[end:n]...)
		c.held = c.pending[:0]
		n = end
	}
	c.lastData = n > 0 && c.scan.afterData
	return n, err
}

// readRaw reads the socket under the sliding deadline.
func (c *trackedConn) readRaw(p []byte) (int, error) {
	if d := time.Duration(c.slide.Load()); d > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(d)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

// takeFast returns the reader of the body whose 354 was just written, if
// the fast path is armed for it, else nil: then Data reads go-smtp's
// reader. max is the size limit, go-smtp's MaxMessageBytes.
func (c *trackedConn) takeFast(max int64) io.Reader {
	if c == nil || c.fastState != fastArmed {
		return nil
	}
	c.fast, c.fastState = newFastData(c, max), fastActive
	if c.s != nil {
		c.s.fastBodies.Add(1)
	}
	return c.fast
}

func (c *trackedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	greeting := !c.grown
	if greeting {
		c.grown = true
		growStack(len(p))
	}
	orig := len(p)
	p = sanitizeReply(p)
	if isContinuationLine(p) && len(c.wbuf)+len(p) <= maxCoalesce {
		c.wbuf = append(c.wbuf, p...)
		return len(p), nil
	}
	out, held := p, len(c.wbuf)
	if held > 0 {
		c.wbuf = append(c.wbuf, p...)
		out = c.wbuf
	}
	if bytes.HasPrefix(p, reply221) {
		// The reply to QUIT: the client is leaving. Free its slot before
		// it can read this and connect again, or a client that keeps
		// exactly max_connections_per_source open would be refused now
		// and then, its new connection racing our close of the old. It
		// counts in the total until closed: this write may block.
		c.s.mu.Lock()
		c.s.leaveSourceLocked(c)
		c.s.mu.Unlock()
	}
	if !greeting && bytes.HasPrefix(p, reply220) && !c.tls {
		// A 220 after the greeting answers STARTTLS: what follows is TLS.
		// What the client sent after STARTTLS in the clear is dropped, as
		// go-smtp drops what its reader holds (RFC 3207 §6: no command
		// sent before the handshake counts after it).
		c.tls, c.pending, c.lastData = true, nil, false
	}
	n, err := c.Conn.Write(out)
	c.wbuf = c.wbuf[:0]
	if err == nil && bytes.HasPrefix(p, reply354) && c.lastData && len(c.pending) == 0 && c.fastState == fastOff {
		// go-smtp answers the DATA line that ended what it was handed, so
		// it holds no byte of the body, and none has been read from the
		// socket: the body is all still there (fastdata.go).
		c.fastState = fastArmed
	}
	if c.closeAfterReply.Load() {
		c.Close()
	}
	if err != nil {
		return max(0, min(orig, n-held)), err
	}
	return orig, nil
}

// growStack grows the calling goroutine's stack to what a session needs
// while the stack is still shallow: the first write on a connection is the
// greeting. A goroutine starts with a small stack, and the runtime copies
// it, adjusting every frame, each time it must grow. Without this it grew
// deep inside queue.Put, reading the body under Session.Data, at about 4 %
// of relayq's CPU at 1 KiB (profile of `make bench`). An 8 KiB frame here
// takes the stack to 16 KiB, the largest size the runtime serves from its
// per-P cache (32 KiB cost a heap allocation per connection), and the
// profile then shows no growth past the greeting. n only keeps the
// compiler from removing the frame.
//
//go:noinline
func growStack(n int) byte {
	var pad [8 << 10]byte
	pad[n%len(pad)] = 1
	return pad[(n+1)%len(pad)]
}

// sanitizeReply replaces control characters inside the text of a reply
// line with '?'. go-smtp echoes client input in some replies ("250-Hello
// <EHLO argument>", "500 … <command> command unrecognized") and a CR, LF
// or NUL there would break the reply's framing for the client. p is
// returned as is when it is not one reply line or is clean (the usual
// case; TLS records never start with a digit), else a cleaned copy of the
// same length.
func sanitizeReply(p []byte) []byte {
	if len(p) < 6 || p[len(p)-2] != '\r' || p[len(p)-1] != '\n' || p[3] != ' ' && p[3] != '-' {
		return p
	}
	for _, d := range p[:3] {
		if d < '0' || d > '9' {
			return p
		}
	}
	text := p[4 : len(p)-2]
	var out []byte
	for i, b := range text {
		if b < 0x20 && b != '\t' || b == 0x7f {
			if out == nil {
				out = append([]byte(nil), p...)
			}
			out[4+i] = '?'
		}
	}
	if out == nil {
		return p
	}
	return out
}

// isContinuationLine reports whether p is exactly one non-final reply line,
// "ddd-text\r\n" (RFC 5321 §4.2.1).
func isContinuationLine(p []byte) bool {
	if len(p) < 6 || p[3] != '-' || p[len(p)-2] != '\r' || p[len(p)-1] != '\n' {
		return false
	}
	for _, d := range p[:3] {
		if d < '0' || d > '9' {
			return false
		}
	}
	for _, b := range p[4 : len(p)-2] {
		if b == '\r' || b == '\n' {
			return false
		}
	}
	return true
}

// reply221 starts go-smtp's reply to QUIT (RFC 5321 §4.1.1.10), reply354
// its reply to DATA, reply220 its greeting and its reply to STARTTLS.
var (
	reply220 = []byte("220 ")
	reply221 = []byte("221 ")
	reply354 = []byte("354 ")
)

func (c *trackedConn) Close() error {
	if c.s.beforeClose != nil {
		c.s.beforeClose()
	}
	c.once.Do(func() { c.s.release(c) })
	return c.Conn.Close()
}

// setSlide turns the sliding read deadline on (d > 0) or off.
func (c *trackedConn) setSlide(d time.Duration) {
	if c != nil {
		c.slide.Store(int64(d))
	}
}

// trackedOf finds the trackedConn under c, which may be a *tls.Conn (smtps,
// or go-smtp's after STARTTLS).
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
