package smarthost

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// scriptedCourier is a Courier whose sessions answer every recipient with
// reply and record what they were sent, with no network at all.
type scriptedCourier struct {
	reply *smtpreply.Reply
	mu    sync.Mutex
	sent  []Envelope
}

func (c *scriptedCourier) Dial(_ context.Context, t Target) (Session, error) {
	return &scriptedSession{c: c, addr: t.Addr}, nil
}

type scriptedSession struct {
	c    *scriptedCourier
	addr string
}

func (s *scriptedSession) Send(_ context.Context, env Envelope, body io.Reader) ([]RcptResult, error) {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return nil, err
	}
	s.c.mu.Lock()
	s.c.sent = append(s.c.sent, env)
	s.c.mu.Unlock()
	res := make([]RcptResult, len(env.Rcpts))
	for i, r := range env.Rcpts {
		res[i] = RcptResult{Rcpt: r, Reply: s.c.reply, Stage: retry.StageBody}
	}
	return res, nil
}

func (s *scriptedSession) Addr() string { return s.addr }
func (s *scriptedSession) Close() error { return nil }

// TestWorkerSpeaksToNextHopsOnlyThroughItsCourier: with a scripted
// Courier, a message is delivered and committed without any connection:
// the scheduler needs nothing of SMTP but Courier and Session.
func TestWorkerSpeaksToNextHopsOnlyThroughItsCourier(t *testing.T) {
	courier := &scriptedCourier{reply: &smtpreply.Reply{Code: 250, Enhanced: smtpreply.EnhancedCode{2, 0, 0}, Text: "ok"}}
	router := &Static{Destination: "scripted", Targets: []Target{{Addr: "scripted.invalid:25", TLS: TLSNone, Timeout: time.Second}}}
	h := startHarness(t, nil, router, func(w *Worker) { w.Courier = courier })
	id := h.put("a@src.invalid", "b@dst.invalid", "c@dst.invalid")
	h.waitGone(id)
	courier.mu.Lock()
	defer courier.mu.Unlock()
	if len(courier.sent) != 1 || len(courier.sent[0].Rcpts) != 2 || courier.sent[0].From != "a@src.invalid" {
		t.Fatalf("the courier was sent %+v, want one transaction from a@src.invalid to both recipients", courier.sent)
	}
}
