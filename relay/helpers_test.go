package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/internal/sink"
	"relayq/queued"
)

// testTimeout bounds every network wait in these tests.
const testTimeout = 10 * time.Second

// stored is one message a fake queue committed.
type stored struct {
	id   queued.ID
	env  queued.Envelope
	body []byte
}

// memQueue is a fake Queue that consumes the body into memory and records
// what it got. beforeCommit, when set, runs after the body is read and may
// fail the Put (a storage failure) or block it (a slow fsync).
type memQueue struct {
	beforeCommit func(ctx context.Context) error

	mu   sync.Mutex
	next int
	msgs []stored
}

var _ Queue = (*memQueue)(nil)

func (q *memQueue) NewID() queued.ID {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	return queued.ID(fmt.Sprintf("%024x", q.next))
}

func (q *memQueue) Put(ctx context.Context, id queued.ID, env *queued.Envelope, body io.Reader) error {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, body)
	if err != nil {
		return fmt.Errorf("put %s: read body: %w", id, err)
	}
	if q.beforeCommit != nil {
		if err := q.beforeCommit(ctx); err != nil {
			return fmt.Errorf("put %s: %w", id, err)
		}
	}
	env.Size = n
	env.Received = time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, stored{id: id, env: *env, body: buf.Bytes()})
	return nil
}

func (q *memQueue) messages() []stored {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]stored(nil), q.msgs...)
}

// only returns the one message the queue holds, failing otherwise.
func (q *memQueue) only(t *testing.T) stored {
	t.Helper()
	msgs := q.messages()
	if len(msgs) != 1 {
		t.Fatalf("queue holds %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

// testConfig is a config for a server on 127.0.0.1 that lets 127.0.0.1
// relay, with a fixed clock.
func testConfig() Config {
	return Config{
		Policy: Policy{
			AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
			MaxRecipients:   10,
		},
		Hostname:       "relay.test",
		MaxMessageSize: 1 << 20,
		ReadTimeout:    testTimeout,
		WriteTimeout:   testTimeout,
		Now:            func() time.Time { return time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC) },
	}
}

// startServer serves cfg on 127.0.0.1 and returns the server and its address.
// The server is shut down when the test ends.
func startServer(t *testing.T, cfg Config, q Queue) (*Server, string) {
	t.Helper()
	return startListener(t, cfg, q, ListenerConfig{})
}

// startListener is startServer with one listener of the given config.
func startListener(t *testing.T, cfg Config, q Queue, lc ListenerConfig) (*Server, string) {
	t.Helper()
	return startLogged(t, cfg, q, lc, zerolog.New(zerolog.NewTestWriter(t)))
}

// startLogged is startListener with a logger of the test's choice.
func startLogged(t *testing.T, cfg Config, q Queue, lc ListenerConfig, log zerolog.Logger) (*Server, string) {
	t.Helper()
	s := New(cfg, q, log)
	return s, serveTCP(t, s, lc)
}

// serveTCP serves s on 127.0.0.1 with one listener of config lc and
// returns its address; s is shut down when the test ends.
func serveTCP(t *testing.T, s *Server, lc ListenerConfig) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l, lc) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return l.Addr().String()
}

// dialFrom connects to addr from the local address local ("" for any).
func dialFrom(t *testing.T, addr, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: testTimeout}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	return c
}

// newClient is a go-smtp client connected to addr from local.
func newClient(t *testing.T, addr, local string) *smtp.Client {
	t.Helper()
	c := smtp.NewClient(dialFrom(t, addr, local))
	c.CommandTimeout = testTimeout
	c.SubmissionTimeout = testTimeout
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

// rawConn is a hand-driven SMTP dialogue, for what go-smtp's client would
// not send (bare LF, bare CR, odd parameters).
type rawConn struct {
	t  *testing.T
	c  net.Conn
	tp *textproto.Conn
}

func dialRaw(t *testing.T, addr, local string) *rawConn {
	t.Helper()
	r := greetRaw(t, dialFrom(t, addr, local))
	r.cmd("EHLO client.test", 250)
	return r
}

// greetRaw wraps c and reads the 220 greeting.
func greetRaw(t *testing.T, c net.Conn) *rawConn {
	t.Helper()
	r := &rawConn{t: t, c: c, tp: textproto.NewConn(c)}
	t.Cleanup(func() { r.tp.Close() })
	r.expect(220)
	return r
}

// ehlo sends EHLO and returns the reply's lines after the greeting line.
func (r *rawConn) ehlo() []string {
	r.t.Helper()
	msg := r.cmd("EHLO client.test", 250)
	lines := strings.Split(msg, "\n")
	return lines[1:]
}

// hasExt reports whether an EHLO reply's lines advertise ext (its keyword).
func hasExt(lines []string, ext string) bool {
	for _, l := range lines {
		if kw, _, _ := strings.Cut(l, " "); strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// startTLS runs STARTTLS and the handshake; the dialogue goes on in TLS
// and, as after any STARTTLS, must begin with EHLO again.
func (r *rawConn) startTLS(cfg *tls.Config) {
	r.t.Helper()
	r.cmd("STARTTLS", 220)
	tc := tls.Client(r.c, cfg)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.c, r.tp = tc, textproto.NewConn(tc)
}

// testTLS returns a server TLS config for "relay.test" and 127.0.0.1 and
// a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	server, pool, err := sink.SelfSigned("relay.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return server, &tls.Config{RootCAs: pool, ServerName: "relay.test", MinVersion: tls.VersionTLS12}
}

// b64 is base64 for SASL responses.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// reply reads one reply and returns its code and text (with the enhanced
// code, "5.7.1 Relaying denied").
func (r *rawConn) reply() (int, string) {
	r.t.Helper()
	code, msg, err := r.tp.ReadResponse(0)
	if err != nil {
		r.t.Fatalf("reading reply: %v", err)
	}
	return code, msg
}

func (r *rawConn) expect(want int) string {
	r.t.Helper()
	code, msg := r.reply()
	if code != want {
		r.t.Fatalf("got %d %s, want %d", code, msg, want)
	}
	return msg
}

// cmd sends a command line and checks the reply code.
func (r *rawConn) cmd(line string, want int) string {
	r.t.Helper()
	if err := r.tp.PrintfLine("%s", line); err != nil {
		r.t.Fatal(err)
	}
	return r.expect(want)
}

// expectClosed fails unless the server closes the connection (an EOF, or
// with TLS an unexpected EOF) before a short deadline.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := r.tp.ReadLine()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("connection not closed: read %q, %v", line, err)
	}
}

// send writes raw bytes.
func (r *rawConn) send(raw string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, raw); err != nil {
		r.t.Fatal(err)
	}
}

// smtpErr asserts err is an *smtp.SMTPError with the given codes.
func smtpErr(t *testing.T, err error, code int, enhanced smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got error %v (%T), want SMTP %d %v", err, err, code, enhanced)
	}
	if se.Code != code || se.EnhancedCode != enhanced {
		t.Fatalf("got %d %v %q, want %d %v", se.Code, se.EnhancedCode, se.Message, code, enhanced)
	}
	return se
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// logLines parses the JSON lines of a log.
func logLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}
