package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is what the proxy does to one connection.
type Fault int

const (
	Pass        Fault = iota // forward both ways
	CutAfterDot              // forward the final ".", drop the reply to it, close
	StallInData              // stop forwarding in the middle of the data
	ResetInData              // RST the client in the middle of the data
	Silent                   // accept and never say anything
)

func (f Fault) String() string {
	switch f {
	case Pass:
		return "pass"
	case CutAfterDot:
		return "cut-after-dot"
	case StallInData:
		return "stall-in-data"
	case ResetInData:
		return "reset-in-data"
	case Silent:
		return "silent"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// Options configure a Proxy.
type Options struct {
	// Upstream is the next hop, host:port. Not needed when every
	// connection is Silent.
	Upstream string
	// Plan picks the fault of connection i (0 for the first accepted);
	// nil means Pass for all.
	Plan func(i int) Fault
	// After is how many bytes of message data go through before
	// StallInData or ResetInData fire; 0 means 1.
	After int64
	// DialTimeout bounds the connect to Upstream; 0 means 5 s.
	DialTimeout time.Duration
}

// Once is a plan: fault f on the first connection, Pass after it.
func Once(f Fault) func(int) Fault {
	return func(i int) Fault {
		if i == 0 {
			return f
		}
		return Pass
	}
}

// Proxy is a running fault proxy. Its methods are safe for concurrent use.
type Proxy struct {
	opts Options
	ln   net.Listener
	wg   sync.WaitGroup

	mu struct {
		sync.Mutex
		conns    map[net.Conn]struct{}
		accepted int
		ended    int
		fired    map[Fault]int
		changed  chan struct{} // closed and replaced when a fault fires
		closed   bool
	}
}

// Start listens on a loopback port and proxies in the background until
// Close.
func Start(opts Options) (*Proxy, error) {
	if opts.Plan == nil {
		opts.Plan = func(int) Fault { return Pass }
	}
	if opts.After <= 0 {
		opts.After = 1
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{opts: opts, ln: ln}
	p.mu.conns = map[net.Conn]struct{}{}
	p.mu.fired = map[Fault]int{}
	p.mu.changed = make(chan struct{})
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the host:port clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted is how many connections the proxy accepted.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.accepted
}

// Ended is how many accepted connections have ended. A Silent one ends
// only when its client closes it (or at Close).
func (p *Proxy) Ended() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.ended
}

// Fired is how many connections fault f took effect on.
func (p *Proxy) Fired(f Fault) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.fired[f]
}

// WaitFired returns once fault f took effect on n connections, or with
// ctx's error.
func (p *Proxy) WaitFired(ctx context.Context, f Fault, n int) error {
	for {
		p.mu.Lock()
		got, changed := p.mu.fired[f], p.mu.changed
		p.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("faultproxy: %s fired %d times, want %d: %w", f, got, n, ctx.Err())
		}
	}
}

// Close stops listening, closes every connection and waits until the
// proxy's goroutines are done. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	first := !p.mu.closed
	p.mu.closed = true
	for c := range p.mu.conns {
		c.Close()
	}
	p.mu.Unlock()
	var err error
	if first {
		err = p.ln.Close()
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) fire(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.fired[f]++
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
}

// track registers c for Close; false if the proxy is closing (c is closed).
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		c.Close()
		return false
	}
	p.mu.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.mu.conns, c)
}

func (p *Proxy) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.ended++
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		i := p.mu.accepted
		p.mu.accepted++
		p.mu.Unlock()
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.serve(c, p.opts.Plan(i))
	}
}

func (p *Proxy) serve(client net.Conn, fault Fault) {
	defer p.wg.Done()
	defer p.end()
	defer p.untrack(client)
	defer client.Close()
	if fault == Silent {
		p.fire(Silent)
		drain(client)
		return
	}
	server, err := net.DialTimeout("tcp", p.opts.Upstream, p.opts.DialTimeout)
	if err != nil {
		return // the client sees a close before the greeting
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	s := &session{p: p, fault: fault, client: client, server: server}
	s.scan.mark = p.opts.After
	done := make(chan struct{})
	go func() { defer close(done); s.serverToClient() }()
	s.clientToServer()
	s.closeBoth()
	<-done
}

// drain reads and drops what c sends until it closes or fails.
func drain(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// session is one proxied connection.
type session struct {
	p              *Proxy
	fault          Fault
	client, server net.Conn
	scan           scanner // client → server; only clientToServer uses it
	cutArmed       atomic.Bool
	stalled        atomic.Bool
	closing        sync.Once
}

var errFaulted = errors.New("faultproxy: connection ended by its fault")

func (s *session) closeBoth() {
	s.closing.Do(func() {
		s.client.Close()
		s.server.Close()
	})
}

// clientToServer forwards the client's bytes, watching for the data and
// its end, until the client closes or the fault ends the session.
func (s *session) clientToServer() {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.client.Read(buf)
		if n > 0 {
			if ferr := s.forward(buf[:n]); ferr != nil {
				if s.stalled.Load() {
					drain(s.client) // until the client gives up
				}
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward writes p to the server, acting on the events the scanner finds.
func (s *session) forward(p []byte) error {
	for len(p) > 0 {
		n, ev := s.scan.feed(p)
		seg := p[:n]
		p = p[n:]
		if ev == evDataEnd && s.fault == CutAfterDot {
			// Armed before the "." leaves, so the reply to it cannot slip
			// through to the client.
			s.cutArmed.Store(true)
		}
		if _, err := s.server.Write(seg); err != nil {
			return err
		}
		if ev != evMark {
			continue
		}
		switch s.fault {
		case StallInData:
			s.stalled.Store(true)
			s.p.fire(StallInData)
			return errFaulted
		case ResetInData:
			if tc, ok := s.client.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // Close sends an RST
			}
			s.p.fire(ResetInData)
			s.closeBoth()
			return errFaulted
		}
	}
	return nil
}

// serverToClient forwards the server's replies, except the reply to the
// final "." on a CutAfterDot connection, and anything after a stall.
func (s *session) serverToClient() {
	defer s.closeBoth()
	buf := make([]byte, 32<<10)
	var reply []byte // the reply to the "." so far, when cut
	for {
		n, err := s.server.Read(buf)
		if n > 0 {
			switch {
			case s.cutArmed.Load():
				reply = append(reply, buf[:n]...)
				if completeReply(reply) {
					s.p.fire(CutAfterDot)
					return
				}
			case s.stalled.Load():
				// The path is frozen: nothing reaches the client.
			default:
				if _, werr := s.client.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// completeReply reports whether b holds a whole SMTP reply: its last line
// ("250 ok" or "250" alone, RFC 5321 §4.2.1) has arrived.
func completeReply(b []byte) bool {
	start := 0
	for i, c := range b {
		if c != '\n' {
			continue
		}
		line := b[start:i]
		start = i + 1
		if len(line) == 4 && line[3] == '\r' || len(line) > 4 && line[3] == ' ' {
			return true
		}
	}
	return false
}
