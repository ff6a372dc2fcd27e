package smarthost

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/config"
	"relayq/internal/sink"
	"relayq/internal/smtptest"
	"relayq/queue"
)

// smarthostRouter routes by a config whose smart host is hosts (TLS none),
// with the given routes; the system resolver is never asked (addresses
// only).
func smarthostRouter(hosts []string, routes ...config.Route) *ConfigRouter {
	d := config.Default().Delivery
	d.Smarthost.Hosts = hosts
	d.Smarthost.TLS = config.TLSNone
	d.Routes = routes
	r := NewConfigRouter(d, nil)
	r.Timeout = 5 * time.Second
	return r
}

// testClock is the real clock plus an offset a test can move forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// recordingDialer is a net.Dialer that records every address dialled and
// counts the connections it opened that are still open.
type recordingDialer struct {
	net.Dialer
	mu struct {
		sync.Mutex
		dialed     []string
		live, peak int
	}
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.mu.dialed = append(d.mu.dialed, addr)
	d.mu.Unlock()
	c, err := d.Dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.mu.live++
	d.mu.peak = max(d.mu.peak, d.mu.live)
	d.mu.Unlock()
	return &liveConn{Conn: c, d: d}, nil
}

// dialedSince returns the addresses dialled after the first n dials.
func (d *recordingDialer) dialedSince(n int) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.mu.dialed[min(n, len(d.mu.dialed)):])
}

func (d *recordingDialer) dials() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.mu.dialed)
}

// resetPeak starts a new peak measurement from the connections open now.
func (d *recordingDialer) resetPeak() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.peak = d.mu.live
}

func (d *recordingDialer) peak() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.peak
}

type liveConn struct {
	net.Conn
	d    *recordingDialer
	once sync.Once
}

func (c *liveConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		c.d.mu.live--
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}

func TestRouteForSubdomainsWinsOverTheSmarthost(t *testing.T) {
	upstream, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lan, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Close(); lan.Close() })
	router := smarthostRouter([]string{upstream.Addr()}, config.Route{
		Domains: []string{"*.lan.example"}, Via: config.ViaSmarthost, Hosts: []string{lan.Addr()}, TLS: config.TLSNone,
	})
	h := startHarness(t, nil, router, nil)
	h.put("a@src.invalid", "printer@floor2.lan.example")
	h.put("a@src.invalid", "someone@elsewhere.example")
	got := waitCount(t, lan, 1, 10*time.Second)
	if got[0].To[0] != "printer@floor2.lan.example" {
		t.Errorf("the LAN host got mail for %v", got[0].To)
	}
	got = waitCount(t, upstream, 1, 10*time.Second)
	if got[0].To[0] != "someone@elsewhere.example" {
		t.Errorf("the smart host got mail for %v", got[0].To)
	}
	if lan.Count() != 1 || upstream.Count() != 1 {
		t.Errorf("LAN host has %d messages, smart host %d; want 1 each", lan.Count(), upstream.Count())
	}
}

func TestConfigChangeAppliesToMailAlreadyQueued(t *testing.T) {
	// The smart host first configured takes nothing (no one listens).
	deadAddr := smtptest.ClosedAddr(t)
	good, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { good.Close() })
	router := smarthostRouter([]string{deadAddr})
	h := startHarness(t, nil, router, nil)
	id := h.put("a@src.invalid", "b@dst.invalid")
	if r := h.waitAttempts(id, 1).Recipients[0]; r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.4.1") {
		t.Fatalf("through the dead smart host: %s with %q, want pending with 451 4.4.1", r.State, r.LastReply)
	}
	// Reload: the queued message follows the new smart host.
	d := config.Default().Delivery
	d.Smarthost.Hosts = []string{good.Addr()}
	d.Smarthost.TLS = config.TLSNone
	router.Set(d)
	waitCount(t, good, 1, 10*time.Second)
	h.waitGone(id)
}

func TestSmarthostFailoverAndCoolDown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(addr string) (*sink.Server, error) // the first host as it fails; nil: nothing listens
	}{
		{name: "connection refused"},
		{name: "421 at MAIL", first: func(addr string) (*sink.Server, error) {
			return sink.Start(sink.Options{Addr: addr, OnMail: func(string) error {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "shutting down"}
			}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, sinks := startSinks(t, []string{"", "127.0.0.3"}, nil)
			first, second := fmt.Sprintf("127.0.0.2:%d", port), sinks[1]
			var failing *sink.Server
			if tc.first != nil {
				var err error
				if failing, err = tc.first(first); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { failing.Close() })
			}
			clock := &testClock{}
			dialer := &recordingDialer{}
			h := startHarness(t, nil, smarthostRouter([]string{first, second.Addr()}), func(w *Worker) {
				w.Now, w.Dialer = clock.Now, dialer
				w.CoolDown, w.MaxCoolDown = time.Hour, 4*time.Hour
			})

			h.put("a@src.invalid", "one@dst.invalid")
			waitCount(t, second, 1, 10*time.Second)
			if d := dialer.dialedSince(0); len(d) < 2 || d[0] != first {
				t.Fatalf("dialled %v: the first smart host should have been tried first", d)
			}
			hs := h.worker.Hosts()
			if len(hs) != 1 || hs[0].Addr != first || !hs[0].Until.After(clock.Now()) {
				t.Fatalf("circuit breaker %+v: want %s cooling down", hs, first)
			}

			// While it cools down, the first host is not even tried.
			if failing != nil {
				failing.Close()
			}
			back, err := sink.Start(sink.Options{Addr: first})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { back.Close() })
			n := dialer.dials()
			two := h.put("a@src.invalid", "two@dst.invalid")
			waitCount(t, second, 2, 10*time.Second)
			h.waitGone(two)
			h.waitIdle() // its connection is back in the pool, idle since before the clock moves
			if d := dialer.dialedSince(n); slices.Contains(d, first) {
				t.Fatalf("dialled %v during the first host's cool-down", d)
			}

			// After the cool-down, the first host is used again (the
			// idle connection to the second timed out meanwhile).
			clock.Advance(2 * time.Hour)
			three := h.put("a@src.invalid", "three@dst.invalid")
			got := waitCount(t, back, 1, 10*time.Second)
			h.waitGone(three)
			if got[0].To[0] != "three@dst.invalid" {
				t.Errorf("the first host got %v after its cool-down", got[0].To)
			}
			if hs := h.worker.Hosts(); len(hs) != 0 {
				t.Errorf("circuit breaker after a success: %+v, want closed", hs)
			}
		})
	}
}

func TestSmarthostAllHostsDownDefers441(t *testing.T) {
	port, _ := startSinks(t, []string{"", ""}, nil)
	hosts := []string{fmt.Sprintf("127.0.0.2:%d", port), fmt.Sprintf("127.0.0.3:%d", port)}
	dialer := &recordingDialer{}
	h := startHarness(t, nil, smarthostRouter(hosts), func(w *Worker) {
		w.Dialer, w.CoolDown = dialer, time.Hour
	})
	id := h.put("a@src.invalid", "b@dst.invalid")
	// The first attempt tries both hosts and defers with 4.4.1.
	m := h.waitAttempts(id, 1)
	if r := m.Recipients[0]; r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.4.1") {
		t.Fatalf("%s with %q, want pending with 451 4.4.1", r.State, r.LastReply)
	}
	// The message comes round again while both hosts cool down (as after
	// a queue flush that did not clear the cool-downs): no host is
	// dialled, no attempt is counted, and the message is due no earlier
	// than the first cool-down ends.
	flushed := time.Now()
	if err := h.store.Flush(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, _ = h.store.Get(id); m != nil && m.LastAttempt.After(flushed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flushed message was not looked at within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := m.Recipients[0]; r.Attempts != 1 || !strings.HasPrefix(r.LastReply, "451 4.4.1") {
		t.Errorf("after the flush: %d attempts, %q; want still 1, with the hosts' reply", r.Attempts, r.LastReply)
	}
	if wait := time.Until(m.NextAttempt); wait < 55*time.Minute || wait > time.Hour {
		t.Errorf("next attempt in %s, want when the hour-long cool-down ends", wait)
	}
	if d := dialer.dialedSince(0); len(d) != 2 {
		t.Errorf("dialled %v: the flush should have skipped both hosts, cooling down", d)
	}
	if h.ndrs(id) != 0 {
		t.Fatal("hosts being down gave rise to an NDR")
	}
}

func TestSmarthostTLSIsVerifiedUnlessInsecure(t *testing.T) {
	srvTLS, roots, err := sink.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		mode      string
		trust     bool // the router trusts the sink's certificate
		insecure  bool
		delivered bool
	}{
		{"starttls trusted", config.TLSStartTLS, true, false, true},
		{"starttls untrusted", config.TLSStartTLS, false, false, false},
		{"starttls untrusted but insecure_skip_verify", config.TLSStartTLS, false, true, true},
		{"implicit untrusted", config.TLSImplicit, false, false, false},
		{"implicit trusted", config.TLSImplicit, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst, err := sink.Start(sink.Options{TLS: srvTLS, ImplicitTLS: tc.mode == config.TLSImplicit})
			if err != nil {
				t.Fatal(err)
			}
			d := config.Default().Delivery
			d.Smarthost = config.Smarthost{Hosts: []string{dst.Addr()}, TLS: tc.mode, InsecureSkipVerify: tc.insecure}
			router := NewConfigRouter(d, nil)
			router.Timeout = 5 * time.Second
			if tc.trust {
				router.RootCAs = roots
			}
			h := startHarness(t, dst, router, nil)
			id := h.put("a@src.invalid", "b@dst.invalid")
			if tc.delivered {
				waitCount(t, dst, 1, 10*time.Second)
				h.waitGone(id)
				return
			}
			r := h.waitAttempts(id, 1).Recipients[0]
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.4.1") || !strings.Contains(r.LastReply, "TLS") {
				t.Fatalf("%s with %q, want pending with a 451 4.4.1 TLS failure", r.State, r.LastReply)
			}
			if dst.Count() != 0 {
				t.Fatal("a message went to a smart host whose certificate failed verification")
			}
		})
	}
}
