package smarthost

import (
	"context"
	"errors"
	"time"

	"relayq/queue"
	"relayq/retry"
)

// deliverGroup delivers the recipients of g over connections to its
// destination, trying its targets in order, and returns the outcome of each
// recipient it reached a verdict for. Recipients left without one (shutdown)
// keep their state.
func (w *Worker) deliverGroup(ctx context.Context, m *queue.Message, g *group) []outcome {
	dest := g.route.Destination
	pending := g.idx
	var (
		out     []outcome
		last    *retry.Reply
		lastHop string
	)
	for ti := 0; ti < len(g.route.Targets) && len(pending) > 0; ti++ {
		target := g.route.Targets[ti]
		l, err := w.pool.acquire(ctx, dest)
		if err != nil {
			return out // shutting down: no verdict
		}
		conn, err := w.connect(ctx, l, target)
		if err != nil {
			last, lastHop = retry.FromError(retry.StageConnect, err), target.Addr
			d := retry.Classify(retry.StageConnect, last)
			if d.Action == retry.Bounce {
				// A 5xx greeting, EHLO, STARTTLS or AUTH refusal is about the
				// host or our credentials, not this message: defer rather
				// than bounce everything queued for it (Postfix does too).
				d.Action, d.NextHost = retry.Defer, true
			}
			w.pool.release(l, nil, false)
			w.logHop(m, dest, target.Addr, last, d)
			if d.LowerCap {
				w.lowerCap(dest, last)
			}
			if d.Action == retry.RetryNow || (!d.NextHost && d.Action != retry.Defer) {
				return append(out, each(pending, d, last, target.Addr)...)
			}
			continue
		}
		decided, rest, broken := w.transactions(ctx, m, conn, dest, pending)
		out = append(out, decided...)
		pending = rest
		w.pool.release(l, conn, broken == nil)
		if broken != nil {
			last, lastHop = broken, conn.Addr()
			if l.conn != nil && len(decided) == 0 {
				// A reused connection the peer had closed: not the
				// destination's fault, try the same target afresh.
				ti--
				l.conn = nil
			}
		}
	}
	if len(pending) > 0 {
		if last == nil {
			last = &retry.Reply{Code: 451, Enhanced: retry.CodeNoAnswer, Text: "no host of the destination could be reached", Local: true}
		}
		// No transaction reached them: never a bounce, only a deferral
		// (or a prompt retry when the destination was merely busy).
		d := retry.Classify(retry.StageConnect, last)
		if d.Action != retry.RetryNow {
			d.Action = retry.Defer
		}
		out = append(out, each(pending, d, last, lastHop)...)
	}
	return out
}

// connect returns the lease's idle connection, or dials target.
func (w *Worker) connect(ctx context.Context, l *lease, target Target) (*Conn, error) {
	if l.conn != nil {
		return l.conn, nil
	}
	return Dial(ctx, w.Dialer, target, w.Hostname)
}

// transactions sends m to the recipients pending on conn, in as many
// transactions as the peer's recipient limit needs. It returns the
// recipients decided, those left for another host, and a non-nil reply if
// the connection broke (then it must not be reused).
func (w *Worker) transactions(ctx context.Context, m *queue.Message, conn *Conn, dest string, pending []int) (decided []outcome, rest []int, broken *retry.Reply) {
	for len(pending) > 0 {
		env := Envelope{From: m.From, Size: m.Size, Body8Bit: m.Body8Bit, SMTPUTF8: m.SMTPUTF8}
		for _, i := range pending {
			env.Rcpts = append(env.Rcpts, m.Recipients[i].Addr)
		}
		body, err := w.Queue.Body(m.ID)
		if err != nil {
			w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("reading a queued body")
			return decided, pending, &retry.Reply{Code: 451, Enhanced: retry.CodeTempLocal, Text: "local error reading the queue", Local: true}
		}
		results, sendErr := conn.Send(ctx, env, body)
		body.Close()
		var split, nextHost []int
		progressed := false
		for k, r := range results {
			i := pending[k]
			d := retry.Classify(r.Stage, r.Reply)
			if d.Note != "" {
				w.Log.Info().Str("id", string(m.ID)).Str("rcpt", r.Rcpt).Str("reply", r.Reply.Error()).Msg(d.Note)
			}
			switch {
			case d.Action == retry.Split:
				split = append(split, i)
			case d.NextHost && d.Action == retry.Defer:
				nextHost = append(nextHost, i)
			default:
				if d.LowerCap {
					w.lowerCap(dest, r.Reply)
				}
				decided = append(decided, outcome{idx: i, decision: d, reply: r.Reply, host: conn.Addr()})
				progressed = true
			}
		}
		if sendErr != nil {
			return decided, append(split, nextHost...), retry.FromError(retry.StageBody, sendErr)
		}
		rest = append(rest, nextHost...)
		if !progressed && len(split) > 0 {
			// The peer took no recipient at all: retrying the same split
			// would loop. Defer them with the reply it gave.
			for k, i := range pending {
				if contains(split, i) {
					r := results[k].Reply
					decided = append(decided, outcome{idx: i, decision: retry.Decision{Action: retry.Defer, Status: r.Status()}, reply: r, host: conn.Addr()})
				}
			}
			split = nil
		}
		pending = split
	}
	return decided, rest, nil
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func each(idx []int, d retry.Decision, r *retry.Reply, host string) []outcome {
	out := make([]outcome, len(idx))
	for k, i := range idx {
		out[k] = outcome{idx: i, decision: d, reply: r, host: host}
	}
	return out
}

// lowerCap answers a 421 4.3.2 (seed 001): the destination allowed fewer
// connections than were open, so its cap becomes that number minus one.
func (w *Worker) lowerCap(dest string, r *retry.Reply) {
	open := w.pool.openCount(dest)
	c := w.pool.lowerCap(dest, open-1)
	w.Log.Warn().Str("dest", dest).Int("open", open).Int("cap", c).Str("reply", r.Error()).
		Msg("destination refused a connection: too many connections; lowering its cap")
}

func (w *Worker) logHop(m *queue.Message, dest, host string, r *retry.Reply, d retry.Decision) {
	w.Log.Warn().Str("id", string(m.ID)).Str("dest", dest).Str("host", host).
		Int("code", r.Code).Str("enhanced", d.Status.String()).Str("reply", r.Error()).
		Msg("host failed")
}

// tally gathers one attempt's verdicts into m and commits them.
type tally struct {
	m        *queue.Message
	now      time.Time
	recorded []int // recipients given a verdict since the last commit
	bounced  []int // of those, the bounced ones
	retryNow bool  // a recipient waits only for a connection slot
}

func newTally(m *queue.Message, now time.Time) *tally { return &tally{m: m, now: now} }

func (t *tally) record(i int, d retry.Decision, reply *retry.Reply, host string) {
	r := &t.m.Recipients[i]
	r.LastReply = reply.Error()
	r.LastHost = host
	t.recorded = append(t.recorded, i)
	switch d.Action {
	case retry.Deliver:
		r.State, r.Done = queue.Delivered, t.now
		r.Attempts++
	case retry.Bounce:
		r.State, r.Done = queue.Bounced, t.now
		r.Attempts++
		t.bounced = append(t.bounced, i)
	case retry.RetryNow:
		// Not counted: the destination was busy, not failing (seed 001).
		t.retryNow = true
	default:
		r.Attempts++
	}
}

// commit writes the attempt's verdicts so far, with the NDRs they call for,
// and logs each recipient's outcome.
func (w *Worker) commit(ctx context.Context, t *tally) {
	if len(t.recorded) == 0 {
		return
	}
	m := t.m
	m.LastAttempt = t.now
	m.NextAttempt = w.nextAttempt(t)
	news := w.ndrs(m, t.bounced, "")
	err := w.Queue.Update(ctx, m, news...)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		w.Log.Info().Str("id", string(m.ID)).Msg("message deleted during delivery")
	case err != nil:
		// The verdicts stay unrecorded: the message is tried again, and a
		// delivered recipient may get it twice (at-least-once).
		w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("committing delivery results")
	default:
		w.logOutcomes(t, news)
	}
	t.recorded, t.bounced = nil, nil
}

// ndrs returns the NDR for the bounced recipients idx of m, if one is due.
// A failed bounce is logged and dropped, never bounced (invariant 4).
func (w *Worker) ndrs(m *queue.Message, idx []int, why string) []queue.NewMessage {
	if len(idx) == 0 {
		return nil
	}
	if m.From == "" {
		w.Log.Error().Str("id", string(m.ID)).Str("rcpt", m.Recipients[idx[0]].Addr).
			Str("reply", m.Recipients[idx[0]].LastReply).Msg("double bounce: an NDR could not be delivered; dropped")
		return nil
	}
	if ndr := w.ndr.failed(m, idx, why); ndr != nil {
		return []queue.NewMessage{*ndr}
	}
	return nil
}

// nextAttempt is when m is due again: at once if a recipient only waits for
// a connection slot (the attempt then waits in the pool), else after the
// backoff of its most-tried pending recipient.
func (w *Worker) nextAttempt(t *tally) time.Time {
	if t.retryNow {
		return t.now
	}
	attempts := 1
	for _, i := range t.m.Pending() {
		attempts = max(attempts, t.m.Recipients[i].Attempts)
	}
	return t.now.Add(w.Backoff.Delay(attempts))
}

func (w *Worker) logOutcomes(t *tally, news []queue.NewMessage) {
	m := t.m
	delay := t.now.Sub(m.Received)
	for _, i := range t.recorded {
		r := &m.Recipients[i]
		ev, msg := w.Log.Warn(), "deferred"
		switch r.State {
		case queue.Delivered:
			ev, msg = w.Log.Info(), "delivered"
		case queue.Bounced:
			ev, msg = w.Log.Error(), "bounced"
		}
		ev = ev.Str("id", string(m.ID)).Str("from", m.From).Str("rcpt", r.Addr).
			Str("dest", r.LastHost).Int("attempt", r.Attempts).Dur("delay", delay)
		if reply, err := retry.ParseReply(r.LastReply); err == nil {
			ev = ev.Int("code", reply.Code).Str("enhanced", reply.Status().String())
		}
		if !r.State.Final() {
			ev = ev.Time("next_attempt", m.NextAttempt)
		}
		ev.Str("reply", r.LastReply).Msg(msg)
	}
	for _, n := range news {
		w.Log.Info().Str("id", string(n.ID)).Str("orig_id", string(m.ID)).Str("rcpt", n.Envelope.Recipients[0].Addr).Msg("ndr queued")
	}
}

// expire bounces every pending recipient of m with 4.4.7: it outlived the
// queue lifetime.
func (w *Worker) expire(ctx context.Context, m *queue.Message) {
	t := newTally(m, w.Now())
	reply := &retry.Reply{Code: 554, Enhanced: retry.CodeExpired, Local: true,
		Text: "delivery time expired: the message stayed in the queue for " + t.now.Sub(m.Received).Round(time.Minute).String()}
	for _, i := range m.Pending() {
		r := &m.Recipients[i]
		last := r.LastReply
		r.State, r.Done = queue.Bounced, t.now
		t.bounced = append(t.bounced, i)
		if last == "" {
			last = reply.Error()
		}
		r.LastReply = last
	}
	m.LastAttempt = t.now
	news := w.ndrs(m, t.bounced, "expired")
	if err := w.Queue.Update(ctx, m, news...); err != nil && !errors.Is(err, queue.ErrNotFound) {
		w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("committing expiry")
		return
	}
	for _, i := range t.bounced {
		w.Log.Error().Str("id", string(m.ID)).Str("from", m.From).Str("rcpt", m.Recipients[i].Addr).
			Str("enhanced", retry.CodeExpired.String()).Int("attempt", m.Recipients[i].Attempts).
			Dur("delay", t.now.Sub(m.Received)).Str("reply", m.Recipients[i].LastReply).Msg("expired")
	}
}
