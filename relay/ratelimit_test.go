package relay

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// testClock is a clock a test moves by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// rateConfig is testConfig with users app1 and app2 (password s3cret),
// the given limits and clock; 127.0.0.1 may relay by address.
func rateConfig(t *testing.T, limits RateLimits, clock *testClock) Config {
	cfg := testConfig()
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Users = map[string]string{"app1": string(h), "app2": string(h)}
	cfg.Rate = limits
	cfg.Now = clock.Now
	return cfg
}

// rateServer serves cfg with insecure AUTH allowed and logs into a buffer.
func rateServer(t *testing.T, cfg Config) (*Server, string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	s, addr := startLogged(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true}, zerolog.New(logs))
	return s, addr, logs
}

// loginRaw connects from local and authenticates as user, if not "".
func loginRaw(t *testing.T, addr, local, user string) *rawConn {
	t.Helper()
	r := dialRaw(t, addr, local)
	if user != "" {
		r.cmd("AUTH PLAIN "+b64("\x00"+user+"\x00s3cret"), 235)
	}
	return r
}

// sendOne sends one message to rcpt and expects it queued.
func (r *rawConn) sendOne(rcpt string) {
	r.t.Helper()
	r.cmd("MAIL FROM:<app@example.org>", 250)
	r.cmd("RCPT TO:<"+rcpt+">", 250)
	r.cmd("DATA", 354)
	r.cmd("Subject: t\r\n\r\nhello\r\n.", 250)
}

// expectRateLimited checks a 450 4.7.1 reply naming who.
func expectRateLimited(t *testing.T, r *rawConn, line, who string) {
	t.Helper()
	msg := r.cmd(line, 450)
	if want := "4.7.1 Rate limit exceeded for " + who + ", try again later"; msg != want {
		t.Errorf("%s: 450 %s, want 450 %s", line, msg, want)
	}
}

func TestRateLimitUserMessagesRefusesTheNPlusFirstAtMail(t *testing.T) {
	clock := newTestClock()
	srv, addr, logs := rateServer(t, rateConfig(t, RateLimits{MessagesPerUser: 3}, clock))
	app1 := loginRaw(t, addr, "127.0.0.2", "app1")
	for range 3 {
		app1.sendOne("x@example.com")
	}
	expectRateLimited(t, app1, "MAIL FROM:<app@example.org>", "app1")
	expectRateLimited(t, app1, "MAIL FROM:<app@example.org>", "app1")

	// Another user, from the same address, is not affected.
	app2 := loginRaw(t, addr, "127.0.0.2", "app2")
	for range 3 {
		app2.sendOne("y@example.com")
	}
	// Nor is a client that relays by address, unauthenticated.
	loginRaw(t, addr, "127.0.0.1", "").sendOne("z@example.com")

	if n := strings.Count(logs.String(), "rate limit exceeded"); n != 1 {
		t.Errorf("%d warn lines for one episode of two refusals, want 1:\n%s", n, logs)
	}
	st := srv.RateStatus()
	if len(st.Limited) != 1 || st.Limited[0].Key != "app1" || st.Limited[0].Limit != RateUserMessages ||
		st.Limited[0].Refused != 2 || st.Limited[0].PerHour != 3 {
		t.Errorf("status limited = %+v, want app1 user_messages, 2 refused, 3 per hour", st.Limited)
	}
	if st.Refused[RateUserMessages] != 2 {
		t.Errorf("refusals = %v, want 2 user_messages", st.Refused)
	}

	// A third of an hour later one token is back: one message goes
	// through, the next is refused again.
	clock.Add(20 * time.Minute)
	app1.sendOne("x@example.com")
	expectRateLimited(t, app1, "MAIL FROM:<app@example.org>", "app1")
	if !strings.Contains(logs.String(), "rate limit episode over") {
		t.Errorf("no line for the end of the episode:\n%s", logs)
	}
}

func TestRateLimitSourceMessagesCountsEveryClientOfTheAddress(t *testing.T) {
	clock := newTestClock()
	cfg := rateConfig(t, RateLimits{MessagesPerSource: 2}, clock)
	cfg.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	srv, addr, _ := rateServer(t, cfg)
	loginRaw(t, addr, "127.0.0.2", "").sendOne("x@example.com")
	loginRaw(t, addr, "127.0.0.2", "app1").sendOne("x@example.com") // AUTH does not escape it
	expectRateLimited(t, loginRaw(t, addr, "127.0.0.2", ""), "MAIL FROM:<app@example.org>", "127.0.0.2")
	loginRaw(t, addr, "127.0.0.3", "").sendOne("y@example.com")
	if st := srv.RateStatus(); len(st.Limited) != 1 || st.Limited[0].Key != "127.0.0.2" {
		t.Errorf("limited = %+v, want 127.0.0.2", st.Limited)
	}
}

func TestRateLimitRecipientsPerUserAtRcpt(t *testing.T) {
	clock := newTestClock()
	_, addr, _ := rateServer(t, rateConfig(t, RateLimits{RecipientsPerUser: 3}, clock))
	r := loginRaw(t, addr, "127.0.0.2", "app1")
	r.cmd("MAIL FROM:<app@example.org>", 250)
	for _, to := range []string{"a", "b", "c", "a"} { // the repeated one is not counted
		r.cmd("RCPT TO:<"+to+"@example.com>", 250)
	}
	expectRateLimited(t, r, "RCPT TO:<d@example.com>", "app1")
	r.cmd("DATA", 354)
	r.cmd("Subject: t\r\n\r\nhello\r\n.", 250)
	// app2 has recipients of its own.
	loginRaw(t, addr, "127.0.0.2", "app2").sendOne("d@example.com")
}

func TestRateLimitReloadAppliesNewLimits(t *testing.T) {
	clock := newTestClock()
	cfg := rateConfig(t, RateLimits{MessagesPerUser: 1}, clock)
	srv, addr, _ := rateServer(t, cfg)
	r := loginRaw(t, addr, "127.0.0.2", "app1")
	r.sendOne("x@example.com")
	expectRateLimited(t, r, "MAIL FROM:<app@example.org>", "app1")

	p := srv.Policy()
	p.Rate.MessagesPerUser = 3 // the bucket grows; its tokens are what they were
	srv.SetPolicy(p)
	clock.Add(20 * time.Minute) // one token at 3 an hour
	r.sendOne("x@example.com")
	expectRateLimited(t, r, "MAIL FROM:<app@example.org>", "app1")

	p.Rate.MessagesPerUser = 0 // off
	srv.SetPolicy(p)
	r.sendOne("x@example.com")
}

func TestRateLimiterKeysIPv6By64AndEvictsIdleBuckets(t *testing.T) {
	clock := newTestClock()
	l := newRateLimiter(clock.Now, zerolog.Nop())
	src := func(ip string) rateCheck {
		return rateCheck{key: rateKey{limit: RateSourceMessages, src: sourceKey(netip.MustParseAddr(ip))}, perHour: 1}
	}
	if over := l.take(src("2001:db8::1")); over != nil {
		t.Fatal("first message refused")
	}
	over := l.take(src("2001:db8::ffff:2")) // same /64
	if over == nil {
		t.Fatal("a second address of the same /64 was not counted with the first")
	}
	if got := replyRateLimited(over).Text; got != "Rate limit exceeded for 2001:db8::/64, try again later" {
		t.Errorf("reply %q", got)
	}
	if over := l.take(src("2001:db8:0:1::1")); over != nil {
		t.Error("another /64 was refused")
	}
	if over := l.take(src("192.0.2.1"), src("192.0.2.2")); over != nil {
		t.Error("two fresh IPv4 sources refused")
	}
	if n := l.bucketCount(); n != 4 {
		t.Fatalf("%d buckets, want 4", n)
	}
	// An hour later every bucket is full again: the next call drops them
	// all but the one it uses.
	clock.Add(time.Hour)
	l.take(src("192.0.2.9"))
	if n := l.bucketCount(); n != 1 {
		t.Errorf("%d buckets after an idle hour, want 1", n)
	}
}

func (l *rateLimiter) bucketCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.buckets)
}
