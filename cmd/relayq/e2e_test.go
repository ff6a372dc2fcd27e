package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/mail"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
)

// testConfig is a config for an in-process relayq that listens on a free
// loopback port and delivers through the smart host at smarthostAddr.
func testConfig(t testing.TB, smarthostAddr string) *config.Config {
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

// startRelayq runs relayq in this process until the test ends.
func startRelayq(t testing.TB, cfg *config.Config) *server.Instance {
	t.Helper()
	in, err := server.Start(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), serverOptions(nil))
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

func startSink(t testing.TB, opts sink.Options) *sink.Server {
	t.Helper()
	s, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// message builds a small RFC 5322 message whose Message-ID carries token.
func message(token, from, to string, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n", from, to, token, token)
	line := strings.Repeat("x", 70) + "\r\n"
	for b.Len() < bodySize {
		b.WriteString(line)
	}
	return b.Bytes()
}

// submit sends one message per token over one SMTP connection and fails the
// test unless every one is answered 250.
func submit(t testing.TB, addr, from, to string, tokens []string, bodySize int) {
	t.Helper()
	c := dialSMTP(t, addr)
	defer c.Close()
	if err := c.Hello("client.test.invalid"); err != nil {
		t.Fatal(err)
	}
	for _, tok := range tokens {
		if err := c.SendMail(from, []string{to}, bytes.NewReader(message(tok, from, to, bodySize))); err != nil {
			t.Fatalf("message %s: %v", tok, err)
		}
	}
	c.Quit()
}

// dialSMTP connects an SMTP client to addr; the caller closes it.
func dialSMTP(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return smtp.NewClient(conn)
}

// messageIDs counts the sink's messages by Message-ID.
func messageIDs(t testing.TB, msgs []sink.Message) map[string]int {
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

func TestEndToEnd500MessagesFrom20ClientsArriveOnce(t *testing.T) {
	dst := startSink(t, sink.Options{})
	in := startRelayq(t, testConfig(t, dst.Addr()))
	const clients, perClient = 20, 25
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var tokens []string
			for i := 0; i < perClient; i++ {
				tokens = append(tokens, fmt.Sprintf("c%d-m%d", c, i))
			}
			submit(t, in.Addrs()[0], "sender@test.invalid", "rcpt@dest.invalid", tokens, 1024)
		}(c)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, clients*perClient); err != nil {
		t.Fatalf("sink got %d of %d messages: %v", dst.Count(), clients*perClient, err)
	}
	ids := messageIDs(t, dst.Messages())
	for c := 0; c < clients; c++ {
		for i := 0; i < perClient; i++ {
			id := fmt.Sprintf("<c%d-m%d@test.invalid>", c, i)
			if ids[id] != 1 {
				t.Errorf("message %s arrived %d times", id, ids[id])
			}
		}
	}
	for _, m := range dst.Messages()[:1] {
		if !bytes.Contains(m.Data, []byte("by relay.test.invalid")) {
			t.Errorf("no Received header of ours in:\n%s", m.Data[:min(len(m.Data), 400)])
		}
	}
	// Every delivered message leaves the queue.
	waitFor(t, 10*time.Second, func() bool { return in.Store().Messages() == 0 }, "queue to empty")
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkRelayThroughput pushes 1 KiB messages from 20 connections through
// relayq (synced queue commit before each 250, delivery through a smart
// host) into a sink, and reports messages/s end to end.
func BenchmarkRelayThroughput(b *testing.B) { benchmarkRelay(b, 1024) }

// BenchmarkRelayThroughput100K is the same with 100 KiB messages.
func BenchmarkRelayThroughput100K(b *testing.B) { benchmarkRelay(b, 100<<10) }

func benchmarkRelay(b *testing.B, size int) {
	dst := startSink(b, sink.Options{Discard: true})
	in := startRelayq(b, testConfig(b, dst.Addr()))
	const conns = 20
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		n := b.N / conns
		if c < b.N%conns {
			n++
		}
		wg.Add(1)
		go func(c, n int) {
			defer wg.Done()
			tokens := make([]string, n)
			for i := range tokens {
				tokens[i] = fmt.Sprintf("b%d-%d", c, i)
			}
			submit(b, in.Addrs()[0], "sender@test.invalid", "rcpt@dest.invalid", tokens, size)
		}(c, n)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := dst.Wait(ctx, b.N); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
