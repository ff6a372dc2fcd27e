package relay

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"relayq/config"
)

// deliverOne sends one message with the given recipients on r and expects
// 250 to each command.
func deliverOne(r *rawConn, rcpts ...string) {
	r.t.Helper()
	r.cmd("MAIL FROM:<s@example.org>", 250)
	for _, to := range rcpts {
		r.cmd("RCPT TO:<"+to+">", 250)
	}
	r.cmd("DATA", 354)
	r.send("Subject: reload\r\n\r\nx\r\n.\r\n")
	r.expect(250)
}

func TestSetPolicyAppliesToNextTransactionWhileOpenConnectionIsServed(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig() // 127.0.0.1/32 relays
	cfg.MaxRecipients = 3
	s, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "127.0.0.1")

	// A reload in the middle of a transaction: it finishes under the
	// policy it began with.
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<a@example.com>", 250)
	lower := cfg.Policy
	lower.MaxRecipients = 1
	s.SetPolicy(lower)
	r.cmd("RCPT TO:<b@example.com>", 250)
	r.cmd("RCPT TO:<c@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: reload\r\n\r\nx\r\n.\r\n")
	r.expect(250)

	// The next transaction on the same connection has the new limit.
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<a@example.com>", 250)
	if msg := r.cmd("RCPT TO:<b@example.com>", 452); !strings.HasPrefix(msg, "4.5.3 ") {
		t.Errorf("2nd RCPT after the reload: 452 %s, want 452 4.5.3", msg)
	}
	r.cmd("RSET", 250)

	// Allowed networks: 127.0.0.1 may no longer relay, 127.0.0.2 may. The
	// open connection stays up and gets the new answer.
	moved := lower
	moved.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	s.SetPolicy(moved)
	r.cmd("MAIL FROM:<s@example.org>", 250)
	if msg := r.cmd("RCPT TO:<a@example.com>", 550); !strings.HasPrefix(msg, "5.7.1 ") {
		t.Errorf("RCPT from a network no longer allowed: 550 %s, want 550 5.7.1", msg)
	}
	r.cmd("RSET", 250)
	r.cmd("NOOP", 250)
	deliverOne(dialRaw(t, addr, "127.0.0.2"), "a@example.com")

	if got := s.Policy(); got.MaxRecipients != 1 || len(got.AllowedNetworks) != 1 || got.MaxHops != config.DefaultMaxHops {
		t.Errorf("Policy() = %+v", got)
	}
	if n := len(q.messages()); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}

func TestSetPolicyChangesUsersForTheNextAuth(t *testing.T) {
	cfg := testConfig()
	cfg.Users = testUsers(t) // app1 / s3cret
	s, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	before := dialRaw(t, addr, "127.0.0.2") // not an allowed network
	before.cmd("AUTH PLAIN "+b64(goodPlain), 235)

	h, err := bcrypt.GenerateFromPassword([]byte("n3w"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	p.Users = map[string]string{"app2": string(h)}
	s.SetPolicy(p)

	r := dialRaw(t, addr, "127.0.0.2")
	if msg := r.cmd("AUTH PLAIN "+b64(goodPlain), 535); !strings.HasPrefix(msg, "5.7.8 ") {
		t.Errorf("AUTH as a removed user: 535 %s, want 535 5.7.8", msg)
	}
	r.cmd("AUTH PLAIN "+b64("\x00app2\x00n3w"), 235)
	deliverOne(r, "x@example.com")
	// A session that authenticated before the reload stays authenticated.
	deliverOne(before, "x@example.com")

	// No users: AUTH is no longer offered to a new session.
	p.Users = nil
	s.SetPolicy(p)
	if ext := dialRaw(t, addr, "127.0.0.2").ehlo(); hasExt(ext, "AUTH") {
		t.Errorf("EHLO %q offers AUTH without users", ext)
	}
}

func TestSetPolicyConnectionCapAppliesToNextConnection(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnectionsPerSource = 3
	s, addr := startServer(t, cfg, &memQueue{})
	open := []*rawConn{dialRaw(t, addr, "127.0.0.1"), dialRaw(t, addr, "127.0.0.1")}

	p := cfg.Policy
	p.MaxConnectionsPerSource = 1
	s.SetPolicy(p)
	if line, closed := greetingOf(t, addr, "127.0.0.1"); !strings.HasPrefix(line, "421 4.3.2 ") || !closed {
		t.Fatalf("connection over the lowered cap: %q (closed %v), want 421 4.3.2", line, closed)
	}
	for _, r := range open { // over the new cap, but not closed for it
		deliverOne(r, "x@example.com")
	}

	p.MaxConnectionsPerSource = 5
	s.SetPolicy(p)
	if line, _ := greetingOf(t, addr, "127.0.0.1"); !strings.HasPrefix(line, "220 ") {
		t.Errorf("connection under the raised cap greeted %q", line)
	}
}

func TestSetPolicyMaxHopsAppliesToTheNextMessage(t *testing.T) {
	cfg := testConfig()
	cfg.MaxHops = 5
	s, addr := startServer(t, cfg, &memQueue{})
	r := dialRaw(t, addr, "127.0.0.1")
	hops := strings.Repeat("Received: from a by b; Fri, 2 Jan 2026 15:04:05 +0000\r\n", 3)
	send := func(want int) {
		r.cmd("MAIL FROM:<s@example.org>", 250)
		r.cmd("RCPT TO:<x@example.com>", 250)
		r.cmd("DATA", 354)
		r.send(hops + "Subject: hops\r\n\r\nx\r\n.\r\n")
		r.expect(want)
	}
	send(250)
	p := cfg.Policy
	p.MaxHops = 2
	s.SetPolicy(p)
	send(554)
}
