package smarthost

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
	"time"

	"relayq/internal/faultproxy"
	"relayq/internal/sink"
	"relayq/queue"
)

// faultHarness runs a worker whose only next hop is a sink behind a fault
// proxy following plan; timeout is the worker's per-command timeout. The
// circuit breaker's cool-down is short, so that a retry is not held back.
func faultHarness(t *testing.T, plan func(int) faultproxy.Fault, timeout time.Duration) (*harness, *faultproxy.Proxy, *logBuffer) {
	t.Helper()
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.Start(faultproxy.Options{Upstream: dst.Addr(), Plan: plan, After: 64})
	if err != nil {
		dst.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() }) // after the harness's stop: cleanups run last-in first-out
	router := &Static{Destination: "sink", Targets: []Target{{Addr: p.Addr(), TLS: TLSNone, Timeout: timeout}}}
	var lb *logBuffer
	h := startHarness(t, dst, router, func(w *Worker) {
		w.CoolDown, w.MaxCoolDown = 10*time.Millisecond, 50*time.Millisecond
		lb = captureLog(t, w)
	})
	return h, p, lb
}

// copies counts the messages at the sink whose Message-ID is that of id.
func copies(t *testing.T, msgs []sink.Message, id queue.ID) int {
	t.Helper()
	n := 0
	for _, m := range msgs {
		parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("unparseable message at the sink: %v", err)
		}
		if parsed.Header.Get("Message-ID") == "<"+string(id)+"@test.invalid>" {
			n++
		}
	}
	return n
}

// checkDeferred checks that the worker logged at least n deferrals (an
// attempt while the circuit breaker cools the host down is one more), each
// with a 4.4.x status (RFC 3463: network and routing), the class of a
// connection that failed, and then one delivery.
func checkDeferred(t *testing.T, lb *logBuffer, n int) {
	t.Helper()
	// Logged after the commit that removed the message from the queue.
	deadline := time.Now().Add(5 * time.Second)
	for len(lb.Events("delivered")) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d := lb.Events("delivered"); len(d) != 1 {
		t.Errorf("%d deliveries logged, want 1", len(d))
	}
	defs := lb.Events("deferred")
	if len(defs) < n {
		t.Fatalf("%d deferrals logged, want at least %d: %v", len(defs), n, defs)
	}
	for _, d := range defs {
		if enh, _ := d["enhanced"].(string); !strings.HasPrefix(enh, "4.4.") {
			t.Errorf("deferral with status %q (reply %q), want 4.4.x", enh, d["reply"])
		}
	}
}

// TestReplyToTheDotLostIsRetriedAndArrives: the next hop took the message
// but its 250 never came back. The worker cannot know it arrived, so it
// defers and sends it again: one duplicate, never a loss (at least once).
func TestReplyToTheDotLostIsRetriedAndArrives(t *testing.T) {
	h, p, lb := faultHarness(t, faultproxy.Once(faultproxy.CutAfterDot), 2*time.Second)
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	if p.Fired(faultproxy.CutAfterDot) != 1 {
		t.Fatalf("the reply to the dot was cut %d times, want once", p.Fired(faultproxy.CutAfterDot))
	}
	// The next hop took the first copy (only its reply was cut) and the
	// retry a second: exactly one duplicate, as the README says.
	if n := copies(t, h.sink.Messages(), id); n != 2 {
		t.Fatalf("arrived %d times over %d connections, want twice: the copy whose 250 was lost and the retry", n, p.Accepted())
	}
	checkDeferred(t, lb, 1)
}

// TestStallInDataTimesOutAndIsRetried: the path freezes in the middle of
// the message data. After the timeout (the reply to the final "." has
// twice the command timeout, RFC 5321 §4.5.3.2.6) the worker gives up on
// the connection, defers, and the next attempt delivers, once: the next
// hop never saw the end of the first copy.
func TestStallInDataTimesOutAndIsRetried(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h, p, lb := faultHarness(t, faultproxy.Once(faultproxy.StallInData), timeout)
	start := time.Now()
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	took := time.Since(start)
	if p.Fired(faultproxy.StallInData) != 1 {
		t.Fatalf("stalled %d times, want once", p.Fired(faultproxy.StallInData))
	}
	if took < timeout {
		t.Errorf("delivered %s after the put, before the %s timeout could end the stalled attempt", took, timeout)
	}
	if n := copies(t, h.sink.Messages(), id); n != 1 {
		t.Fatalf("arrived %d times, want once", n)
	}
	checkDeferred(t, lb, 1)
}

// TestResetInDataIsRetried: the connection is reset in the middle of the
// data; the worker defers and the next attempt delivers, once.
func TestResetInDataIsRetried(t *testing.T) {
	h, p, lb := faultHarness(t, faultproxy.Once(faultproxy.ResetInData), 2*time.Second)
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	if p.Fired(faultproxy.ResetInData) != 1 {
		t.Fatalf("reset %d times, want once", p.Fired(faultproxy.ResetInData))
	}
	if n := copies(t, h.sink.Messages(), id); n != 1 {
		t.Fatalf("arrived %d times, want once", n)
	}
	checkDeferred(t, lb, 1)
}

// TestNextHopThatNeverAnswersIsAbandonedAndRetried: a next hop accepts the
// connection and never greets. The worker gives up after its timeout,
// closes the connection, records a 4.4.x deferral on the recipient, and
// tries again later; here the third connection is answered.
func TestNextHopThatNeverAnswersIsAbandonedAndRetried(t *testing.T) {
	const timeout = 300 * time.Millisecond
	plan := func(i int) faultproxy.Fault {
		if i < 2 {
			return faultproxy.Silent
		}
		return faultproxy.Pass
	}
	h, p, lb := faultHarness(t, plan, timeout)
	start := time.Now()
	id := h.put("a@src.invalid", "b@dst.invalid")

	m := h.waitAttempts(id, 1)
	if took := time.Since(start); took < timeout {
		t.Errorf("first attempt recorded %s after the put, before the %s timeout", took, timeout)
	}
	r := m.Recipients[0]
	if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4") || !strings.HasPrefix(r.Status, "4.4.") {
		t.Errorf("after a silent next hop the recipient is %v with reply %q, status %q; want pending, 4xx, 4.4.x", r.State, r.LastReply, r.Status)
	}

	h.waitGone(id)
	if n := copies(t, h.sink.Messages(), id); n != 1 {
		t.Fatalf("arrived %d times, want once", n)
	}
	if p.Fired(faultproxy.Silent) != 2 {
		t.Errorf("%d silent connections, want 2", p.Fired(faultproxy.Silent))
	}
	// Both silent connections were closed by the worker: abandoned, not
	// left open (the proxy never closes a silent one itself).
	deadline := time.Now().Add(5 * time.Second)
	for p.Ended() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the 2 silent connections closed by the worker", p.Ended())
		}
		time.Sleep(5 * time.Millisecond)
	}
	checkDeferred(t, lb, 2)
}
