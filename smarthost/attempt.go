package smarthost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"relayq/internal/dsn"
	"relayq/internal/explain"
	"relayq/internal/smtpreply"
	"relayq/queue"
	"relayq/retry"
)

// maxBusyRetries bounds how often a message goes back to the front of a
// destination's line after a 421 4.3.2 before it settles for a deferral.
// Each time lowers the cap, so a few suffice unless the peer refuses
// whatever we do.
const maxBusyRetries = 8

// maxStaleRetries bounds the redials after reused connections that the peer
// had closed meanwhile.
const maxStaleRetries = 4

// deliverGroup delivers the recipients of g over connections to its
// destination, trying its targets in order, and records in t the outcome
// of each recipient it reaches a verdict for, committing each
// transaction's verdicts as soon as it ends (before another transaction,
// host or slot is tried), so that a crash never sends a recipient again
// whose 250 came. Recipients left without one (shutdown) keep their state.
// It returns errGone when the message was deleted meanwhile: then nothing
// more is to be done for it; errSentBack when its recipients go back to
// the front of the destination's line (j.busy counts those times).
//
//   - A host that fails to connect, refuses us before MAIL, fails the TLS
//     handshake or says 421 is given to the circuit breaker, and the next
//     host is tried; hosts in their cool-down are skipped. A host that
//     offered STARTTLS and failed the handshake is never tried again in
//     plaintext within the attempt (RFC 3207 §4).
//   - A 421 4.3.2 (or "too many connections") while other connections to
//     the destination were open lowers its cap (pool.refused) and sends the
//     recipients back to the front of the destination's line, to go as
//     soon as a slot frees: no backoff, no attempt counted.
//     With no other connection open the refusal is not about our
//     concurrency, and it counts as the host failing. So does finding the
//     destination's slots all taken (its cap was lowered since the
//     scheduler gave this delivery one).
//   - With a cluster, a new connection needs a lease (dial): when the
//     nodes together hold every connection the destination allows, the
//     recipients go back to the front of the line, which waits
//     cluster.RetryAtCap: no backoff, no attempt counted. A host another
//     node put in its cool-down is skipped like one of this node's. A
//     paced destination's rate is shared too (clusterPaced): when the
//     nodes used it, the recipients go back to the front of the line,
//     which waits for it (pacer.hold), no attempt counted.
//   - Recipients no host took are deferred with the last reply (a local
//     451 4.4.1 for a host that did not answer); when every host was
//     cooling down, with the reply that put the last one there.
func (w *Worker) deliverGroup(ctx context.Context, t *tally, g *group, j *job) error {
	m := t.m
	dest := g.route.Destination
	targets := g.route.Targets
	pending := g.idx
	if w.clusterPaced(ctx, dest) {
		return errSentBack // the nodes used the shared rate: the line waits for it
	}
	var (
		last    hopReply // the last failure's reply
		cooling skipped  // why skipped hosts are cooling down
		stale   int      // reused connections found closed
	)
	for ti := 0; ti < len(targets) && len(pending) > 0; ti++ {
		target := targets[ti]
		if until, r := w.breaker.coolingUntil(breakerHost(target)); r != nil {
			cooling.add(r, target.Addr, until)
			continue
		}
		if ctx.Err() != nil {
			return nil // shutting down: no verdict
		}
		l := w.pool.tryAcquire(dest)
		if l == nil {
			return errSentBack
		}
		conn, err := w.connect(ctx, l, target)
		var shared *errSharedCooldown
		switch {
		case err != nil && ctx.Err() != nil:
			w.pool.release(l, nil, false)
			return nil // shutting down: no verdict, and no host to blame
		case errors.Is(err, errAtClusterCap):
			// The line waits for a lease (pool.hold): no attempt counted.
			w.pool.release(l, nil, false)
			return errSentBack
		case errors.As(err, &shared):
			// Another node's cool-down (now also the breaker's): skipped.
			w.pool.release(l, nil, false)
			cooling.add(sharedCoolReply, target.Addr, shared.until)
			continue
		}
		if err != nil {
			reply, back := w.dialFailed(ctx, l, j, m, dest, target, err)
			if back {
				return errSentBack
			}
			last = hopReply{reply, target.Addr}
			continue
		}
		reused := l.conn != nil
		// conn.Addr, not target.Addr: a reused connection may go to
		// another host of the destination.
		connHost := breakerHost(Target{Addr: conn.Addr(), Username: target.Username})
		ok := func() { w.succeeded(ctx, l, dest, connHost); w.rateSucceeded(ctx, dest) }
		t.paceOK, t.pacedBy = j.busy < maxBusyRetries, nil
		t.turn = func() bool { return w.rateTurn(ctx, dest) }
		decided, rest, broken, err := w.transactions(ctx, t, conn, pending, g.route.Rewrite, ok)
		if errors.Is(err, errGone) {
			w.pool.release(l, conn, broken == nil)
			return err
		}
		if errors.Is(err, errRateTurn) {
			w.pool.release(l, conn, true)
			return errSentBack // the rest of a split message waits for the rate's next turn
		}
		if t.pacedBy != nil && err == nil {
			// Recipients refused for our rate wait for the lowered one in
			// the line, the rest of the group with them.
			w.pool.release(l, conn, broken == nil)
			w.paceBack(ctx, j, dest, retry.Decision{LowerRate: true}, t.pacedBy)
			return errSentBack
		}
		pending = rest
		if broken == nil {
			w.pool.release(l, conn, true)
			continue
		}
		d := retry.Classify(retry.StageMail, broken)
		if w.refused(ctx, l, conn, j, dest, d, broken) {
			return errSentBack
		}
		if reused && !decided && stale < maxStaleRetries {
			// A reused connection the peer had closed (or said 421 on
			// after its idle timeout): not the host's fault; redial it.
			stale++
			ti--
			continue
		}
		w.hostFailed(ctx, m, dest, connHost, broken, d, broken.Code == 421)
		last = hopReply{broken, conn.Addr()}
	}
	if len(pending) == 0 {
		return nil
	}
	return w.unreached(ctx, t, g, pending, last, cooling)
}

// dialFailed answers a connection to target that failed with err: a
// 421 4.3.2 lowers the cap and a rate reply paces the destination, both
// sending the job back to its line (true); anything else is the host
// failing.
func (w *Worker) dialFailed(ctx context.Context, l *lease, j *job, m *queue.Message, dest string, target Target, err error) (*smtpreply.Reply, bool) {
	reply, stage := dialReply(err)
	d := retry.Classify(stage, reply)
	if w.refused(ctx, l, nil, j, dest, d, reply) {
		return reply, true
	}
	w.hostFailed(ctx, m, dest, breakerHost(target), reply, d, true)
	return reply, false
}

// refused answers a reply that may be about us rather than the host: a
// 421 4.3.2 lowers the cap (pool.refused, through lowerCap) and a rate
// reply paces the destination, both sending the job back to its line
// (true, j.busy counting the times). Either way l's connection is given
// up: conn, or nil for one that was never made.
func (w *Worker) refused(ctx context.Context, l *lease, conn Session, j *job, dest string, d retry.Decision, reply *smtpreply.Reply) bool {
	if d.LowerCap {
		if conn != nil {
			conn.Close()
		}
		if w.lowerCap(ctx, l, dest, reply) && j.busy < maxBusyRetries {
			j.busy++
			return true
		}
	} else {
		w.pool.release(l, conn, false)
	}
	return w.paceBack(ctx, j, dest, d, reply)
}

// skipped is why the hosts skipped for their cool-down were put there:
// the last one's reply, and when the first may be tried again.
type skipped struct {
	hopReply
	until time.Time
}

func (s *skipped) add(r *smtpreply.Reply, host string, until time.Time) {
	s.reply, s.host = r, host
	if s.until.IsZero() || until.Before(s.until) {
		s.until = until
	}
}

// hopReply is a reply and the host that gave it.
type hopReply struct {
	reply *smtpreply.Reply
	host  string
}

// unreached records the recipients of g that no transaction reached and
// commits them: deferred with the last reply (a local 451 4.4.1 for a
// host that did not answer); when every host was cooling down, due again
// when the first may be tried, with the reply that put it there.
func (w *Worker) unreached(ctx context.Context, t *tally, g *group, pending []int, last hopReply, cooling skipped) error {
	m, dest := t.m, g.route.Destination
	switch {
	case last.reply == nil && cooling.reply != nil:
		// Every host is cooling down: no attempt was made. What the
		// last one said is what the operator needs to see, and the
		// recipients are due when the first host may be tried again.
		w.Log.Debug().Str("id", string(m.ID)).Str("dest", dest).Str("reply", cooling.reply.Error()).
			Time("until", cooling.until).Msg("every host of the destination is cooling down after failing")
		w.noteCooled(m, pending, dest, g.route.Targets)
		for _, i := range pending {
			t.recordOutcome(outcome{idx: i, reply: cooling.reply, host: cooling.host, notBefore: cooling.until})
		}
		t.waitsForDest(dest)
		w.pool.noteWaiting(dest)
		return w.commit(ctx, t)
	case last.reply == nil:
		last.reply = &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeNoAnswer, Text: "no host of the destination could be reached", Local: true}
	}
	// No transaction reached them: never a bounce, never a prompt retry,
	// only a deferral.
	d := retry.Unreached(last.reply)
	for _, i := range pending {
		t.deferDest(i, d, last.reply, last.host, dest)
	}
	w.pool.noteWaiting(dest)
	return w.commit(ctx, t)
}

// dialReply returns the reply that ended a Dial and the stage it came at.
func dialReply(err error) (*smtpreply.Reply, retry.Stage) {
	var de *DialError
	if errors.As(err, &de) {
		return de.Reply, de.Stage
	}
	return retry.FromError(retry.StageConnect, err), retry.StageConnect
}

// connect returns the lease's idle session, or dials target (with a
// cluster lease: dial).
func (w *Worker) connect(ctx context.Context, l *lease, target Target) (Session, error) {
	if l.conn != nil {
		return l.conn, nil
	}
	return w.dial(ctx, l, target)
}

// transactions sends t.m, its sender rewritten as rw says, to the
// recipients pending on conn, in as many transactions as the peer's
// recipient limit needs, recording and
// committing each one's verdicts when it ends; ok is called after each
// transaction that decided a recipient, before its commit (the host
// closes its circuit breaker, the destination counts towards a raise of
// its cap). It returns whether any
// recipient was decided, those left for another host, and a non-nil reply
// if the connection broke (then it must not be reused); err is errGone
// when the message was deleted meanwhile.
func (w *Worker) transactions(ctx context.Context, t *tally, conn Session, pending []int, rw Rewrite, ok func()) (decided bool, rest []int, broken *smtpreply.Reply, err error) {
	m := t.m
	for sent := 0; len(pending) > 0; sent++ {
		if sent > 0 && t.turn != nil && !t.turn() {
			return decided, pending, nil, errRateTurn
		}
		env := envelopeFor(m, pending, rw)
		body, size, err := w.outgoing(ctx, m, rw)
		if errors.Is(err, queue.ErrNotFound) {
			w.Log.Info().Str("id", string(m.ID)).Msg("message deleted during delivery")
			return decided, pending, nil, errGone
		}
		if err != nil {
			w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("reading a queued body")
			return decided, pending, &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempLocal, Text: "local error reading the queue", Local: true}, nil
		}
		env.Size = size
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
			case d.LowerRate && t.paceOK:
				// Refused for our rate: no verdict, the recipient waits
				// for the destination's lowered rate (deliverGroup).
				t.pacedBy = r.Reply
			case d.NextHost:
				// A 421 or a dropped connection: another connection (or
				// host) may take them; deliverGroup decides which.
				nextHost = append(nextHost, i)
			default:
				t.recordOutcome(outcome{idx: i, decision: d, reply: r.Reply, host: conn.Addr(), dsn: r.DSN})
				progressed = true
			}
		}
		if !progressed && len(split) > 0 && sendErr == nil {
			// The peer took no recipient at all: retrying the same split
			// would loop. Defer them with the reply it gave.
			for k, i := range pending {
				if contains(split, i) {
					r := results[k].Reply
					t.record(i, retry.Unsplit(r), r, conn.Addr())
				}
			}
			split, progressed = nil, true
		}
		decided = decided || progressed
		if progressed && sendErr == nil {
			ok()
		}
		// This transaction's verdicts are on disk before anything else
		// happens: the next transaction, another host, a wait for a slot.
		if err := w.commit(ctx, t); err != nil {
			var rep *smtpreply.Reply
			if sendErr != nil {
				rep = retry.FromError(retry.StageBody, sendErr)
			}
			return decided, append(split, nextHost...), rep, err
		}
		if sendErr != nil {
			return decided, append(split, nextHost...), retry.FromError(retry.StageBody, sendErr), nil
		}
		if t.pacedBy != nil { // the rest waits for the rate too
			return decided, append(append(rest, split...), nextHost...), nil, nil
		}
		rest = append(rest, nextHost...)
		pending = split
	}
	return decided, rest, nil, nil
}

// paceBack answers a reply d says is about our rate of messages to dest:
// the rate is lowered and, unless j met too many such replies in a row
// (maxBusyRetries, shared with 421 4.3.2), it reports true: the message
// goes back to the front of the line, to wait for the rate.
func (w *Worker) paceBack(ctx context.Context, j *job, dest string, d retry.Decision, reply *smtpreply.Reply) bool {
	if !d.LowerRate {
		return false
	}
	w.lowerRate(ctx, dest, reply)
	if j.busy >= maxBusyRetries {
		return false
	}
	j.busy++
	return true
}

// errGone: the message was deleted (by an operator) during its attempt.
var errGone = errors.New("message deleted during delivery")

// errRateTurn: a message split into several transactions (too many
// recipients) found its destination's rate used up before the next one:
// a rate counts transactions, so the rest waits in the line for its turn.
var errRateTurn = errors.New("the destination's rate allows no further transaction now")

// errSentBack: the recipients go back to the front of the destination's
// line, to be sent when a slot frees (a 421 4.3.2).
var errSentBack = errors.New("sent back to the front of the destination's line")

// exactReader passes a queued body on and fails, instead of ending it,
// when it is not exactly the stored size: a body that went away or
// changed is never sent as if it were the message (the client then drops
// the connection before the final ".": SMTP has no way to abort DATA,
// RFC 5321 §4.1.1.4).
type exactReader struct {
	r    io.Reader
	left int64 // bytes still expected
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	switch {
	case e.left < 0:
		return n, fmt.Errorf("the queued body is longer than its stored size")
	case err == io.EOF && e.left > 0:
		return n, fmt.Errorf("the queued body ended %d bytes short of its stored size", e.left)
	}
	return n, err
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// tally gathers one attempt's verdicts into m and commits them.
type tally struct {
	m        *queue.Message
	now      time.Time
	recorded []verdict // recipients given a verdict since the last commit
	bounced  []int     // of those, the bounced ones
	// relayed are the delivered ones whose next hop lacked DSN: those that
	// asked NOTIFY=SUCCESS are owed a "relayed" DSN (RFC 3461 §5.2.2).
	relayed  []int
	deferred bool // a recipient was deferred after a real attempt
	// waitUntil is when the first host of a destination whose hosts were
	// all cooling down may be tried again; zero if none was.
	waitUntil time.Time
	// waitsFor is the destination that failed as a whole (no host took
	// the connection, every host cooling down) for deferred recipients;
	// msgDeferred is set when one was deferred for a reason of its own (a
	// reply in a transaction, routing). Only a message deferred solely
	// for its destination is indexed for release (queue.ReleaseDest).
	waitsFor    string
	msgDeferred bool
	// paceOK says a reply about our rate may send recipients back to the
	// line (deliverGroup); pacedBy is the first such reply.
	paceOK  bool
	pacedBy *smtpreply.Reply
	// turn takes the destination's rate's turn for one more transaction
	// of the delivery (the scheduler took the first): false when the rate
	// says wait (Worker.rateTurn). Nil: none needed.
	turn func() bool
}

// verdict is one recipient's reply in this attempt, kept parsed for the
// log line and the metrics (the recipient holds it as text).
type verdict struct {
	idx    int
	code   int
	status smtpreply.EnhancedCode
}

func newTally(m *queue.Message, now time.Time) *tally { return &tally{m: m, now: now} }

// recordOutcome records o, noting whether its next hop took over DSNs.
func (t *tally) recordOutcome(o outcome) {
	if !o.notBefore.IsZero() {
		t.wait(o.idx, o.reply, o.host, o.notBefore)
		return
	}
	t.record(o.idx, o.decision, o.reply, o.host)
	if o.decision.Action == retry.Deliver && !o.dsn {
		t.relayed = append(t.relayed, o.idx)
	}
}

// record records a verdict of recipient i; a deferral is for a reason of
// its own (see deferDest).
func (t *tally) record(i int, d retry.Decision, reply *smtpreply.Reply, host string) {
	t.note(i, d, reply, host)
	t.msgDeferred = t.msgDeferred || d.Action == retry.Defer
}

// deferDest records the deferral d of recipient i because its
// destination dest failed as a whole.
func (t *tally) deferDest(i int, d retry.Decision, reply *smtpreply.Reply, host, dest string) {
	t.note(i, d, reply, host)
	t.waitsForDest(dest)
}

func (t *tally) waitsForDest(dest string) {
	if t.waitsFor == "" {
		t.waitsFor = dest
	}
}

func (t *tally) note(i int, d retry.Decision, reply *smtpreply.Reply, host string) {
	r := &t.m.Recipients[i]
	r.LastReply = reply.Error()
	r.LastHost = host
	r.Status = d.Status.String()
	t.recorded = append(t.recorded, verdict{idx: i, code: reply.Code, status: d.Status})
	switch d.Action {
	case retry.Deliver:
		r.State, r.Done = queue.Delivered, t.now
		r.Attempts++
	case retry.Bounce:
		r.State, r.Done = queue.Bounced, t.now
		r.Attempts++
		t.bounced = append(t.bounced, i)
	default:
		r.Attempts++
		t.deferred = true
	}
}

// wait records that no host of recipient i's destination could be tried
// before until, every one cooling down after failing: not an attempt, so
// not counted; the recipient is due again after its backoff, and not
// before the first host may be tried again. Its status is the transient
// one retry.Unreached gives reply: the recipient waits, so a smart host's
// 535 5.7.8 to AUTH is kept as 4.7.8, as for the attempt that failed.
func (t *tally) wait(i int, reply *smtpreply.Reply, host string, until time.Time) {
	r := &t.m.Recipients[i]
	st := retry.Unreached(reply).Status
	r.LastReply, r.LastHost, r.Status = reply.Error(), host, st.String()
	t.recorded = append(t.recorded, verdict{idx: i, code: reply.Code, status: st})
	if t.waitUntil.IsZero() || until.Before(t.waitUntil) {
		t.waitUntil = until
	}
}

// commit writes the attempt's verdicts so far, in one synced batch with the
// reports they call for (one message's whole change is one
// batch): the NDR of the bounced recipients, the "relayed" DSN of those
// delivered to a next hop without DSN, and the delay warning once the
// message is older than DelayWarning. It logs each recipient's outcome.
//
// The commit does not depend on the attempt going on: it has a context of
// its own (commitTimeout), so that verdicts reached are written also when
// shutdown interrupts the attempt. It returns errGone if the message was
// deleted meanwhile, else nil (a failed commit is logged and its verdicts
// are kept for the next one).
func (w *Worker) commit(ctx context.Context, t *tally) error {
	if len(t.recorded) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	m := t.m
	m.LastAttempt = t.now
	m.NextAttempt = w.nextAttempt(t)
	m.WaitsFor = ""
	if !t.msgDeferred {
		m.WaitsFor = t.waitsFor
	}
	var (
		news  []queue.NewMessage
		kinds []dsn.Action // of each of news, for the log
	)
	add := func(kind dsn.Action, n []queue.NewMessage) {
		news = append(news, n...)
		for range n {
			kinds = append(kinds, kind)
		}
	}
	add(dsn.ActionFailed, w.ndrs(m, t.bounced, ""))
	add(dsn.ActionRelayed, w.relayedDSN(m, t.relayed))
	warned := m.DelayWarned
	add(dsn.ActionDelayed, w.delayWarning(m, t.now))
	err := w.Queue.Update(ctx, m, news...)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		w.Log.Info().Str("id", string(m.ID)).Msg("message deleted during delivery")
		return errGone
	case err != nil:
		// Nothing was written. The verdicts stay in t, so that a later
		// commit of this attempt writes them with their reports; without
		// one the message is tried again, and a delivered recipient may get
		// it twice (at-least-once).
		m.DelayWarned = warned
		w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("committing delivery results")
		return nil
	default:
		w.logOutcomes(t)
		w.logReports(m, news, kinds)
	}
	t.recorded, t.bounced, t.relayed = nil, nil, nil
	return nil
}

// commitTimeout bounds one commit of verdicts; it runs on after the
// attempt's context is cancelled (shutdown).
const commitTimeout = 10 * time.Second

// ndrs returns the NDR for the bounced recipients idx of m, if one is due.
// A failed message from <> is logged, counted (DoubleBounces) and dropped,
// never bounced (invariant 4); recipients whose NOTIFY excludes FAILURE get
// none.
func (w *Worker) ndrs(m *queue.Message, idx []int, why string) []queue.NewMessage {
	if len(idx) == 0 {
		return nil
	}
	if m.From == "" {
		for _, i := range idx {
			w.doubleBounces.Add(1)
			w.Log.Error().Str("id", string(m.ID)).Str("from", "").Str("rcpt", m.Recipients[i].Addr).
				Int("attempt", m.Recipients[i].Attempts).Str("reply", m.Recipients[i].LastReply).
				Msg("double bounce: a report from <> could not be delivered; dropped")
		}
		return nil
	}
	return w.report(m, "failed")(w.ndr.failed(m, idx, why))
}

// relayedDSN returns the "relayed" DSN for the delivered recipients idx of
// m that asked NOTIFY=SUCCESS, if any (RFC 3461 §5.2.2).
func (w *Worker) relayedDSN(m *queue.Message, idx []int) []queue.NewMessage {
	if len(idx) == 0 {
		return nil
	}
	return w.report(m, "relayed")(w.ndr.relayed(m, idx))
}

// delayWarning returns the delay DSN of m when it has just become due: once
// per message, when it has waited DelayWarning (0: never) and recipients
// are still pending; only those whose NOTIFY allows DELAY (or who gave
// none) are named, and never to <>. It sets m.DelayWarned, to be committed
// in the same batch.
func (w *Worker) delayWarning(m *queue.Message, now time.Time) []queue.NewMessage {
	rt := w.retryTiming()
	if rt.delayWarning <= 0 || m.DelayWarned || now.Sub(m.Received) < rt.delayWarning {
		return nil
	}
	var idx []int
	for _, i := range m.Pending() {
		if m.Recipients[i].LastReply != "" {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	m.DelayWarned = true
	return w.report(m, "delayed")(w.ndr.delayed(m, idx, m.Received.Add(rt.lifetime)))
}

// report turns a report maker's result into the messages to enqueue; a
// report that cannot be composed is logged and left out: the verdicts
// matter more than the report.
func (w *Worker) report(m *queue.Message, kind string) func(*queue.NewMessage, error) []queue.NewMessage {
	return func(n *queue.NewMessage, err error) []queue.NewMessage {
		if err != nil {
			w.Log.Error().Err(err).Str("id", string(m.ID)).Str("kind", kind).Msg("composing a delivery status notification")
			return nil
		}
		if n == nil {
			return nil
		}
		return []queue.NewMessage{*n}
	}
}

// nextAttempt is when m is due again: after the backoff of its most-tried
// pending recipient once the attempt deferred one; before that (a commit
// of the first transactions while the rest are still to be tried) at
// once, so that a crash meanwhile leaves the rest due.
func (w *Worker) nextAttempt(t *tally) time.Time {
	if !t.deferred && t.waitUntil.IsZero() {
		return t.now
	}
	attempts := 1
	for _, i := range t.m.Pending() {
		attempts = max(attempts, t.m.Recipients[i].Attempts)
	}
	// Mail released by its destination's return counts its backoff again
	// from there (queue.Envelope.Released).
	attempts = max(1, attempts-t.m.Released)
	next := t.now.Add(w.retryTiming().backoff.Delay(attempts))
	// A destination cooling down is tried no earlier than its cool-down
	// ends, and no earlier than the backoff either: while it is down,
	// every queued message must not be looked at again each time a
	// cool-down ends. (An operator's flush clears the cool-downs.)
	return latest(next, t.waitUntil)
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (w *Worker) logOutcomes(t *tally) {
	m := t.m
	delay := t.now.Sub(m.Received)
	for _, v := range t.recorded {
		r := &m.Recipients[v.idx]
		ev, res := w.Log.Warn(), ResultDeferred
		switch r.State {
		case queue.Delivered:
			ev, res = w.Log.Info(), ResultDelivered
		case queue.Bounced:
			ev, res = w.Log.Error(), ResultBounced
		}
		ev = ev.Str("id", string(m.ID)).Str("from", m.From).Str("rcpt", r.Addr).
			Str("dest", r.LastHost).Int("attempt", r.Attempts).Dur("delay", delay).
			Str("message_id", m.MessageID).Str("subject", m.Subject)
		ev = ev.Int("code", v.code).Str("enhanced", v.status.String())
		if r.State != queue.Delivered {
			ev = ev.Str("explain", explain.Summary(v.status))
		}
		if !r.State.Final() {
			ev = ev.Time("next_attempt", m.NextAttempt)
		}
		ev.Str("reply", r.LastReply).Msg(res.String())
		w.observe(Outcome{ID: m.ID, Rcpt: r.Addr, Result: res, Host: r.LastHost, Reply: r.LastReply, Took: w.Now().Sub(t.now),
			MessageID: m.MessageID, Subject: m.Subject})
	}
}

// logReports logs each report queued about m with its kind (kinds[i] is
// that of news[i]).
func (w *Worker) logReports(m *queue.Message, news []queue.NewMessage, kinds []dsn.Action) {
	for i, n := range news {
		w.Log.Info().Str("id", string(n.ID)).Str("orig_id", string(m.ID)).Str("rcpt", n.Envelope.Recipients[0].Addr).
			Str("action", string(kinds[i])).Msg("dsn queued")
	}
}

// expire bounces every pending recipient of m with 4.4.7: it outlived the
// queue lifetime. The NDR says how often and how long delivery was tried
// and gives each recipient's last reply. Expiry is no attempt:
// m.LastAttempt keeps the time of the last real one.
func (w *Worker) expire(ctx context.Context, m *queue.Message) {
	t := newTally(m, w.Now())
	reply := &smtpreply.Reply{Code: 554, Enhanced: smtpreply.CodeExpired, Local: true,
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
	news := w.ndrs(m, t.bounced, "expired")
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	if err := w.Queue.Update(ctx, m, news...); err != nil && !errors.Is(err, queue.ErrNotFound) {
		w.Log.Error().Err(err).Str("id", string(m.ID)).Msg("committing expiry")
		return
	}
	for _, i := range t.bounced {
		w.Log.Error().Str("id", string(m.ID)).Str("from", m.From).Str("rcpt", m.Recipients[i].Addr).
			Str("enhanced", smtpreply.CodeExpired.String()).Int("attempt", m.Recipients[i].Attempts).
			Dur("delay", t.now.Sub(m.Received)).Str("reply", m.Recipients[i].LastReply).
			Str("message_id", m.MessageID).Str("subject", m.Subject).Msg("expired")
		w.observe(Outcome{ID: m.ID, Rcpt: m.Recipients[i].Addr, Result: ResultExpired, Reply: m.Recipients[i].LastReply,
			MessageID: m.MessageID, Subject: m.Subject})
	}
	kinds := make([]dsn.Action, len(news))
	for i := range kinds {
		kinds[i] = dsn.ActionFailed
	}
	w.logReports(m, news, kinds)
}
