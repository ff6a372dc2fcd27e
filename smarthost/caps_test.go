package smarthost

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/queue"
	"relayq/retry"
)

// backlogHarness is newHarness with the worker not yet running, so that a
// test can queue a backlog that falls due all at once when it calls
// h.start.
func backlogHarness(t *testing.T, opts sink.Options, tune func(*Worker)) *harness {
	t.Helper()
	dst, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	router := &Static{Destination: "sink", Targets: []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}}
	return pausedHarness(t, dst, router, tune)
}

// destStatus returns the status of the destination named name.
func destStatus(t *testing.T, w *Worker, name string) DestinationStatus {
	t.Helper()
	for _, d := range w.Destinations() {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no destination %q among %+v", name, w.Destinations())
	return DestinationStatus{}
}

// The per-source limit case (a gateway opening 60 connections to an
// Exchange server that allows 20): the destination takes at most 4 connections and
// answers 421 4.3.2 beyond. With a 10 minute backoff, only prompt retries
// without backoff can deliver 200 messages within 30 s.
func TestDefer421_4_3_2LearnsTheCapAndDeliversPromptly(t *testing.T) {
	const n, limit = 200, 4
	h := backlogHarness(t, sink.Options{MaxConns: limit}, func(w *Worker) {
		w.Backoff = retry.Backoff{Min: 10 * time.Minute, Max: time.Hour}
		w.MaxConnsPerDest = 20
	})
	for i := 0; i < n; i++ {
		h.put("a@src.invalid", fmt.Sprintf("r%d@dst.invalid", i))
	}
	start := time.Now()
	h.start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.sink.Wait(ctx, n/4); err != nil {
		t.Fatal(err)
	}
	_, _, refusedEarly := h.sink.Connections()
	if err := h.sink.Wait(ctx, n); err != nil {
		t.Fatalf("%v: a 421 4.3.2 must not cost a backoff", err)
	}
	elapsed := time.Since(start)
	_, peak, refused := h.sink.Connections()
	t.Logf("%d messages delivered in %v; connections refused with 421 4.3.2: %d (%d of them after the first %d messages); peak concurrent connections %d",
		n, elapsed.Round(time.Millisecond), refused, refused-refusedEarly, n/4, peak)

	if late := refused - refusedEarly; late > 3 {
		t.Errorf("%d refusals after the first %d messages: the cap was not learned (only rare probes above it may be refused)", late, n/4)
	}
	if refused > 20+3 {
		t.Errorf("%d refusals in all: more than the first burst and a few probes", refused)
	}
	for _, m := range h.sink.Messages() {
		if m.From == "" {
			t.Fatal("an NDR was sent: 421 4.3.2 is no failure")
		}
	}
	d := destStatus(t, h.worker, "sink")
	if d.LearnedCap != limit && d.LearnedCap != limit-1 {
		t.Errorf("learned cap %d, want %d (or %d)", d.LearnedCap, limit, limit-1)
	}
	if !strings.Contains(d.Reason, "4.3.2") || d.MaxCap != 20 || d.Updated.IsZero() {
		t.Errorf("destination status %+v: want the 421 4.3.2 as reason, max 20, a time", d)
	}

	// A restart: the learned cap is read back from the queue's store.
	h.stop()
	store, err := queue.Open(h.dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	w := &Worker{Queue: store, State: store, MaxConnsPerDest: 20, Log: zerolog.New(zerolog.NewTestWriter(t))}
	after := destStatus(t, w, "sink")
	if after.LearnedCap != d.LearnedCap || after.Cap > d.LearnedCap+1 || after.Reason != d.Reason {
		t.Errorf("after a restart: %+v, want learned cap %d and reason %q as before", after, d.LearnedCap, d.Reason)
	}
}

// TestConnectionsStayWithinALoweredCap: once a 421 4.3.2 lowered the cap,
// the worker never has more connections open to the destination than the
// new cap, counted on our side (dialled and not yet closed, idle included).
func TestConnectionsStayWithinALoweredCap(t *testing.T) {
	dialer := &recordingDialer{}
	h := backlogHarness(t, sink.Options{MaxConns: 2}, func(w *Worker) {
		w.MaxConnsPerDest = 6
		w.RaiseAfter = 1000 // no probing above the learned cap in this test
		w.Dialer = dialer
	})
	for i := 0; i < 40; i++ {
		h.put("a@src.invalid", fmt.Sprintf("r%d@dst.invalid", i))
	}
	h.start() // a backlog: all 40 due at once
	h.waitSink(40)
	if p := dialer.peak(); p > 6 {
		t.Fatalf("%d connections open at once; the cap is 6", p)
	}
	d := destStatus(t, h.worker, "sink")
	if d.Cap != 2 || d.LearnedCap != 2 {
		t.Fatalf("cap %d, learned %d; want 2 after the destination refused a third connection", d.Cap, d.LearnedCap)
	}

	dialer.resetPeak()
	_, _, refused := h.sink.Connections()
	for i := 0; i < 40; i++ {
		h.put("a@src.invalid", fmt.Sprintf("s%d@dst.invalid", i))
	}
	h.waitSink(80)
	if p := dialer.peak(); p > 2 {
		t.Errorf("%d connections open at once after the cap was lowered to 2", p)
	}
	if _, _, now := h.sink.Connections(); now != refused {
		t.Errorf("%d more connections refused after the cap was learned", now-refused)
	}
}

// TestSchedulerServesDestinationsRoundRobinWithinTheirCaps: the lines
// are served in turn, one delivery each, a destination at its cap is
// passed over, MaxConns bounds them all, and a message sent back by a
// 421 4.3.2 goes before the rest of its line.
func TestSchedulerServesDestinationsRoundRobinWithinTheirCaps(t *testing.T) {
	s := newSched(5)
	caps := map[string]int{"slow": 1, "a": 2, "b": 2}
	capOf := gate{capOf: func(d string) int { return caps[d] }, pace: unpaced}
	for _, d := range []string{"slow", "a", "b"} {
		for i := range 3 {
			s.requeue(d, &job{id: queue.ID(fmt.Sprintf("%s%d", d, i))}, false)
		}
	}
	var got []string
	var taken []*job
	for {
		j, from := s.next(capOf)
		if j == nil {
			break
		}
		got = append(got, from+":"+string(j.id))
		taken = append(taken, j)
	}
	if want := "slow:slow0 a:a0 b:b0 a:a1 b:b1"; strings.Join(got, " ") != want {
		t.Fatalf("started %v, want %s (round-robin, slow at its cap of 1, 5 in all)", got, want)
	}
	// slow0 is sent back (421 4.3.2): it goes first when slow has a slot.
	s.requeue("slow", taken[0], true)
	s.finish("slow", taken[0], true)
	if j, from := s.next(capOf); j == nil || from != "slow" || j.id != "slow0" {
		t.Fatalf("after slow0 was sent back, next is %v from %q, want slow0", j, from)
	}
	if w := s.waiting(); w["slow"] != 2 || w["a"] != 1 || w["b"] != 1 {
		t.Fatalf("waiting %v", w)
	}
	// A running delivery enters a destination only when it has a slot free
	// and nothing waiting in its line.
	if s.enter("a", capOf) {
		t.Fatal("entered a, which has mail waiting and no slot free")
	}
	caps["c"] = 1
	if !s.enter("c", capOf) || s.enter("c", capOf) {
		t.Fatal("c (cap 1, no line) must take exactly one delivery")
	}
	s.leave("c")
}

func TestPoolCapLoweredToOpenMinusOneAndRaisedAfterARun(t *testing.T) {
	p := newPool(100, 10, 3, time.Minute, time.Now)
	busy := &smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns, Text: "too many connections"}
	var ls []*lease
	for i := 0; i < 6; i++ {
		l := p.tryAcquire("d")
		if l == nil {
			t.Fatalf("no slot free with %d open", i)
		}
		ls = append(ls, l)
	}
	// The sixth connection is refused: five were fine.
	if ch := p.refused(ls[5], busy, 0); !ch.changed || ch.open != 6 || ch.to != 5 {
		t.Fatalf("refused with 6 open: %+v, want the cap lowered to 5", ch)
	}
	st := p.state("d")
	if st.Cap != 5 || st.Learned != 5 || !strings.Contains(st.Reason, "4.3.2") {
		t.Fatalf("state %+v", st)
	}
	// Three successes with all 5 in use raise it to 6.
	for i := 0; i < 2; i++ {
		if ch := p.succeeded(ls[0]); ch.changed {
			t.Fatalf("raised after %d successes", i+1)
		}
	}
	if ch := p.succeeded(ls[0]); !ch.changed || ch.to != 6 {
		t.Fatalf("third success: %+v, want the cap raised to 6", ch)
	}
	// The probe is refused again: back to 5, and the next raise needs a
	// run twice as long.
	l := p.tryAcquire("d")
	if ch := p.refused(l, busy, 0); ch.to != 5 {
		t.Fatalf("probe refused: %+v, want 5", ch)
	}
	if st := p.state("d"); st.Need != 6 {
		t.Fatalf("run needed after a refused probe: %d, want 6", st.Need)
	}
	// Successes while the cap is not all in use do not count.
	p.release(ls[4], nil, false)
	for i := 0; i < 10; i++ {
		if ch := p.succeeded(ls[0]); ch.changed {
			t.Fatal("raised while fewer connections than the cap were open")
		}
	}
	// A refusal with only one connection open still leaves a cap of 1.
	for _, l := range ls[:4] {
		p.release(l, nil, false)
	}
	p2 := newPool(100, 10, 3, time.Minute, time.Now)
	l = p2.tryAcquire("e")
	if ch := p2.refused(l, busy, 0); ch.to != 1 || ch.open != 1 {
		t.Fatalf("refused with 1 open: %+v, want cap 1", ch)
	}
}

func TestBreakerCoolDownDoublesUpToTheMaximumAndClosesOnSuccess(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := newBreaker(time.Second, 5*time.Second, func() time.Time { return now })
	r := &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeNoAnswer, Text: "connection refused", Local: true}
	var got []time.Duration
	for i := 0; i < 5; i++ {
		d, first := b.fail("h:25", r)
		if !first {
			t.Fatalf("failure %d after the cool-down ended was not counted", i+1)
		}
		if b.coolingDown("h:25") == nil {
			t.Fatal("a failed host is not cooling down")
		}
		// A failure of an attempt that started before is not counted twice.
		if d2, again := b.fail("h:25", r); again || d2 > d {
			t.Fatalf("a second failure within the cool-down counted: %v %v", d2, again)
		}
		got = append(got, d)
		now = now.Add(d)
		if b.coolingDown("h:25") != nil {
			t.Fatal("the host still cools down after its cool-down")
		}
	}
	if fmt.Sprint(got) != "[1s 2s 4s 5s 5s]" {
		t.Errorf("cool-downs %v, want [1s 2s 4s 5s 5s]", got)
	}
	if !b.ok("h:25") || b.ok("h:25") || len(b.snapshot()) != 0 {
		t.Error("a success does not close the breaker")
	}
	if d, _ := b.fail("h:25", r); d != time.Second {
		t.Errorf("first failure after a success cools down %v, want 1s again", d)
	}
}
