package smarthost

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"relayq/internal/smtptest"
	"relayq/queue"
	"relayq/retry"
)

// While every host of a destination cools down after failing, a new
// message for it is queued already put off (Plan), as the attempt that
// would try nothing would leave it: the hosts' reply, due when the
// cool-down ends; and no host is dialled for it.
func TestPlanPutsOffNewMailWhileEveryHostCoolsDown(t *testing.T) {
	dead := smtptest.ClosedAddr(t)
	dialer := &recordingDialer{}
	var logs *logBuffer
	h := startHarness(t, nil, smarthostRouter([]string{dead}), func(w *Worker) {
		w.Dialer, w.CoolDown = dialer, time.Hour
		// A backoff as long as the cool-down: with the harness's 20 ms the
		// first message would be due again, for a moment, before its next
		// attempt put it off for the cool-down (the check of Due below).
		w.Backoff = retry.Backoff{Min: time.Hour, Max: 2 * time.Hour}
		logs = captureLog(t, w)
	})
	env := func(rcpts ...string) *queue.Envelope {
		e := &queue.Envelope{From: "a@src.invalid"}
		for _, r := range rcpts {
			e.Recipients = append(e.Recipients, queue.Recipient{Addr: r})
		}
		return e
	}
	if _, f := h.worker.Plan(env("b@dst.invalid")); f != nil {
		t.Fatal("Plan put off a message before any host had failed")
	}

	// The first message fails: the host cools down for an hour. The
	// second finds it cooling and is put off without a dial; from then on
	// the destination is known to be cooling.
	first := h.put("a@src.invalid", "b@dst.invalid")
	h.waitAttempts(first, 1)
	second := h.put("a@src.invalid", "c@dst.invalid")
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := h.store.Get(second)
		if err != nil {
			t.Fatal(err)
		}
		if !m.LastAttempt.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second message was not looked at within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dials := dialer.dials()
	if dials != 1 {
		t.Fatalf("%d dials for two messages while the only host cools down, want 1", dials)
	}

	e := env("d@dst.invalid", "e@DST.invalid")
	dest, planned := h.worker.Plan(e)
	if planned == nil || dest != "smarthost:"+dead {
		t.Fatalf("Plan left a message for a destination whose every host cools down due at once (dest %q)", dest)
	}
	for _, r := range e.Recipients {
		if !strings.HasPrefix(r.LastReply, "451 4.4.1") || r.LastHost != dead || r.Status != "4.4.1" || r.Attempts != 0 {
			t.Errorf("planned recipient %+v, want the host's 451 4.4.1, from %s, no attempt counted", r, dead)
		}
	}
	if wait := time.Until(e.NextAttempt); wait < 55*time.Minute || wait > time.Hour {
		t.Errorf("planned to be due in %s, want when the hour-long cool-down ends", wait)
	}
	id := h.store.NewID()
	if err := h.store.PutWaiting(context.Background(), id, e, strings.NewReader("Subject: x\r\n\r\nbody\r\n"), dest); err != nil {
		t.Fatal(err)
	}
	planned(id)
	m, err := h.store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if !m.NextAttempt.Equal(e.NextAttempt) || m.Recipients[0].LastReply != e.Recipients[0].LastReply || !m.LastAttempt.IsZero() {
		t.Errorf("queued as %+v, want the plan, never attempted", m.Envelope)
	}
	var logged []string
	for _, ev := range logs.Events("deferred") {
		if ev["id"] == string(id) {
			logged = append(logged, fmt.Sprint(ev["rcpt"], " ", ev["reply"]))
		}
	}
	if len(logged) != 2 || !strings.HasPrefix(logged[0], "d@dst.invalid 451 4.4.1") {
		t.Errorf("deferred lines of the planned message: %q, want one per recipient with the host's reply", logged)
	}
	if ids, _, _ := h.store.Due(time.Now(), 100, nil); len(ids) != 0 {
		t.Errorf("due now: %v; the planned message and the put-off ones are not", ids)
	}

	// A recipient elsewhere, or the cool-downs ended by a flush: due at once.
	mixed := env("f@dst.invalid", "g@elsewhere.invalid")
	if _, f := h.worker.Plan(mixed); f != nil || !mixed.NextAttempt.IsZero() || mixed.Recipients[0].LastReply != "" {
		t.Errorf("Plan put off a message with a recipient elsewhere: %+v", mixed)
	}
	h.worker.ForgetHostFailures()
	if _, f := h.worker.Plan(env("h@dst.invalid")); f != nil {
		t.Error("Plan put off a message after the cool-downs were ended")
	}
	if d := dialer.dials(); d != dials {
		t.Errorf("%d more dials: the planned message was tried", d-dials)
	}
}
