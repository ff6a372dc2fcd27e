//go:build linux

package relay

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestHalfClosedConnectionsDoNotLiftTheSourceCap: a client that pipelines
// a whole transaction and shuts down its write side leaves relay busy with
// it (here a queue that takes its time to commit, as a loaded disk does)
// while the socket already shows the client's FIN. Such connections stop
// counting against their source only up to max_connections_per_source of
// them, so one address holds at most twice its cap, not every connection
// the total cap allows.
func TestHalfClosedConnectionsDoNotLiftTheSourceCap(t *testing.T) {
	const perSource = 2
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = perSource
	cfg.AllowedNetworks = append(cfg.AllowedNetworks, netip.MustParsePrefix("127.0.0.3/32"))
	entered, held := make(chan struct{}, 8*perSource), make(chan struct{})
	q := &memQueue{beforeCommit: func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-held:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	s := New(cfg, q, zerolog.Nop())
	addr := serveTCP(t, s, ListenerConfig{})
	t.Cleanup(func() { close(held) }) // before the Shutdown serveTCP registered
	const txn = "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n" +
		"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\nQUIT\r\n"
	admitted := 0
	for range 4*perSource + 2 {
		c := dialFrom(t, addr, "127.0.0.3")
		t.Cleanup(func() { c.Close() })
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("greeting: %v", err)
		}
		if strings.HasPrefix(line, "421 4.3.2") {
			break
		}
		if !strings.HasPrefix(line, "220 ") {
			t.Fatalf("got %q, want a 220 greeting or 421 4.3.2", line)
		}
		admitted++
		if _, err := io.WriteString(c, txn); err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		if err := tc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-time.After(testTimeout):
			t.Fatal("the message never reached the queue")
		}
		waitFinAcked(t, tc)
	}
	if admitted != 2*perSource {
		t.Fatalf("%d connections from one address that closed their side admitted while relay was busy with them, want %d (twice max_connections_per_source)",
			admitted, 2*perSource)
	}
}

// waitFinAcked waits until c's FIN has been acknowledged (FIN_WAIT2): the
// server's socket shows it, whatever its process has read.
func waitFinAcked(t *testing.T, c *net.TCPConn) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for {
		var state uint8
		_ = raw.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), syscall.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		})
		if state == unix.BPF_TCP_FIN_WAIT2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("FIN not acknowledged (state %d)", state)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPeerClosedSeesTheFIN: the TCP state probe reports a connection
// whose client has shut down its side, and only that, over IPv4 and IPv6
// loopback alike, whatever relay has left unread on it.
func TestPeerClosedSeesTheFIN(t *testing.T) {
	for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", network)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		defer l.Close()
		client, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		if _, err := io.WriteString(client, "QUIT\r\n"); err != nil {
			t.Fatal(err)
		}
		if peerClosed(server) {
			t.Fatalf("%s: open connection reported closed", network)
		}
		if err := client.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		waitFinAcked(t, client.(*net.TCPConn))
		if !peerClosed(server) {
			t.Fatalf("%s: connection whose client sent its FIN not reported closed", network)
		}
	}
}

// TestSourceAtItsCapIsProbedAtMostOncePerInterval: a source that keeps its
// cap open and keeps connecting costs relay's accept loop one getsockopt
// per connection of the source per probe round; after a round that found
// none closed, the next comes only after probeInterval, however fast the
// source connects.
func TestSourceAtItsCapIsProbedAtMostOncePerInterval(t *testing.T) {
	const perSource = 3
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = perSource
	s := New(cfg, &memQueue{}, zerolog.Nop())
	defer s.Shutdown(context.Background())
	src := netip.MustParseAddr("127.0.0.6")
	admitLoopback(t, s, src, perSource)
	const attempts = 200
	start := time.Now()
	for range attempts {
		if a := s.admit(&trackedConn{s: s, ip: src}); a != overSource {
			t.Fatalf("admission %d over the cap, want overSource", a)
		}
	}
	elapsed := time.Since(start)
	limit := 1 + int64(elapsed/probeInterval) + 1
	if n := s.probeRounds.Load(); n > limit {
		t.Fatalf("%d probe rounds for %d attempts in %v, want at most %d (one per %v)", n, attempts, elapsed, limit, probeInterval)
	}
}

// BenchmarkAdmitOverSourceCap is a connection from a source holding its
// cap of 50 open (none closed), with 950 other connections open: what
// each connection of a source that keeps connecting costs the accept loop.
func BenchmarkAdmitOverSourceCap(b *testing.B) {
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = 50
	cfg.MaxConnections = 1000
	s := New(cfg, &memQueue{}, zerolog.Nop())
	src := netip.MustParseAddr("127.0.0.5")
	admitLoopback(b, s, src, 50)
	for i := range 900 {
		p, q := net.Pipe()
		defer p.Close()
		defer q.Close()
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if s.admit(&trackedConn{Conn: p, s: s, ip: ip}) != admitted {
			b.Fatal("not admitted")
		}
	}
	over := &trackedConn{s: s, ip: src}
	for b.Loop() {
		if s.admit(over) != overSource {
			b.Fatal("admitted")
		}
	}
}

// admitLoopback admits n server sides of loopback TCP connections to s as
// connections from src; they are closed when the test ends.
func admitLoopback(tb testing.TB, s *Server, src netip.Addr, n int) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	for range n {
		c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		sc, err := l.Accept()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { sc.Close() })
		if s.admit(&trackedConn{Conn: sc, s: s, ip: src}) != admitted {
			tb.Fatal("not admitted within the cap")
		}
	}
}
