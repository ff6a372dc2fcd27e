// Package servertest runs relayq in a test process: a configuration on
// free loopback ports that delivers through a test smart host, an instance
// stopped when the test ends, a sink as the next hop, and SMTP submission
// helpers. The system tests of internal/server and cmd/relayq share it.
//
// Invariants: everything listens on 127.0.0.1 only; every wait is bounded
// (Dial 5 s, WaitFor its timeout); whatever Start or Sink opens is closed
// by t.Cleanup.
package servertest

import (
	"bytes"
	"fmt"
	"net"
	"net/mail"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
)

// Config is a config for an in-process relayq that listens on a free
// loopback port and delivers through the smart host at smarthostAddr.
func Config(t testing.TB, smarthostAddr string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Hostname = "relay.test.invalid"
	cfg.DataDir = filepath.Join(t.TempDir(), "queue")
	cfg.Listeners = []config.Listener{{Address: "127.0.0.1:0", Mode: "relay"}}
	cfg.Admin.Address = "127.0.0.1:0"
	cfg.Delivery.Smarthost.Hosts = []string{smarthostAddr}
	cfg.Delivery.Smarthost.TLS = "none"
	cfg.Retry.MinBackoff = config.Duration(50 * time.Millisecond)
	cfg.Retry.MaxBackoff = config.Duration(200 * time.Millisecond)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Start runs relayq with cfg and opts in this process until the test
// ends.
func Start(t testing.TB, cfg *config.Config, opts server.Options) *server.Instance {
	t.Helper()
	in, err := server.Start(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := in.Stop(); err != nil {
			t.Error(err)
		}
	})
	return in
}

// Sink starts a test next hop, closed when the test ends.
func Sink(t testing.TB, opts sink.Options) *sink.Server {
	t.Helper()
	s, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Message builds a small RFC 5322 message whose Message-ID carries token.
func Message(token, from, to string, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n", from, to, token, token)
	line := strings.Repeat("x", 70) + "\r\n"
	for b.Len() < bodySize {
		b.WriteString(line)
	}
	return b.Bytes()
}

// Submit sends one message per token over one SMTP connection and fails the
// test unless every one is answered 250.
func Submit(t testing.TB, addr, from, to string, tokens []string, bodySize int) {
	t.Helper()
	c := Dial(t, addr)
	defer c.Close()
	if err := c.Hello("client.test.invalid"); err != nil {
		t.Fatal(err)
	}
	for _, tok := range tokens {
		if err := c.SendMail(from, []string{to}, bytes.NewReader(Message(tok, from, to, bodySize))); err != nil {
			t.Fatalf("message %s: %v", tok, err)
		}
	}
	c.Quit()
}

// Dial connects an SMTP client to addr; the caller closes it.
func Dial(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return smtp.NewClient(conn)
}

// MessageIDs counts the sink's messages by Message-ID.
func MessageIDs(t testing.TB, msgs []sink.Message) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for _, m := range msgs {
		parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("unparseable message at the sink: %v", err)
		}
		ids[parsed.Header.Get("Message-ID")]++
	}
	return ids
}

// WaitFor polls cond until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
