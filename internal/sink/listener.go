package sink

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// refuseReply is what a connection beyond MaxConns gets instead of the 220
// greeting: the reply of an Exchange server over its per-source connection
// limit (RFC 5321 §3.1 lets a server answer the connection with 421 and
// close it).
const refuseReply = "421 4.3.2 The maximum number of concurrent server connections has exceeded a per-source limit\r\n"

// refuseTimeout bounds how long writing the refusal to a slow client may take.
const refuseTimeout = 5 * time.Second

// limitListener counts open connections and refuses those beyond max. It
// wraps the TCP listener, below any TLS listener, so that the count covers
// every connection whatever its protocol.
type limitListener struct {
	net.Listener
	implicit *tls.Config // when set, the refusal is written inside TLS
	refusing sync.WaitGroup
	mu       struct {
		sync.Mutex
		max                 int // 0 = no limit
		open, peak, refused int
		// shedding are the sessions told to go (shed) not yet closed;
		// shed counts them all.
		shedding, shed int
	}
}

// Accept returns the next connection within the limit; connections beyond it
// are answered with 421 4.3.2 and closed in the background, never returned.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.mu.max > 0 && l.mu.open >= l.mu.max {
			l.mu.refused++
			l.mu.Unlock()
			l.refusing.Add(1)
			go l.refuse(c)
			continue
		}
		l.mu.open++
		l.mu.peak = max(l.mu.peak, l.mu.open)
		l.mu.Unlock()
		return &countedConn{Conn: c, l: l}, nil
	}
}

func (l *limitListener) refuse(c net.Conn) {
	defer l.refusing.Done()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	if l.implicit != nil {
		// On an implicit-TLS port a plaintext reply would be noise to the
		// client: finish the handshake and refuse inside TLS.
		tc := tls.Server(c, l.implicit)
		if err := tc.Handshake(); err != nil {
			return
		}
		_, _ = tc.Write([]byte(refuseReply))
		_ = tc.Close()
		return
	}
	_, _ = c.Write([]byte(refuseReply))
}

// SetMaxConns changes MaxConns from now on (0: no limit), as a server
// whose per-source limit is lowered: new connections beyond it get 421
// 4.3.2, and so does the next MAIL of each session over it (plaintext
// listeners), whose client is then expected to close.
func (s *Server) SetMaxConns(n int) { s.ln.setMax(n) }

// Shed is how many sessions were refused at MAIL for being over a lowered
// limit (SetMaxConns).
func (s *Server) Shed() int {
	s.ln.mu.Lock()
	defer s.ln.mu.Unlock()
	return s.ln.mu.shed
}

// ResetPeak starts a new peak of Connections from the connections open
// now.
func (s *Server) ResetPeak() { s.ln.resetPeak() }

// errShed is the reply to the MAIL of a session over a lowered limit.
var errShed = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
	Message: "The maximum number of concurrent server connections has exceeded a per-source limit"}

// setMax changes the limit for what comes next: new connections, and the
// next MAIL of a session over it (shed).
func (l *limitListener) setMax(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.max = n
}

// shed reports whether c's session is over the limit (more open than it
// allows, not counting the sessions already told to go), and then counts
// it as going.
func (l *limitListener) shed(c *countedConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.max == 0 || l.mu.open-l.mu.shedding <= l.mu.max || c.shed {
		return false
	}
	c.shed = true
	l.mu.shedding++
	l.mu.shed++
	return true
}

func (l *limitListener) resetPeak() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.peak = l.mu.open
}

func (l *limitListener) counters() (open, peak, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.open, l.mu.peak, l.mu.refused
}

// countedConn gives its slot back when closed, once however often Close is
// called (go-smtp and a TLS wrapper may both close it).
type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
	shed bool // told to go (limitListener.shed); guarded by l.mu
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.mu.open--
		if c.shed {
			c.l.mu.shedding--
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
