package smarthost

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/config"
	"relayq/internal/sink"
	"relayq/internal/smtptest"
	"relayq/queue"
	"relayq/retry"
)

// TestSlowDestinationDoesNotHoldUpTheOthers: a destination that takes one
// connection and then hangs in DATA has 30 messages due before one for a
// healthy destination. With MaxConns 4 the healthy one is delivered while
// the slow one's first message is still stuck: the slow destination's
// other messages wait in its line, not in slots of MaxConns.
func TestSlowDestinationDoesNotHoldUpTheOthers(t *testing.T) {
	release, stuck := make(chan struct{}), make(chan struct{}, 1)
	slow := smtptest.StartSink(t, sink.Options{MaxConns: 1, OnData: func(*sink.Message) error {
		select {
		case stuck <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
		return nil
	}})
	defer close(release) // before the sink closes (cleanups run after)
	healthy := smtptest.StartSink(t, sink.Options{})
	router := smarthostRouter([]string{healthy.Addr()}, config.Route{Domains: []string{"slow.invalid"}, Via: "smarthost", Hosts: []string{slow.Addr()}, TLS: config.TLSNone})
	h := pausedHarness(t, nil, router, func(w *Worker) {
		w.MaxConns, w.MaxConnsPerDest = 4, 4
	})
	for i := range 30 {
		h.put("a@src.invalid", fmt.Sprintf("r%d@slow.invalid", i))
	}
	h.start()
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow destination never got a message")
	}
	id := h.put("a@src.invalid", "b@healthy.invalid")
	waitCount(t, healthy, 1, 10*time.Second)
	h.waitGone(id)
	if n := slow.Count(); n != 0 {
		t.Fatalf("%d messages completed at the stuck destination", n)
	}
}

// TestDestinationBackReleasesTheMailDeferredForIt: with a 10 minute
// backoff, a smart host that refuses every transaction (421 at MAIL)
// leaves 20 messages deferred. When it takes mail again, a new message
// goes through at once, and the 20 follow within 5 s of it, with no flush.
// A message deferred for a reason of its own (452 4.2.2 for a full
// mailbox, before the outage) keeps its backoff.
func TestDestinationBackReleasesTheMailDeferredForIt(t *testing.T) {
	full := func(to string) error {
		if strings.HasPrefix(to, "full@") {
			return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
		}
		return nil
	}
	h := newHarness(t, sink.Options{OnRcpt: full}, func(w *Worker) {
		w.Backoff = retry.Backoff{Min: 10 * time.Minute, Max: time.Hour}
		w.CoolDown, w.MaxCoolDown = 20*time.Millisecond, 50*time.Millisecond
	})
	mailbox := h.put("a@src.invalid", "full@dst.invalid")
	h.waitAttempts(mailbox, 1)

	h.sink.SetHooks(sink.Hooks{OnRcpt: full, OnMail: func(string) error {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "shutting down"}
	}})
	var ids []queue.ID
	for i := range 20 {
		ids = append(ids, h.put("a@src.invalid", fmt.Sprintf("r%d@dst.invalid", i)))
	}
	for _, id := range ids {
		m := h.waitAttempted(id)
		if wait := time.Until(m.NextAttempt); wait < 5*time.Minute {
			t.Fatalf("deferred for %s only, want the 10 minute backoff", wait)
		}
	}

	h.sink.SetHooks(sink.Hooks{OnRcpt: full})
	// The host's cool-down (at most 50 ms) ends, so the new message is
	// tried, not put off with the others.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		hs := h.worker.Hosts()
		if len(hs) == 0 || time.Now().After(hs[0].Until) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host still cools down: %+v", hs)
		}
	}
	h.put("a@src.invalid", "new@dst.invalid")
	waitCount(t, h.sink, 1, 10*time.Second)
	first := time.Now()
	waitCount(t, h.sink, 21, 5*time.Second)
	t.Logf("the 20 deferred messages arrived %s after the first success", time.Since(first).Round(time.Millisecond))
	for _, id := range ids {
		h.waitGone(id)
	}
	m, err := h.store.Get(mailbox)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Recipients[0]; r.Attempts != 1 || time.Until(m.NextAttempt) < 5*time.Minute {
		t.Fatalf("the full mailbox's message: %d attempts, due in %s; want its backoff kept", r.Attempts, time.Until(m.NextAttempt))
	}
}

// TestOperatorChangeWhileInALineWins: an operator holds, bounces or
// deletes a message while it waits in its destination's line behind a
// stuck delivery, after the routing read it; when the line moves, that
// message is not sent (held: it stays queued and pending; bounced: its
// sender gets an NDR; deleted: it is gone, with no NDR), the others go.
// The routing's copy of the message must not be used once it is stale.
func TestOperatorChangeWhileInALineWins(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		change func(s *queue.Store, id queue.ID) error
		ndrs   int
		kept   bool // the message stays queued, held and pending
	}{
		{"hold", func(s *queue.Store, id queue.ID) error { return s.Hold(ctx, id) }, 0, true},
		{"bounce", func(s *queue.Store, id queue.ID) error { return s.Bounce(ctx, id) }, 1, false},
		{"delete", func(s *queue.Store, id queue.ID) error { return s.Delete(ctx, id) }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ids, stuck, release := stuckLine(t, 4)
			other := (stuck + 1) % len(ids)
			changed := ids[other] // waiting in the line, read by the routing
			if err := tc.change(h.store, changed); err != nil {
				t.Fatal(err)
			}
			close(release)
			for i, id := range ids {
				if i != other {
					h.waitGone(id)
				}
			}
			waitFor(t, "the changed message leaves the scheduler", func() bool { return !h.worker.sched.knows(changed) })
			m, err := h.store.Get(changed)
			if tc.kept && (err != nil || !m.Held || m.Recipients[0].State != queue.Pending) {
				t.Fatalf("the held message: %+v, %v; want it held and pending", m, err)
			}
			if !tc.kept && err != queue.ErrNotFound {
				t.Fatalf("the message is still queued: %+v, %v", m, err)
			}
			if n := h.ndrs(changed); n != tc.ndrs {
				t.Fatalf("%d NDRs queued for it, want %d", n, tc.ndrs)
			}
			rcpt := fmt.Sprintf("r%d@dst.invalid", other)
			for _, msg := range h.sink.Messages() {
				if len(msg.To) == 1 && msg.To[0] == rcpt {
					t.Fatalf("the %s message was sent", tc.name)
				}
			}
		})
	}
}

// TestMessageWaitingForASlotIsReadOnce: messages that the routing finds
// their destination full for wait in its line and are delivered from
// there with the copy the routing read: one Get per message delivered,
// also for one flushed meanwhile (`relayq queue flush --all` during a
// drain: a flush changes only when a message is due).
func TestMessageWaitingForASlotIsReadOnce(t *testing.T) {
	h, ids, stuck, release := stuckLine(t, 20)
	if err := h.store.Flush(context.Background(), ids[(stuck+1)%len(ids)]); err != nil {
		t.Fatal(err)
	}
	close(release)
	for _, id := range ids {
		h.waitGone(id)
	}
	for _, id := range ids {
		if n := h.reads(id); n != 1 {
			t.Errorf("message %s read %d times, want once", id, n)
		}
	}
}

// stuckLine queues n messages for a destination of one connection whose
// first delivery blocks in DATA until release is closed, and returns once
// the other n-1 wait in the destination's line, routed. ids[i] is to
// r<i>@dst.invalid; ids[stuck] is the one delivering.
func stuckLine(t *testing.T, n int) (h *harness, ids []queue.ID, stuck int, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	var (
		once      sync.Once
		stuckRcpt = make(chan string, 1)
	)
	h = backlogHarness(t, sink.Options{MaxConns: 1, OnData: func(m *sink.Message) error {
		once.Do(func() {
			stuckRcpt <- m.To[0]
			select {
			case <-release:
			case <-time.After(20 * time.Second):
			}
		})
		return nil
	}}, func(w *Worker) { w.MaxConnsPerDest = 1 })
	for i := range n {
		ids = append(ids, h.put("a@src.invalid", fmt.Sprintf("r%d@dst.invalid", i)))
	}
	h.start()
	var rcpt string
	select {
	case rcpt = <-stuckRcpt:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery began")
	}
	if _, err := fmt.Sscanf(rcpt, "r%d@", &stuck); err != nil {
		t.Fatalf("delivering to %q: %v", rcpt, err)
	}
	waitFor(t, "the backlog routed into the destination's line", func() bool { return h.worker.sched.waitingFor("sink") == n-1 })
	return h, ids, stuck, release
}

// waitFor polls cond until it holds, for 10 s at most.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReleasedMailBacksOffFromTheMinimumAgain: a message released by its
// destination's return that is deferred again waits the backoff of its
// first attempt since the release, not that of its whole attempt count,
// which it keeps for its NDR.
func TestReleasedMailBacksOffFromTheMinimumAgain(t *testing.T) {
	w := &Worker{Backoff: retry.Backoff{Min: time.Minute, Max: 8 * time.Hour}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	msg := func(attempts, released int) *queue.Message {
		return &queue.Message{Envelope: queue.Envelope{
			Recipients: []queue.Recipient{{Addr: "a@dst.invalid", Attempts: attempts}},
			Released:   released,
		}}
	}
	for _, tc := range []struct {
		attempts, released int
		want               time.Duration
	}{
		{6, 0, 32 * time.Minute}, // never released: doubles from the minimum
		{6, 5, time.Minute},      // the first attempt since its release
		{7, 5, 2 * time.Minute},
		{1, 0, time.Minute},
	} {
		got := w.nextAttempt(&tally{m: msg(tc.attempts, tc.released), now: now, deferred: true}).Sub(now)
		if got != tc.want {
			t.Errorf("%d attempts, released at %d: next attempt in %s, want %s", tc.attempts, tc.released, got, tc.want)
		}
	}
}
