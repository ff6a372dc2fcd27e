package smarthost

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/internal/smtptest"
	"relayq/queue"
	"relayq/retry"
)

// unpaced is a gate's pace for tests of caps alone: every rate allows.
func unpaced(string) (bool, time.Time) { return true, time.Now() }

// outcomes collects the verdicts a worker commits (Worker.Observe).
type outcomes struct {
	mu  sync.Mutex
	all []Outcome
}

func (o *outcomes) observe(x Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all = append(o.all, x)
}

// count returns how many verdicts were result.
func (o *outcomes) count(result string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, x := range o.all {
		if x.Result.String() == result {
			n++
		}
	}
	return n
}

// TestDestinationIsPacedByItsRate: 60 messages for a destination of 1200
// a minute arrive no faster than the rate allows (one every 50 ms: 2.95 s
// from the first to the last), all delivered, none deferred; 60 for
// another destination, queued with them, are all delivered while the
// paced one is still being fed.
func TestDestinationIsPacedByItsRate(t *testing.T) {
	const n, perMinute = 60, 1200
	paced := smtptest.StartSink(t, sink.Options{})
	other := smtptest.StartSink(t, sink.Options{})
	router := smarthostRouter([]string{other.Addr()}, config.Route{Domains: []string{"paced.invalid"}, Via: "smarthost",
		Hosts: []string{paced.Addr()}, TLS: config.TLSNone, Rate: config.Rate{PerMinute: perMinute}})
	var seen outcomes
	h := pausedHarness(t, nil, router, func(w *Worker) { w.Observe = seen.observe })
	for i := range n {
		h.put("a@src.invalid", fmt.Sprintf("r%d@paced.invalid", i))
		h.put("a@src.invalid", fmt.Sprintf("r%d@other.invalid", i))
	}
	h.start()
	waitCount(t, other, n, 10*time.Second)
	if got := paced.Count(); got >= n {
		t.Fatalf("the paced destination had all its %d messages when the other one got its %d: it was not paced", got, n)
	}
	msgs := waitCount(t, paced, n, 20*time.Second)
	at := make([]time.Time, 0, n)
	for _, m := range msgs {
		at = append(at, m.At)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// The rate allows one every 50 ms after the first: 2.95 s. Each
	// arrival may be up to a delivery late, so the bound is loose.
	if span, least := at[n-1].Sub(at[0]), 2500*time.Millisecond; span < least {
		t.Fatalf("%d messages at %d a minute arrived within %s, faster than the rate allows (%s at least)", n, perMinute, span, least)
	}
	if d := seen.count("deferred"); d != 0 {
		t.Fatalf("%d deferrals; pacing defers nothing", d)
	}
}

// TestRateReplyLowersTheLearnedRate: a destination that refuses a message
// for our rate (450 4.7.1 at RCPT, or 421 4.7.0 at MAIL) halves its rate,
// which is stored; the message waits for the rate in the line and is
// delivered at the next turn, not after a backoff (an hour here), with no
// attempt counted. A restarted worker has the learned rate back.
func TestRateReplyLowersTheLearnedRate(t *testing.T) {
	tooFast := &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "sending rate exceeded, slow down"}
	closing := &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "rate limited, try later"}
	for _, tc := range []struct {
		name  string
		opts  func(refuse func() error) sink.Options
		reply string
	}{
		{"450 4.7.1 at RCPT", func(refuse func() error) sink.Options {
			return sink.Options{OnRcpt: func(string) error { return refuse() }}
		}, "450 4.7.1"},
		{"421 4.7.0 at MAIL", func(refuse func() error) sink.Options {
			return sink.Options{OnMail: func(string) error { return refuse() }}
		}, "421 4.7.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var refused atomic.Bool
			reply := tooFast
			if strings.HasPrefix(tc.reply, "421") {
				reply = closing
			}
			dst := smtptest.StartSink(t, tc.opts(func() error {
				if refused.CompareAndSwap(false, true) {
					return reply
				}
				return nil
			}))
			route := config.Route{Domains: []string{"dst.invalid"}, Via: "smarthost", Hosts: []string{dst.Addr()},
				TLS: config.TLSNone, Rate: config.Rate{PerMinute: 6000}}
			var seen outcomes
			h := startHarness(t, nil, smarthostRouter(nil, route), func(w *Worker) {
				w.Observe = seen.observe
				w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour}
			})
			id := h.put("a@src.invalid", "b@dst.invalid")
			waitCount(t, dst, 1, 10*time.Second)
			h.waitGone(id)
			if !refused.Load() {
				t.Fatal("the destination never refused")
			}
			waitFor(t, "the delivery observed", func() bool { return seen.count("delivered") > 0 })
			if d, ok := seen.count("deferred"), seen.count("delivered"); d != 0 || ok != 1 {
				t.Fatalf("%d deferred, %d delivered; want the message delivered at once, no attempt counted for the refusal", d, ok)
			}
			dest := smarthostDest([]string{dst.Addr()}, "")
			st := destStatus(t, h.worker, dest).Rate
			if st.LearnedPerHour != 3000*60 || !strings.Contains(st.Reason, tc.reply) || st.Limit != (config.Rate{PerMinute: 6000}) {
				t.Fatalf("rate status %+v; want 3000/min learned (half of 6000/min) for %q", st, tc.reply)
			}
			v, err := h.store.Dest(dest)
			if err != nil {
				t.Fatal(err)
			}
			var stored destState
			if err := json.Unmarshal(v, &stored); err != nil || stored.LearnedPerHour != 3000*60 {
				t.Fatalf("stored state %s (%v): want the learned rate", v, err)
			}

			// A restart: a new worker over the queue reads the learned
			// rate and its reply back.
			h.stop()
			store, err := queue.Open(h.dir, queue.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			w := &Worker{Queue: store, State: store, Log: zerolog.New(zerolog.NewTestWriter(t))}
			if after := destStatus(t, w, dest).Rate; after.LearnedPerHour != st.LearnedPerHour || after.Reason != st.Reason {
				t.Fatalf("after a restart: rate %+v, want %.0f an hour learned from %q as before", after, st.LearnedPerHour, st.Reason)
			}
		})
	}
}

// TestPacerLowersRaisesAndForgets: a rate reply halves the rate in force
// (with none configured, the rate observed over the last minute; never
// below one an hour); a run of deliveries that waited for it raises it by
// a tenth; it is forgotten once it reaches the configured rate again. The
// learned rate survives a restart (state, load).
func TestPacerLowersRaisesAndForgets(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(3, func() time.Time { return now })
	busy := &smtpreply.Reply{Code: 450, Enhanced: smtpreply.EnhancedCode{4, 7, 1}, Text: "sending rate exceeded"}

	// Unconfigured: 120 sent in the last minute, so 60 a minute learned.
	for range 120 {
		if ok, _ := p.reserve("d", now); !ok {
			t.Fatal("an unpaced destination refused a message")
		}
		now = now.Add(500 * time.Millisecond)
	}
	if ch := p.lower("d", busy); !ch.changed || ch.to*60 < 59 || ch.to*60 > 61 {
		t.Fatalf("lowered to %.1f a minute, want about 60 (half of 120 observed)", ch.to*60)
	}
	if ok, _ := p.reserve("d", now); !ok {
		t.Fatal("the first message at the learned rate refused")
	}
	ok, at := p.reserve("d", now)
	if ok || at.Sub(now) < 900*time.Millisecond || at.Sub(now) > 1100*time.Millisecond {
		t.Fatalf("the next message: ok %v at +%s; want it paced a second later", ok, at.Sub(now))
	}

	// Configured 600 a minute: halved to 300, raised by a tenth after a run
	// of three paced deliveries, forgotten at 600.
	p.configure("c", config.Rate{PerMinute: 600})
	p.lower("c", busy)
	if got := p.snapshot()["c"].LearnedPerHour; got != 300*60 {
		t.Fatalf("learned %.0f an hour, want 300 a minute", got)
	}
	state := p.state("c")
	for raises := 0; p.snapshot()["c"].LearnedPerHour != 0; {
		if ok, at := p.reserve("c", now); !ok {
			now = at
			continue
		}
		if ch := p.succeeded("c"); ch.changed {
			raises++
			if raises > 8 {
				t.Fatalf("still learned after %d raises: %+v", raises, p.snapshot()["c"])
			}
		}
	}
	q := newPacer(3, func() time.Time { return now })
	q.load("c", state)
	if got := q.snapshot()["c"]; got.LearnedPerHour != 300*60 || got.Reason != busy.Error() {
		t.Fatalf("restored %+v, want 300 a minute learned from %q", got, busy.Error())
	}

	// Never below one an hour.
	for range 30 {
		p.lower("c", busy)
	}
	if got := p.snapshot()["c"].LearnedPerHour; got != 1 {
		t.Fatalf("lowered to %v an hour, want the floor of 1", got)
	}
}

// BenchmarkRate60At600PerMinute is the README's figure for a paced
// destination: 60 messages queued for a destination of 600 a minute and 60
// for another, unpaced one, delivered over loopback; it reports the time
// from the start to the paced destination's last message and to the other
// one's, and the deferrals (none expected). Run it with -benchtime=1x:
//
//	go test -run '^$' -bench Rate60At600 -benchtime=1x ./smarthost/
func BenchmarkRate60At600PerMinute(b *testing.B) {
	const n = 60
	for range b.N {
		paced, err := sink.Start(sink.Options{Discard: true})
		if err != nil {
			b.Fatal(err)
		}
		other, err := sink.Start(sink.Options{Discard: true})
		if err != nil {
			b.Fatal(err)
		}
		store, err := queue.Open(b.TempDir(), queue.Options{})
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			for _, rcpt := range []string{fmt.Sprintf("r%d@paced.invalid", i), fmt.Sprintf("r%d@other.invalid", i)} {
				env := &queue.Envelope{From: "a@src.invalid", Recipients: []queue.Recipient{{Addr: rcpt}}}
				if err := store.Put(context.Background(), store.NewID(), env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
					b.Fatal(err)
				}
			}
		}
		var seen outcomes
		w := &Worker{Queue: store, State: store, Hostname: "relay.test.invalid", Log: zerolog.Nop(), Observe: seen.observe,
			Router: smarthostRouter([]string{other.Addr()}, config.Route{Domains: []string{"paced.invalid"}, Via: "smarthost",
				Hosts: []string{paced.Addr()}, TLS: config.TLSNone, Rate: config.Rate{PerMinute: 600}})}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		done := make(chan struct{})
		start := time.Now()
		go func() { defer close(done); w.Run(ctx) }()
		if err := other.Wait(ctx, n); err != nil {
			b.Fatal(err)
		}
		otherTook := time.Since(start)
		if err := paced.Wait(ctx, n); err != nil {
			b.Fatal(err)
		}
		pacedTook := time.Since(start)
		cancel()
		<-done
		store.Close()
		paced.Close()
		other.Close()
		b.ReportMetric(pacedTook.Seconds(), "s-paced-60")
		b.ReportMetric(otherTook.Seconds(), "s-other-60")
		b.ReportMetric(float64(seen.count("deferred")), "deferred")
	}
}

// TestRateRepliesInARowEndInADeferral: a destination that refuses every
// message for our rate halves the rate at each refusal and gets the
// message back at the lowered rate, with no attempt counted, until eight
// such replies in a row (maxBusyRetries); the next one defers it as any
// temporary reply does: one attempt, its status, a backoff (README
// "Message rates per destination").
func TestRateRepliesInARowEndInADeferral(t *testing.T) {
	var rcpts atomic.Int32
	dst := smtptest.StartSink(t, sink.Options{OnRcpt: func(string) error {
		rcpts.Add(1)
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "sending rate exceeded"}
	}})
	// 1000 a second: the eight halvings make it wait about 0.5 s in all.
	route := config.Route{Domains: []string{"dst.invalid"}, Via: "smarthost", Hosts: []string{dst.Addr()},
		TLS: config.TLSNone, Rate: config.Rate{PerMinute: 60000}}
	h := startHarness(t, nil, smarthostRouter(nil, route), func(w *Worker) {
		w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour}
	})
	start := time.Now()
	id := h.put("a@src.invalid", "b@dst.invalid")
	m := h.waitAttempts(id, 1)
	r := m.Recipients[0]
	if n := rcpts.Load(); n != maxBusyRetries+1 {
		t.Errorf("the destination refused %d RCPTs before the deferral, want %d", n, maxBusyRetries+1)
	}
	if r.State != queue.Pending || r.Attempts != 1 || r.Status != "4.7.1" || !strings.HasPrefix(r.LastReply, "450 4.7.1") {
		t.Errorf("recipient %s, %d attempts, status %s, %q; want pending after one attempt with the 450", r.State, r.Attempts, r.Status, r.LastReply)
	}
	if m.NextAttempt.Before(start.Add(time.Hour - time.Minute)) {
		t.Errorf("next attempt at %s, want after the hour's backoff", m.NextAttempt)
	}
}

// TestRateCountsEachTransactionOfASplitMessage: a rate counts
// transactions. A message for 6 recipients to a server that takes 2 per
// transaction (452 4.5.3 beyond) goes as 3 transactions, and at 120 a
// minute (one every 500 ms) they arrive at least the rate apart: without
// a turn per transaction the three went out back to back on the
// connection. Nothing is deferred.
func TestRateCountsEachTransactionOfASplitMessage(t *testing.T) {
	const perMinute = 120
	paced := smtptest.StartSink(t, sink.Options{MaxRecipients: 2})
	router := smarthostRouter(nil, config.Route{Domains: []string{"paced.invalid"}, Via: "smarthost",
		Hosts: []string{paced.Addr()}, TLS: config.TLSNone, Rate: config.Rate{PerMinute: perMinute}})
	var seen outcomes
	h := startHarness(t, nil, router, func(w *Worker) { w.Observe = seen.observe })
	var rcpts []string
	for i := range 6 {
		rcpts = append(rcpts, fmt.Sprintf("r%d@paced.invalid", i))
	}
	id := h.put("a@src.invalid", rcpts...)
	msgs := waitCount(t, paced, 3, 20*time.Second)
	h.waitGone(id)
	at := make([]time.Time, 0, len(msgs))
	for _, m := range msgs {
		at = append(at, m.At)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// 500 ms apart by the rate; a little less may show between arrivals
	// (each is stamped at its DATA, the turn taken before its MAIL).
	for i := 1; i < len(at); i++ {
		if gap, least := at[i].Sub(at[i-1]), 400*time.Millisecond; gap < least {
			t.Errorf("transactions %d and %d of one message arrived %s apart; at %d a minute, at least %s", i, i+1, gap, perMinute, least)
		}
	}
	if d := seen.count("deferred"); d != 0 {
		t.Errorf("%d deferrals; waiting for the rate defers nothing", d)
	}
}
