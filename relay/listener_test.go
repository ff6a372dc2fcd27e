package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestSTARTTLSOfferedOnlyWithCertificate(t *testing.T) {
	serverTLS, _ := testTLS(t)
	tests := []struct {
		name string
		tls  *tls.Config
		want bool
	}{
		{"no certificate, no STARTTLS", nil, false},
		{"certificate, STARTTLS", serverTLS, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.TLS = tt.tls
			_, addr := startServer(t, cfg, &memQueue{})
			r := greetRaw(t, dialFrom(t, addr, ""))
			if got := hasExt(r.ehlo(), "STARTTLS"); got != tt.want {
				t.Errorf("STARTTLS offered: %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSTARTTLSThenESMTPSInReceived(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	q := &memQueue{}
	cfg := testConfig()
	cfg.TLS = serverTLS
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "")
	r.startTLS(clientTLS)
	if hasExt(r.ehlo(), "STARTTLS") {
		t.Error("STARTTLS offered again inside TLS")
	}
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: tls\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	if body := q.only(t).body; !bytes.Contains(body, []byte(" with ESMTPS id ")) {
		t.Errorf("Received does not say ESMTPS: %q", body[:min(len(body), 200)])
	}
}

// TestCommandsPipelinedAfterSTARTTLSAreDiscarded: what a client (or a
// man in the middle) sends in the clear after STARTTLS, in the same write,
// is never read as commands or a body inside TLS (RFC 3207 §4.2, §6). Here
// it holds a whole transaction, its body past a DATA line, which relay's
// wrapper holds back from go-smtp; inside TLS the session starts afresh
// and only the message sent there is queued.
func TestCommandsPipelinedAfterSTARTTLSAreDiscarded(t *testing.T) {
	cfg, clientTLS := authConfig(t)
	q := &memQueue{}
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "")
	r.send("STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n" +
		"Subject: injected\r\n\r\nx\r\n.\r\n")
	r.expect(220)
	tc := tls.Client(r.c, clientTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after pipelined plaintext: %v", err)
	}
	r.c, r.tp = tc, textproto.NewConn(tc)
	r.ehlo()
	r.cmd("MAIL FROM:<s@example.org>", 250) // 503 if the injected MAIL had counted
	r.cmd("RCPT TO:<y@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: inside\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	m := q.only(t)
	if m.env.From != "s@example.org" || len(m.env.Recipients) != 1 || !bytes.Contains(m.body, []byte("Subject: inside")) {
		t.Fatalf("queued from %q to %v: %q", m.env.From, m.env.Recipients, m.body)
	}
}

func TestSMTPSListenerSpeaksTLSFromTheFirstByte(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	q := &memQueue{}
	cfg := testConfig()
	cfg.TLS = serverTLS
	cfg.Users = testUsers(t)
	_, addr := startListener(t, cfg, q, ListenerConfig{Mode: ModeSMTPS})

	c, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimeout}, "tcp", addr, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	r := greetRaw(t, c)
	ext := r.ehlo()
	if hasExt(ext, "STARTTLS") || !hasExt(ext, "AUTH") {
		t.Errorf("EHLO inside implicit TLS: %q; want AUTH and no STARTTLS", ext)
	}
	r.cmd("AUTH PLAIN "+b64("\x00app1\x00s3cret"), 235)
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: smtps\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	if body := q.only(t).body; !bytes.Contains(body, []byte(" with ESMTPSA id ")) {
		t.Errorf("Received does not say ESMTPSA: %q", body[:min(len(body), 200)])
	}

	// A plaintext client gets no greeting: the server waits for a
	// ClientHello and gives up on garbage.
	plain := dialFrom(t, addr, "")
	plain.Write([]byte("EHLO plain.test\r\n"))
	line, _ := bufio.NewReader(plain).ReadString('\n')
	if strings.HasPrefix(line, "220") {
		t.Errorf("plaintext client greeted on an smtps listener: %q", line)
	}
}

func TestServeRefusesSMTPSWithoutCertificateAndUnknownModes(t *testing.T) {
	s := New(testConfig(), &memQueue{}, zerolog.Nop())
	defer s.Shutdown(t.Context())
	for _, lc := range []ListenerConfig{{Mode: ModeSMTPS}, {Mode: "lmtp"}} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Serve(l, lc); err == nil {
			t.Errorf("Serve with mode %q and no TLS succeeded", lc.Mode)
		}
		l.Close()
	}
}

// greetingOf dials addr from local and returns the first line the server
// sends, and whether the server closed the connection after it.
func greetingOf(t *testing.T, addr, local string) (string, bool) {
	t.Helper()
	c := dialFrom(t, addr, local)
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no greeting: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = br.ReadByte()
	return line, errors.Is(err, io.EOF)
}

func TestConnectionOverPerSourceCapGets421_4_3_2WhileOthersAreServed(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = 3
	cfg.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	_, addr := startServer(t, cfg, q)

	var open []*rawConn
	for range 3 {
		open = append(open, dialRaw(t, addr, "127.0.0.1"))
	}
	line, closed := greetingOf(t, addr, "127.0.0.1")
	if !strings.HasPrefix(line, "421 4.3.2 ") || !closed {
		t.Fatalf("4th connection from one source: %q (closed %v), want 421 4.3.2 and close", line, closed)
	}
	// Another source is not affected.
	if line, _ := greetingOf(t, addr, "127.0.0.2"); !strings.HasPrefix(line, "220 ") {
		t.Errorf("other source greeted %q", line)
	}
	// The three admitted connections are served as if nothing happened.
	for _, r := range open {
		r.cmd("MAIL FROM:<s@example.org>", 250)
		r.cmd("RCPT TO:<x@example.com>", 250)
		r.cmd("DATA", 354)
		r.send("Subject: served\r\n\r\nx\r\n.\r\n")
		r.expect(250)
	}
	if n := len(q.messages()); n != 3 {
		t.Errorf("%d messages queued, want 3", n)
	}
	// A slot freed is a slot given again.
	open[0].cmd("QUIT", 221)
	waitFor(t, "a freed slot", func() bool {
		line, _ := greetingOf(t, addr, "127.0.0.1")
		return strings.HasPrefix(line, "220 ")
	})
}

func TestConnectionOverTotalCapGets421_4_3_2(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnections = 2
	_, addr := startServer(t, cfg, &memQueue{})
	dialRaw(t, addr, "127.0.0.1")
	dialRaw(t, addr, "127.0.0.2")
	line, closed := greetingOf(t, addr, "127.0.0.3")
	if line != "421 4.3.2 Too many connections, try again later\r\n" || !closed {
		t.Errorf("3rd connection: %q (closed %v)", line, closed)
	}
}

func TestSMTPSRefusalIsSentInsideTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	cfg := testConfig()
	cfg.TLS = serverTLS
	cfg.MaxConnectionsPerSource = 1
	_, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{Mode: ModeSMTPS})
	dial := func() *bufio.Reader {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimeout}, "tcp", addr, clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(testTimeout))
		return bufio.NewReader(c)
	}
	first, _ := dial().ReadString('\n')
	second, _ := dial().ReadString('\n')
	if !strings.HasPrefix(first, "220 ") || !strings.HasPrefix(second, "421 4.3.2 ") {
		t.Errorf("greetings %q, %q; want 220 then 421 4.3.2", first, second)
	}
}

func TestRefusalsAreLoggedOncePerEpisode(t *testing.T) {
	var logs syncBuffer
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = 1
	_, addr := startLogged(t, cfg, &memQueue{}, ListenerConfig{}, zerolog.New(&logs))
	dialRaw(t, addr, "")
	for range 3 {
		greetingOf(t, addr, "")
	}
	if n := strings.Count(logs.String(), "connection refused"); n != 1 {
		t.Errorf("%d refusal log lines for one episode, want 1:\n%s", n, logs.String())
	}
}

func TestMultiLineReplyIsSentInOneWrite(t *testing.T) {
	cfg := testConfig()
	s := New(cfg, &memQueue{}, zerolog.New(zerolog.NewTestWriter(t)))
	l := servePipes(t, s, ListenerConfig{})
	c := l.dial(t, netip.MustParseAddr("127.0.0.1"))
	defer c.Close()
	buf := make([]byte, 64<<10)
	c.in.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := c.Read(buf); err != nil || !bytes.HasPrefix(buf[:n], []byte("220 ")) {
		t.Fatalf("greeting %q, %v", buf[:n], err)
	}
	go c.Write([]byte("EHLO client.test\r\n"))
	// net.Pipe has no buffering: one Read returns one server Write.
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	reply := string(buf[:n])
	lines := strings.Split(strings.TrimSuffix(reply, "\r\n"), "\r\n")
	if len(lines) < 5 || !strings.HasPrefix(lines[len(lines)-1], "250 ") {
		t.Fatalf("first write after EHLO is %q: the EHLO reply was not sent whole", reply)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "250-") {
			t.Errorf("line %q in the middle of the reply", l)
		}
	}
}

func TestIsContinuationLine(t *testing.T) {
	for in, want := range map[string]bool{
		"250-SIZE 100\r\n":      true,
		"250 SIZE 100\r\n":      false,
		"250-a\r\n250-b\r\n":    false, // two lines: not what go-smtp writes; pass through
		"250-SIZE":              false,
		"\x17\x03\x03\x00\x20":  false, // a TLS record
		"25x-oops\r\n":          false,
		"250-bare\rcr\r\n":      false,
		"354 Go ahead\r\n":      false,
		"421-4.3.2 closing\r\n": true,
	} {
		if got := isContinuationLine([]byte(in)); got != want {
			t.Errorf("isContinuationLine(%q) = %v", in, got)
		}
	}
}

func TestIdleConnectionGets421_4_4_2AndClose(t *testing.T) {
	cfg := testConfig()
	cfg.ReadTimeout = 200 * time.Millisecond // 5 minutes by default
	_, addr := startServer(t, cfg, &memQueue{})
	r := dialRaw(t, addr, "")
	if msg := r.expect(421); !strings.HasPrefix(msg, "4.4.2 ") {
		t.Errorf("idle: 421 %s, want 421 4.4.2", msg)
	}
	r.expectClosed()
}

// TestQuitReplyFreesTheSourceSlotBeforeClose: a client that keeps exactly
// max_connections_per_source connections and reconnects as soon as it reads
// the 221 (as smtp-source does) must find its old slot free, so the slot is
// released when the 221 is written, not when the server gets round to
// closing the connection.
func TestQuitReplyFreesTheSourceSlotBeforeClose(t *testing.T) {
	s := New(testConfig(), &memQueue{}, zerolog.Nop())
	defer s.Shutdown(context.Background())
	server, client := net.Pipe()
	defer client.Close()
	go io.Copy(io.Discard, client)
	tc := &trackedConn{Conn: server, s: s, ip: netip.MustParseAddr("127.0.0.9")}
	if s.admit(tc) != admitted {
		t.Fatal("not admitted")
	}
	slots := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.mu.sources[tc.ip]
	}
	if _, err := tc.Write([]byte("250 2.0.0 OK\r\n")); err != nil || slots() != 1 {
		t.Fatalf("after a 250: err %v, %d slots taken, want 1", err, slots())
	}
	if _, err := tc.Write([]byte("221 2.0.0 Bye\r\n")); err != nil {
		t.Fatal(err)
	}
	if n := slots(); n != 0 {
		t.Fatalf("%d slots still taken after the 221, before Close; want 0", n)
	}
	// It still counts in the total until closed: writing the 221 to a
	// client that does not read blocks until WriteTimeout.
	total := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.mu.conns)
	}
	if n := total(); n != 1 {
		t.Fatalf("%d connections in the total after the 221, before Close; want 1", n)
	}
	tc.Close() // releases nothing twice
	if n, all := slots(), total(); n != 0 || all != 0 {
		t.Fatalf("%d slots, %d connections in the total after Close", n, all)
	}
}

// TestClientThatQuitAndClosedNoLongerCountsAgainstItsSource keeps
// max_connections_per_source connections open with STARTTLS and AUTH, as
// a Postfix host using relay as its relayhost does, and replaces them one
// at a time: send, QUIT, close, connect again at once. relay's side of
// each closed connection is held in its teardown (beforeClose) until the
// test ends, so every new connection comes while relay has not finished
// with the old one: it must be greeted, not refused with 421 4.3.2.
func TestClientThatQuitAndClosedNoLongerCountsAgainstItsSource(t *testing.T) {
	const perSource = 3
	cfg, clientTLS := authConfig(t)
	cfg.MaxConnectionsPerSource = perSource
	q := &memQueue{}
	s := New(cfg, q, zerolog.New(zerolog.NewTestWriter(t)))
	held := make(chan struct{})
	tearingDown := make(chan struct{}, 8*perSource)
	s.beforeClose = func() {
		select {
		case tearingDown <- struct{}{}:
		default:
		}
		<-held
	}
	addr := serveTCP(t, s, ListenerConfig{})
	t.Cleanup(func() { close(held) }) // before the Shutdown serveTCP registered

	connect := func() *rawConn {
		c := dialFrom(t, addr, "127.0.0.2")
		r := &rawConn{t: t, c: c, tp: textproto.NewConn(c)}
		t.Cleanup(func() { r.tp.Close() })
		if code, msg := r.reply(); code != 220 {
			t.Fatalf("new connection from the source got %d %s, want the 220 greeting", code, msg)
		}
		r.cmd("EHLO client.test", 250)
		r.startTLS(clientTLS)
		r.cmd("EHLO client.test", 250)
		r.cmd("AUTH PLAIN "+b64(goodPlain), 235)
		return r
	}
	var open []*rawConn
	for range perSource {
		open = append(open, connect())
	}
	// One round per slot: the teardowns held stay within the
	// max_connections_per_source connections of a source that may be
	// leaving at once (leaveSourceLocked).
	const rounds = perSource
	for range rounds {
		r := open[0]
		r.cmd("MAIL FROM:<app@example.org>", 250)
		r.cmd("RCPT TO:<x@example.com>", 250)
		r.cmd("DATA", 354)
		r.send("Subject: one of many\r\n\r\nx\r\n.\r\n")
		r.expect(250)
		r.cmd("QUIT", 221)
		r.tp.Close()
		select {
		case <-tearingDown:
		case <-time.After(testTimeout):
			t.Fatal("relay did not begin to close the connection after QUIT")
		}
		open = append(open[1:], connect())
	}
	if n := len(q.messages()); n != rounds {
		t.Fatalf("%d messages queued, want %d", n, rounds)
	}
}
