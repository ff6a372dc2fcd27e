package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// pipeListener hands the server in-memory connections that claim to come
// from any address: no sockets, no ports, so a fuzz run of thousands of
// sessions cannot exhaust ephemeral ports, and each server Write arrives as
// one client Read (net.Pipe has no buffering), which makes write
// coalescing observable.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }

// dial makes a connection from the address from and returns the client's
// side.
func (l *pipeListener) dial(t testing.TB, from netip.Addr) *pipeClient {
	t.Helper()
	toServer, serverIn := net.Pipe()
	serverOut, fromServer := net.Pipe()
	srv := &pipeConn{in: serverIn, out: serverOut,
		remote: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 40000))}
	select {
	case l.conns <- srv:
	case <-time.After(testTimeout):
		t.Fatal("server did not accept")
	}
	return &pipeClient{out: toServer, in: fromServer}
}

// pipeConn is the server's side: it reads what the client writes and
// writes what the client reads, over two pipes, so that the client can
// close its writing half and still read the replies.
type pipeConn struct {
	in, out net.Conn
	remote  net.Addr
}

func (c *pipeConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *pipeConn) Close() error {
	c.in.Close()
	return c.out.Close()
}
func (c *pipeConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }
func (c *pipeConn) RemoteAddr() net.Addr { return c.remote }

// SetReadDeadline cannot fail, as on a TCP socket whose peer has closed
// its side (a net.Pipe fails it then, and go-smtp would answer with 421
// "Connection error" instead of ending the session at the EOF).
func (c *pipeConn) SetReadDeadline(t time.Time) error {
	c.in.SetReadDeadline(t)
	return nil
}

func (c *pipeConn) SetDeadline(t time.Time) error {
	c.in.SetDeadline(t)
	return c.out.SetDeadline(t)
}
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return c.out.SetWriteDeadline(t) }

// pipeClient is the client's side.
type pipeClient struct {
	out net.Conn // to the server
	in  net.Conn // from the server
}

func (c *pipeClient) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *pipeClient) Write(p []byte) (int, error) { return c.out.Write(p) }

// closeWrite ends the client's input: the server reads EOF.
func (c *pipeClient) closeWrite() { c.out.Close() }

func (c *pipeClient) Close() error {
	c.out.Close()
	return c.in.Close()
}

// readAll reads what the server sends until it closes, or fails the test
// after d.
func (c *pipeClient) readAll(t testing.TB, d time.Duration) []byte {
	t.Helper()
	c.in.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c.in)
	if err != nil {
		t.Fatalf("server did not close the connection: %v (read %q)", err, b)
	}
	return b
}

// servePipes serves s on a pipeListener with lc until the test ends.
func servePipes(t testing.TB, s *Server, lc ListenerConfig) *pipeListener {
	t.Helper()
	l := newPipeListener()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(l, lc)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return l
}
