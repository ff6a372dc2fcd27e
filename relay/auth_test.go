package relay

import (
	"bytes"
	"crypto/tls"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"relayq/internal/testlog"
)

// testUsers is one account, app1 / s3cret, hashed at the lowest bcrypt
// cost so tests stay fast.
func testUsers(t testing.TB) map[string]string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"app1": string(h)}
}

// syncBuffer is the test's view of the log.
type syncBuffer = testlog.Buffer

// authConfig lets only 127.0.0.1 relay by address, has app1 and a
// certificate; it returns the client TLS config that trusts it.
func authConfig(t *testing.T) (Config, *tls.Config) {
	cfg := testConfig()
	cfg.Users = testUsers(t)
	var client *tls.Config
	cfg.TLS, client = testTLS(t)
	return cfg, client
}

const goodPlain = "\x00app1\x00s3cret"

func TestAuthNotOfferedAndRefusedInPlaintext(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, first(authConfig(t)), q)
	r := greetRaw(t, dialFrom(t, addr, "127.0.0.2"))
	if ext := r.ehlo(); hasExt(ext, "AUTH") || !hasExt(ext, "STARTTLS") {
		t.Errorf("plaintext EHLO %q: want STARTTLS and no AUTH", ext)
	}
	if msg := r.cmd("AUTH PLAIN "+b64(goodPlain), 523); !strings.HasPrefix(msg, "5.7.10 ") {
		t.Errorf("AUTH in plaintext: 523 %s, want 523 5.7.10", msg)
	}
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 550) // still not authenticated
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages queued", n)
	}
}

func TestAllowInsecureAuthOffersAuthInPlaintext(t *testing.T) {
	_, addr := startListener(t, first(authConfig(t)), &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	r := greetRaw(t, dialFrom(t, addr, "127.0.0.2"))
	if ext := r.ehlo(); !hasExt(ext, "AUTH") {
		t.Errorf("EHLO %q: want AUTH", ext)
	}
	r.cmd("AUTH PLAIN "+b64(goodPlain), 235)
}

func TestAuthOverSTARTTLSLetsAnyAddressRelay(t *testing.T) {
	q := &memQueue{}
	cfg, clientTLS := authConfig(t)
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "127.0.0.2") // not an allowed network
	r.startTLS(clientTLS)
	ext := r.ehlo()
	if !hasExt(ext, "AUTH") || !strings.Contains(strings.Join(ext, "\n"), "AUTH PLAIN LOGIN") {
		t.Errorf("EHLO in TLS %q: want AUTH PLAIN LOGIN", ext)
	}
	if msg := r.cmd("AUTH PLAIN "+b64(goodPlain), 235); !strings.HasPrefix(msg, "2.") {
		t.Errorf("AUTH: 235 %s", msg)
	}
	r.cmd("AUTH PLAIN "+b64(goodPlain), 503) // once per session
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: authed\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	if body := q.only(t).body; !bytes.Contains(body, []byte(" with ESMTPSA id ")) {
		t.Errorf("Received does not say ESMTPSA: %q", body[:min(len(body), 200)])
	}
}

func TestAuthMechanisms(t *testing.T) {
	tests := []struct {
		name  string
		steps [][2]string // line to send, reply code (and enhanced code prefix) expected
	}{
		{"PLAIN with initial response", [][2]string{{"AUTH PLAIN " + b64(goodPlain), "235 2.0.0"}}},
		{"PLAIN without initial response", [][2]string{{"AUTH PLAIN", "334"}, {b64(goodPlain), "235 2.0.0"}}},
		{"LOGIN", [][2]string{{"AUTH LOGIN", "334 " + b64("Username:")}, {b64("app1"), "334 " + b64("Password:")}, {b64("s3cret"), "235 2.0.0"}}},
		{"LOGIN with initial response", [][2]string{{"AUTH LOGIN " + b64("app1"), "334 " + b64("Password:")}, {b64("s3cret"), "235 2.0.0"}}},
		{"lower-case mechanism", [][2]string{{"AUTH plain " + b64(goodPlain), "235 2.0.0"}}},
		{"wrong password", [][2]string{{"AUTH PLAIN " + b64("\x00app1\x00wrong"), "535 5.7.8"}}},
		{"unknown user", [][2]string{{"AUTH PLAIN " + b64("\x00nobody\x00s3cret"), "535 5.7.8"}}},
		{"user name is case-sensitive", [][2]string{{"AUTH PLAIN " + b64("\x00APP1\x00s3cret"), "535 5.7.8"}}},
		{"foreign authorization identity", [][2]string{{"AUTH PLAIN " + b64("boss\x00app1\x00s3cret"), "535 5.7.8"}}},
		{"own authorization identity", [][2]string{{"AUTH PLAIN " + b64("app1\x00app1\x00s3cret"), "235 2.0.0"}}},
		{"malformed PLAIN", [][2]string{{"AUTH PLAIN " + b64("app1:s3cret"), "501 5.5.2"}}},
		{"bad base64", [][2]string{{"AUTH PLAIN !!!", "454 4.7.0"}}},
		{"cancelled", [][2]string{{"AUTH LOGIN", "334"}, {"*", "501"}}},
		{"unknown mechanism", [][2]string{{"AUTH CRAM-MD5", "504 5.5.4"}}},
		{"password with a NUL", [][2]string{{"AUTH PLAIN " + b64("\x00app1\x00s3\x00cret"), "501 5.5.2"}}},
	}
	_, addr := startListener(t, first(authConfig(t)), &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, addr, "127.0.0.3")
			for _, st := range tt.steps {
				if err := r.tp.PrintfLine("%s", st[0]); err != nil {
					t.Fatal(err)
				}
				code, msg := r.reply()
				got := strings.TrimSpace(strconv.Itoa(code) + " " + msg)
				if !strings.HasPrefix(got, st[1]) {
					t.Fatalf("after %q: got %q, want %q…", st[0], got, st[1])
				}
			}
		})
	}
}

func TestThirdAuthFailureGets421AndClose(t *testing.T) {
	_, addr := startListener(t, first(authConfig(t)), &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	r := dialRaw(t, addr, "127.0.0.4")
	bad := "AUTH PLAIN " + b64("\x00app1\x00nope")
	r.cmd(bad, 535)
	r.cmd(bad, 535)
	if msg := r.cmd(bad, 421); !strings.HasPrefix(msg, "4.7.0 ") {
		t.Errorf("third failure: 421 %s, want 421 4.7.0", msg)
	}
	r.expectClosed()
}

func TestThirdAuthFailureClosesInsideTLS(t *testing.T) {
	cfg, clientTLS := authConfig(t)
	_, addr := startServer(t, cfg, &memQueue{})
	r := dialRaw(t, addr, "127.0.0.4")
	r.startTLS(clientTLS)
	r.ehlo()
	bad := "AUTH PLAIN " + b64("\x00app1\x00nope")
	r.cmd(bad, 535)
	r.cmd(bad, 535)
	r.cmd(bad, 421)
	r.expectClosed()
}

func TestAuthFailuresPerSourceAreRateLimited(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC).UnixNano())
	cfg, _ := authConfig(t)
	cfg.AuthFailuresPerSource = 2
	cfg.AuthFailureWindow = time.Minute
	cfg.Now = func() time.Time { return time.Unix(0, now.Load()) }
	_, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true})

	r := dialRaw(t, addr, "127.0.0.5")
	r.cmd("AUTH PLAIN "+b64("\x00app1\x00nope"), 535)
	r.cmd("AUTH PLAIN "+b64("\x00app1\x00nope"), 535)
	// A new connection from the same source waits, even with the right
	// password, without a bcrypt comparison.
	r2 := dialRaw(t, addr, "127.0.0.5")
	if msg := r2.cmd("AUTH PLAIN "+b64(goodPlain), 454); !strings.HasPrefix(msg, "4.7.0 ") {
		t.Errorf("limited source: 454 %s, want 454 4.7.0", msg)
	}
	// Other sources are not affected.
	dialRaw(t, addr, "127.0.0.6").cmd("AUTH PLAIN "+b64(goodPlain), 235)
	// Once the failures leave the window, the source may try again.
	now.Add(int64(time.Minute + time.Second))
	r2.cmd("AUTH PLAIN "+b64(goodPlain), 235)
}

func TestFailureLimiterKeysIPv6ByPrefix(t *testing.T) {
	l := newFailureLimiter(1, time.Minute, time.Now)
	l.record(netip.MustParseAddr("2001:db8:1:2::1"))
	if !l.limited(netip.MustParseAddr("2001:db8:1:2::ffff")) {
		t.Error("another address in the same /64 is not limited")
	}
	if l.limited(netip.MustParseAddr("2001:db8:1:3::1")) {
		t.Error("another /64 is limited")
	}
	if l.limited(netip.MustParseAddr("192.0.2.1")) || !l.limited(netip.MustParseAddr("2001:db8:1:2::1")) {
		t.Error("wrong sources limited")
	}
}

func TestFailureLimiterForgetsOldSources(t *testing.T) {
	var now time.Time
	l := newFailureLimiter(3, time.Minute, func() time.Time { return now })
	now = time.Unix(1000, 0)
	for i := range 2000 {
		l.record(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	now = now.Add(2 * time.Minute)
	l.record(netip.MustParseAddr("192.0.2.1"))
	for i := range 2000 {
		l.record(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	l.mu.Lock()
	n := len(l.mu.fails)
	l.mu.Unlock()
	if n > 2001 {
		t.Errorf("%d sources remembered, want the 2001 within the window", n)
	}
}

func TestSubmissionRequiresAuthBeforeMail(t *testing.T) {
	q := &memQueue{}
	_, addr := startListener(t, first(authConfig(t)), q, ListenerConfig{Mode: ModeSubmission, AllowInsecureAuth: true})
	r := dialRaw(t, addr, "127.0.0.1") // an allowed network: no exception on submission
	if msg := r.cmd("MAIL FROM:<s@example.org>", 530); msg != "5.7.0 Authentication required" {
		t.Errorf("MAIL before AUTH: 530 %s", msg)
	}
	r.cmd("AUTH PLAIN "+b64(goodPlain), 235)
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: submitted\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	q.only(t)
}

func TestAuthDuringTransactionGets503(t *testing.T) {
	_, addr := startListener(t, first(authConfig(t)), &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("AUTH PLAIN "+b64(goodPlain), 503)
	r.cmd("RSET", 250)
	r.cmd("AUTH PLAIN "+b64(goodPlain), 235)
}

func TestAuthWithoutUsersIsNotOffered(t *testing.T) {
	cfg := testConfig()
	_, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	r := greetRaw(t, dialFrom(t, addr, ""))
	if hasExt(r.ehlo(), "AUTH") {
		t.Error("AUTH offered without users")
	}
	if msg := r.cmd("AUTH PLAIN "+b64(goodPlain), 504); !strings.HasPrefix(msg, "5.5.4 ") {
		t.Errorf("AUTH without users: 504 %s", msg)
	}
}

func TestUnknownUserIsComparedAgainstADummyHash(t *testing.T) {
	users := testUsers(t)
	a := newAuthenticator(users)
	if cost, err := bcrypt.Cost(a.dummy); err != nil || cost != bcrypt.MinCost {
		t.Fatalf("dummy hash cost %d, %v; want the users' cost %d", cost, err, bcrypt.MinCost)
	}
	if ok, err := a.check(t.Context(), "nobody", "s3cret"); ok || err != nil {
		t.Errorf("unknown user: %v, %v", ok, err)
	}
	if ok, err := a.check(t.Context(), "app1", "s3cret"); !ok || err != nil {
		t.Errorf("known user: %v, %v", ok, err)
	}
	if len(newAuthenticator(nil).dummy) != 0 {
		t.Error("a dummy hash is made without users")
	}
}

func first[A, B any](a A, _ B) A { return a }
