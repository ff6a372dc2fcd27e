package sink

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
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
	max      int         // 0 = no limit
	implicit *tls.Config // when set, the refusal is written inside TLS
	refusing sync.WaitGroup
	mu       struct {
		sync.Mutex
		open, peak, refused int
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
		if l.max > 0 && l.mu.open >= l.max {
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
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.mu.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
