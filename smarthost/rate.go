package smarthost

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"relayq/config"
	"relayq/internal/smtpreply"
)

// minRate is the lowest rate a destination is ever lowered to: one
// message an hour. Below it, mail would wait longer than any backoff.
const minRate = 1.0 / 3600

// rateRaise is the factor a learned rate rises by after a run of
// successful deliveries that had to wait for it: slow, as a provider's
// limit is usually steady.
const rateRaise = 1.1

// pacer paces the messages sent to each destination: at most its
// configured rate (Route.Rate), or the lower one learned from a reply
// saying we send too fast (retry.Decision.LowerRate), evenly spaced. The
// scheduler asks reserve before it starts a delivery to a destination; a
// destination out of rate is skipped like one at its cap, and Run wakes
// when it may send again. Nothing is deferred and no attempt is counted
// for waiting.
//
// With a cluster, a delivery that reserve let start also asks the
// cluster's limiter, which all nodes share (Worker.clusterPaced); when it
// says wait, hold keeps reserve refusing the destination until then.
type pacer struct {
	now        func() time.Time
	raiseAfter int // successes that waited for the rate before a raise

	mu struct {
		sync.Mutex
		dests map[string]*paced
	}
}

// paced is one destination's rate.
type paced struct {
	configured float64     // messages a second (config.Rate); 0: none
	rate       config.Rate // as configured, for the status view
	learned    float64     // set by the last reply saying too fast; 0: none
	from       float64     // the rate in force when a rate was first learned
	reason     string      // the reply that set learned
	updated    time.Time
	lim        *rate.Limiter // at inForce, burst 1; nil: unpaced
	successes  int           // in a row, each after waiting for the rate
	waitedAt   time.Time     // when a delivery last had to wait for it
	// sent counts the deliveries started in the minute from minuteAt and
	// in the minute before (prev, if hadPrev): the rate observed, for a
	// destination with no rate yet that says we send too fast.
	minuteAt   time.Time
	sent, prev int
	hadPrev    bool
	used       time.Time // when a delivery last started
	// notBefore is when the cluster's shared rate allows the next
	// message (hold); reserve refuses until then.
	notBefore time.Time
	// shared is the learned rate the cluster showed at the last follow
	// (sharedSeen: there was one): only a change of it is followed.
	shared     float64
	sharedSeen bool
	// unshared: the last change of learned was made while the cluster
	// was unreachable; it is published when the cluster answers again.
	unshared bool
}

func newPacer(raiseAfter int, now func() time.Time) *pacer {
	p := &pacer{now: now, raiseAfter: raiseAfter}
	p.mu.dests = map[string]*paced{}
	return p
}

func (p *pacer) destLocked(dest string) *paced {
	d := p.mu.dests[dest]
	if d == nil {
		d = &paced{}
		p.mu.dests[dest] = d
	}
	return d
}

// inForce is the rate d is paced at (messages a second), 0 for none.
func (d *paced) inForce() float64 {
	if d.learned > 0 && (d.configured == 0 || d.learned < d.configured) {
		return d.learned
	}
	return d.configured
}

// applyLocked sets d's limiter to the rate in force.
func (d *paced) applyLocked(now time.Time) {
	r := d.inForce()
	switch {
	case r == 0:
		d.lim = nil
	case d.lim == nil:
		d.lim = rate.NewLimiter(rate.Limit(r), 1)
	case float64(d.lim.Limit()) != r:
		d.lim.SetLimitAt(now, rate.Limit(r))
	}
}

// configure sets dest's configured rate (a route's, at every routing: a
// reload applies to queued mail).
func (p *pacer) configure(dest string, r config.Rate) {
	perSecond := r.PerSecond()
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[dest]
	if d == nil && perSecond == 0 {
		return // unpaced and nothing learned: nothing to keep
	}
	d = p.destLocked(dest)
	d.rate = r
	if d.configured != perSecond {
		d.configured = perSecond
		d.applyLocked(p.now())
	}
}

// reserve takes a message's turn of dest's rate at now: ok, or not before
// at (then nothing is taken).
func (p *pacer) reserve(dest string, now time.Time) (ok bool, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(dest)
	if now.Before(d.notBefore) {
		d.waitedAt = now
		return false, d.notBefore
	}
	if d.lim != nil {
		r := d.lim.ReserveN(now, 1)
		if wait := r.DelayFrom(now); wait > 0 {
			r.CancelAt(now)
			d.waitedAt = now
			return false, now.Add(wait)
		}
	}
	d.countLocked(now)
	return true, now
}

// hold keeps dest from starting a delivery before until: the cluster's
// shared rate refused the one reserve let start. Run's paced timer wakes
// the destination's line then (sched.pacedWait). The limiter's turn that
// delivery took is given back (a fresh limiter, which has one): the
// destination may go at until, not a local interval after the refused
// turn, which would leave this node behind the others at every turn of
// the shared rate, and starve it.
func (p *pacer) hold(dest string, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	d := p.destLocked(dest)
	if until.After(d.notBefore) {
		d.notBefore = until
	}
	d.lim = nil
	d.applyLocked(now)
	d.waitedAt = now
}

// allowed re-anchors dest's limiter at now, when the cluster's shared
// rate let the delivery reserve started go: its next turn is an interval
// after the cluster's decision, as the cluster's own is, not after the
// reservation made a delivery's setup earlier. A node anchored at its
// reservations would be back at every turn of the shared rate that much
// ahead of the nodes that held for it, and starve them.
func (p *pacer) allowed(dest string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[dest]
	if d == nil || d.lim == nil {
		return
	}
	d.lim = nil
	d.applyLocked(now)
	d.lim.ReserveN(now, 1) // a fresh limiter has the turn: taken at now
}

// perSecond is the rate dest is paced at now (configured or learned), in
// messages a second; 0 for none.
func (p *pacer) perSecond(dest string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.mu.dests[dest]; d != nil {
		return d.inForce()
	}
	return 0
}

// countLocked counts a delivery started at now.
func (d *paced) countLocked(now time.Time) {
	switch since := now.Sub(d.minuteAt); {
	case since >= 2*time.Minute:
		d.minuteAt, d.sent, d.prev, d.hadPrev = now, 0, 0, false
	case since >= time.Minute:
		d.minuteAt, d.prev, d.sent, d.hadPrev = d.minuteAt.Add(time.Minute), d.sent, 0, true
	}
	d.sent++
	d.used = now
}

// observed is the rate of deliveries started over the last minute or
// two, in messages a second.
func (d *paced) observed(now time.Time) float64 {
	span := now.Sub(d.minuteAt)
	if span >= 2*time.Minute || d.minuteAt.IsZero() {
		return 0
	}
	if d.hadPrev {
		span += time.Minute
	}
	return float64(d.sent+d.prev) / max(span, time.Second).Seconds()
}

// reap forgets the destinations that have no rate, configured or learned,
// and sent nothing for two minutes (bounded memory: MX delivery meets
// many destinations).
func (p *pacer) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for name, d := range p.mu.dests {
		if d.configured == 0 && d.learned == 0 && now.Sub(d.used) > 2*time.Minute {
			delete(p.mu.dests, name)
		}
	}
}

// rateChange says how a destination's learned rate changed, for the log
// and the store.
type rateChange struct {
	changed  bool
	from, to float64 // messages a second; to 0: nothing learned any more
}

// lower answers a reply saying dest is sent too many messages: its rate
// becomes half the one in force (or, with none, of the rate observed over
// the last minute), at least minRate.
func (p *pacer) lower(dest string, r *smtpreply.Reply) rateChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	d := p.destLocked(dest)
	cur := d.inForce()
	if cur == 0 {
		cur = d.observed(now)
	}
	ch := rateChange{from: cur, to: max(cur/2, minRate)}
	if cur == 0 { // nothing sent of late: the least rate
		ch.to = minRate
	}
	if d.learned == 0 {
		d.from = max(cur, d.configured)
	}
	d.learned, d.reason, d.updated, d.successes = ch.to, r.Error(), now, 0
	ch.changed = true
	d.applyLocked(now)
	return ch
}

// succeeded counts a delivery to dest that ended well. A run of them that
// had to wait for a learned rate shows it holds the destination back: the
// rate rises by rateRaise, and is forgotten once it reaches the configured
// one or the one in force before it was learned.
func (p *pacer) succeeded(dest string) rateChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	d := p.mu.dests[dest]
	if d == nil || d.learned == 0 || now.Sub(d.waitedAt) > time.Minute+time.Duration(float64(time.Second)/d.learned) {
		return rateChange{}
	}
	if d.successes++; d.successes < p.raiseAfter {
		return rateChange{}
	}
	d.successes = 0
	ch := rateChange{changed: true, from: d.learned, to: d.learned * rateRaise}
	if ceiling := max(d.configured, d.from); ceiling == 0 || ch.to >= ceiling {
		ch.to = 0 // recovered
		d.reason = ""
	}
	d.learned, d.updated = ch.to, now
	d.applyLocked(now)
	return ch
}

// follow makes dest's learned rate the one the cluster shows (shared, in
// messages a second; 0: none learned) when that changed since the last
// follow: another node lowered or raised it, or forgot it. A change of
// this node's own (lower, succeeded) is published first and only then
// seen here, so it is never undone by a view older than it. The first
// view of a destination is followed too: a rate restored at start that
// the cluster has forgotten since is forgotten.
func (p *pacer) follow(dest string, shared float64) rateChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[dest]
	if d == nil && shared == 0 {
		return rateChange{} // unpaced and nothing learned: nothing to keep
	}
	d = p.destLocked(dest)
	if d.sharedSeen && d.shared == shared {
		return rateChange{}
	}
	d.shared, d.sharedSeen = shared, true
	if d.learned == shared {
		return rateChange{}
	}
	now := p.now()
	ch := rateChange{changed: true, from: d.inForce(), to: shared}
	switch {
	case shared == 0:
		d.reason = ""
	case d.learned == 0:
		d.from = max(d.inForce(), d.configured)
		d.reason = "learned by another relayq node"
	}
	d.learned, d.updated, d.successes = shared, now, 0
	d.applyLocked(now)
	return ch
}

// markUnshared notes that dest's learned rate did not reach the cluster.
func (p *pacer) markUnshared(dest string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.destLocked(dest).unshared = true
}

// takeUnshared returns dest's learned rate (0: none) if it is still to be
// published, and clears the note.
func (p *pacer) takeUnshared(dest string) (perSecond float64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[dest]
	if d == nil || !d.unshared {
		return 0, false
	}
	d.unshared = false
	return d.learned, true
}

// rateState is what is persisted of a destination's rate (in destState).
type rateState struct {
	LearnedPerHour float64   `json:"learned_rate,omitempty"`
	FromPerHour    float64   `json:"rate_from,omitempty"`
	Reason         string    `json:"rate_reason,omitempty"`
	Updated        time.Time `json:"rate_updated,omitzero"`
}

// state returns dest's learned rate, to persist.
func (p *pacer) state(dest string) rateState {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[dest]
	if d == nil {
		return rateState{}
	}
	return rateState{LearnedPerHour: d.learned * 3600, FromPerHour: d.from * 3600, Reason: d.reason, Updated: d.updated}
}

// load restores dest's learned rate (at start).
func (p *pacer) load(dest string, s rateState) {
	if s.LearnedPerHour <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(dest)
	d.learned, d.from = max(s.LearnedPerHour/3600, minRate), s.FromPerHour/3600
	d.reason, d.updated = s.Reason, s.Updated
	d.applyLocked(p.now())
}

// RateStatus is a destination's rate, for the status view.
type RateStatus struct {
	// Limit is the configured rate (a route's, the smart host's or the MX
	// one); zero: none.
	Limit config.Rate
	// LearnedPerHour is the rate a reply saying we send too fast set,
	// in messages an hour; 0: none. Reason is that reply.
	LearnedPerHour float64
	Reason         string
}

// Learned is LearnedPerHour as a config.Rate (per minute when a whole
// number of them); zero for none.
func (r RateStatus) Learned() config.Rate {
	if r.LearnedPerHour <= 0 {
		return config.Rate{}
	}
	return perHourRate(r.LearnedPerHour / 3600)
}

// snapshot returns the rate of every paced destination.
func (p *pacer) snapshot() map[string]RateStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]RateStatus, len(p.mu.dests))
	for name, d := range p.mu.dests {
		if d.configured == 0 && d.learned == 0 {
			continue
		}
		out[name] = RateStatus{Limit: d.rate, LearnedPerHour: d.learned * 3600, Reason: d.reason}
	}
	return out
}

// perHourRate is a rate in messages a second as a config.Rate: per minute
// when it is a whole number of them, else per hour (rounded).
func perHourRate(perSecond float64) config.Rate {
	perMinute := perSecond * 60
	if perMinute >= 1 && perMinute == float64(int(perMinute)) {
		return config.Rate{PerMinute: int(perMinute)}
	}
	return config.Rate{PerHour: int(perSecond*3600 + 0.5)}
}

// lowerRate answers a reply saying dest is sent too many messages: its
// rate is lowered, published to the cluster (if any), logged and stored.
func (w *Worker) lowerRate(ctx context.Context, dest string, r *smtpreply.Reply) {
	ch := w.pacer.lower(dest, r)
	w.publishRate(ctx, dest, ch.to)
	w.Log.Warn().Str("dest", dest).Float64("rate_per_hour", ch.to*3600).Float64("previous_rate_per_hour", ch.from*3600).
		Int("code", r.Code).Str("enhanced", r.Status().String()).Str("reply", r.Error()).
		Msg("destination says we send too many messages; rate lowered")
	w.persist(ctx, dest)
}

// rateSucceeded counts a successful delivery towards a raise of dest's
// learned rate (published to the cluster, logged and stored).
func (w *Worker) rateSucceeded(ctx context.Context, dest string) {
	ch := w.pacer.succeeded(dest)
	if !ch.changed {
		return
	}
	w.publishRate(ctx, dest, ch.to)
	w.Log.Warn().Str("dest", dest).Float64("rate_per_hour", ch.to*3600).Float64("previous_rate_per_hour", ch.from*3600).
		Msg("destination took a run of messages at its learned rate; rate raised (0: the configured one again)")
	w.persist(ctx, dest)
}

// rateTurn takes dest's rate's turn for one more transaction of a delivery
// already started (a message split by "too many recipients": a rate counts
// transactions): false when this node's pacer or the cluster's shared
// rate says wait. The scheduler then waits for the turn as for any
// delivery (the gate, Run's paced timer).
func (w *Worker) rateTurn(ctx context.Context, dest string) bool {
	if ok, _ := w.pacer.reserve(dest, w.Now()); !ok {
		return false
	}
	return !w.clusterPaced(ctx, dest)
}
