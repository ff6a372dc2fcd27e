package smarthost

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/retry"
)

func TestSetRetryChangesTheNextBackoffAndLifetime(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
	}}, func(w *Worker) { w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour} })
	id := h.put("sender@src.invalid", "busy@dst.invalid")
	m := h.waitAttempts(id, 1)
	if wait := m.NextAttempt.Sub(m.LastAttempt); wait < 50*time.Minute {
		t.Fatalf("first deferral waits %v, want the configured hour", wait)
	}

	// Short backoff from now on: once flushed, the message is retried
	// within milliseconds, again and again.
	h.worker.SetRetry(retry.Backoff{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond}, time.Hour, 0)
	if err := h.store.Flush(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	m = h.waitAttempts(id, 4)
	if wait := m.NextAttempt.Sub(m.LastAttempt); wait > time.Second {
		t.Errorf("deferral after SetRetry waits %v, want 20ms", wait)
	}

	// A lifetime the message has outlived: the next attempt expires it
	// (4.4.7), where the 451s alone would never bounce it. The NDR's own
	// lifetime is as short, so it is not looked for at the sink.
	h.worker.SetRetry(retry.Backoff{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond}, time.Millisecond, 0)
	h.waitGone(id)
	if n := h.ndrs(id); n != 1 {
		t.Fatalf("%d NDRs after expiry, want 1", n)
	}
}

func TestSetMaxConnsPerDestMovesCapsButKeepsLowerLearnedOnes(t *testing.T) {
	p := newPool(100, 4, DefaultRaiseAfter, time.Minute, time.Now)
	acquire := func(name string, n int) []*lease {
		t.Helper()
		var ls []*lease
		for range n {
			l := p.tryAcquire(name)
			if l == nil {
				t.Fatalf("no slot of %s free with %d taken", name, len(ls))
			}
			ls = append(ls, l)
		}
		return ls
	}
	caps := func() map[string][2]int {
		out := map[string][2]int{}
		for _, d := range p.snapshot() {
			out[d.Name] = [2]int{d.Cap, d.MaxCap}
		}
		return out
	}
	free := acquire("free", 4)
	learned := acquire("learned", 3)
	busy := &smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns, Text: "too many connections"}
	if ch := p.refused(learned[2], busy, 0); ch.to != 2 {
		t.Fatalf("refused with 3 open: cap %d, want 2", ch.to)
	}

	p.setMax(3)
	if got := caps(); got["free"] != [2]int{3, 3} || got["learned"] != [2]int{2, 3} {
		t.Fatalf("caps after lowering the maximum to 3: %v, want free 3 and learned 2", got)
	}
	// Four are open to "free": none is cut, but no fifth, nor a new one,
	// until they drop below the new cap.
	if l := p.tryAcquire("free"); l != nil {
		t.Fatal("a slot over the lowered cap")
	}
	p.release(free[0], nil, true)
	p.release(free[1], nil, true)
	free = append(free[2:], acquire("free", 1)...)

	p.setMax(8)
	if got := caps(); got["free"] != [2]int{8, 8} || got["learned"] != [2]int{2, 8} {
		t.Fatalf("caps after raising the maximum to 8: %v, want free 8 and learned 2", got)
	}
	free = append(free, acquire("free", 5)...)
	if d := caps()["free"]; len(free) != 8 || d[0] != 8 {
		t.Fatalf("%d open to free with cap %v", len(free), d)
	}
	if st := p.state("learned"); st.Learned != 2 || !strings.Contains(st.Reason, "4.3.2") {
		t.Errorf("learned state %+v, want learned 2 kept", st)
	}
}
