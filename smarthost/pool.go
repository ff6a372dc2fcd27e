package smarthost

import (
	"sort"
	"sync"
	"time"

	"relayq/cluster"
	"relayq/internal/smtpreply"
)

const (
	// DefaultRaiseAfter is how many successful transactions in a row, with
	// the destination's connections all in use, raise a learned cap by one.
	DefaultRaiseAfter = 20
	// maxRaiseAfter bounds the run needed for a raise: it doubles each time
	// a raise is answered by another 421 4.3.2, so that a server whose
	// limit is steady is probed ever more rarely.
	maxRaiseAfter = 1280
	// forgetAfter is how long an unused destination with nothing learned
	// is kept for the status view before it is forgotten (bounded memory).
	forgetAfter = time.Hour
	// atCapRecent is how recent a refused cluster lease must be for a
	// success to count towards a raise: the nodes together use every
	// connection the cap allows.
	atCapRecent = 2 * cluster.RetryAtCap
)

// pool holds the connections to every destination and enforces the caps:
// never more than the destination's current cap open to one destination
// (in use, idle or being dialled), never more than total open in all
// (docs/design.md "Invariants" 7). It also keeps what was learned about each
// destination: the cap a 421 4.3.2 taught, and its slow raise on success.
type pool struct {
	maxPerDest  int
	raiseAfter  int
	raiseHold   time.Duration // no raise this long after the cap was lowered (clusterRaiseHold); 0: none
	idleTimeout time.Duration
	now         func() time.Time
	total       chan struct{} // one token per open connection, all destinations
	// wake is signalled when a destination's hold ends (hold, unhold):
	// its line may be served again.
	wake chan struct{}

	mu struct {
		sync.Mutex
		dests map[string]*destination
	}
}

// destination is the state of one next hop: a smart host, or a domain's MX set.
type destination struct {
	name      string
	cap       int       // current cap, 1..maxPerDest
	learned   int       // cap set by the last 421 4.3.2; 0 = never
	reason    string    // the reply that set learned
	updated   time.Time // when cap last changed
	need      int       // successes in a row needed for the next raise
	successes int       // successes in a row at the current cap, all in use
	lastReply string    // the last failure of any of its hosts
	lastAt    time.Time // when
	used      time.Time // last lease given back
	// heldUntil: the cluster refused a lease (every connection the
	// destination allows is held by the nodes together); until then no
	// new connection is tried (capOf), only the open ones are used.
	heldUntil time.Time
	atCapAt   time.Time // when the cluster last refused a lease
	lowered   time.Time // when the cap was last lowered (here or by another node)
	// limit is this node's share of cap (cluster: its fallback share
	// while Redis is unreachable); 0: all of it.
	limit int

	open int        // connections open: in use, idle and being dialled
	idle []idleConn // most recently used last
	// waiting says whether mail deferred because the destination failed
	// may be indexed for it (queue.ReleaseDest): unknown at first (a
	// restart), then yes after such a deferral, no after a release.
	waiting waitState
}

type waitState uint8

const (
	waitUnknown waitState = iota
	waitYes
	waitNo
)

type idleConn struct {
	c     Session
	since time.Time
}

func newPool(total, perDest, raiseAfter int, idleTimeout time.Duration, now func() time.Time) *pool {
	p := &pool{maxPerDest: perDest, raiseAfter: raiseAfter, idleTimeout: idleTimeout, now: now,
		total: make(chan struct{}, total), wake: make(chan struct{}, 1)}
	p.mu.dests = map[string]*destination{}
	return p
}

func (p *pool) destLocked(name string) *destination {
	d := p.mu.dests[name]
	if d == nil {
		d = &destination{name: name, cap: p.maxPerDest, need: p.raiseAfter}
		p.mu.dests[name] = d
	}
	return d
}

// lease is the right to use one connection slot of a destination. conn is
// an idle session handed over for reuse, or nil: then the holder dials.
type lease struct {
	dest *destination
	conn Session
}

// tryAcquire returns a lease on a slot of name: an idle connection if
// there is one, else a free slot to dial into; nil when the destination is
// at its cap or every connection (MaxConns) is in use. It never waits: the
// scheduler gives a delivery a destination's slot before it starts
// (sched), so nil means the cap was lowered meanwhile, and the message
// goes back to the destination's line.
func (p *pool) tryAcquire(name string) *lease {
	var stale []Session
	p.mu.Lock()
	l := p.takeLocked(p.destLocked(name), &stale)
	p.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
	return l
}

// noteWaiting records that mail was deferred because name failed.
func (p *pool) noteWaiting(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.destLocked(name).waiting = waitYes
}

// takeRelease reports whether name may have mail waiting for it to take
// mail again, and records that it has none from now on.
func (p *pool) takeRelease(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(name)
	was := d.waiting
	d.waiting = waitNo
	return was != waitNo
}

// destCap is name's cap as the destination sets it (configured, or
// learned from a 421 4.3.2), without this node's share of it: what the
// cluster's leases count against.
func (p *pool) destCap(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.mu.dests[name]; d != nil {
		return d.cap
	}
	return p.maxPerDest
}

// capOf returns the current cap of name: while the cluster holds every
// connection name allows (hold), only the connections open now.
func (p *pool) capOf(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.mu.dests[name]
	switch {
	case d == nil:
		return p.maxPerDest
	case time.Now().Before(d.heldUntil): // a cadence, like the wake: the real clock
		return min(d.allowed(), d.open)
	}
	return d.allowed()
}

// allowed is d's cap, or this node's share of it when smaller.
func (d *destination) allowed() int {
	if d.limit > 0 {
		return min(d.cap, d.limit)
	}
	return d.cap
}

// share sets name's limit to shareOf(name, cap) (cluster.Client.Share):
// idle connections beyond it are closed, busy ones are not reused.
func (p *pool) share(name string, shareOf func(dest string, cap int) int) {
	var stale []Session
	p.mu.Lock()
	d := p.destLocked(name)
	d.limit = shareOf(name, d.cap)
	p.shedLocked(d, &stale)
	p.mu.Unlock()
	closeAll(stale)
}

// shareAll is share for every destination with connections open, from
// Run's reap tick: a node that lost the cluster's store keeps to its
// fallback share within a tick, not at its next dial, which a node with
// enough connections to reuse may never make.
func (p *pool) shareAll(shareOf func(dest string, cap int) int) {
	var stale []Session
	p.mu.Lock()
	for name, d := range p.mu.dests {
		if d.open > 0 {
			d.limit = shareOf(name, d.cap)
			p.shedLocked(d, &stale)
		}
	}
	p.mu.Unlock()
	closeAll(stale)
}

// hold stops new connections to name for cluster.RetryAtCap: the cluster
// refused a lease. Run is woken when it ends.
func (p *pool) hold(name string) {
	p.mu.Lock()
	d := p.destLocked(name)
	now := time.Now()
	was := now.Before(d.heldUntil)
	d.heldUntil, d.atCapAt = now.Add(cluster.RetryAtCap), p.now()
	p.mu.Unlock()
	if !was {
		time.AfterFunc(cluster.RetryAtCap, p.signal)
	}
}

// unhold ends name's hold: this node gave a lease of it back, so the
// cluster is likely to grant one now.
func (p *pool) unhold(name string) {
	p.mu.Lock()
	d := p.mu.dests[name]
	held := d != nil && time.Now().Before(d.heldUntil)
	if held {
		d.heldUntil = time.Time{}
	}
	p.mu.Unlock()
	if held {
		p.signal()
	}
}

func (p *pool) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// follow makes name's cap the one the cluster learned (bounded by the
// configured maximum), so that every node keeps the cap one node learned;
// idle connections beyond it are closed, busy ones are not reused.
func (p *pool) follow(name string, learned int) {
	var stale []Session
	p.mu.Lock()
	d := p.destLocked(name)
	if c := min(max(learned, 1), p.maxPerDest); c != d.cap {
		if c < d.cap {
			d.lowered = p.now()
		}
		d.cap, d.updated = c, p.now()
		p.shedLocked(d, &stale)
	}
	p.mu.Unlock()
	closeAll(stale)
}

// shedLocked moves idle connections of d beyond what it allows to stale.
func (p *pool) shedLocked(d *destination, stale *[]Session) {
	for d.open > d.allowed() && len(d.idle) > 0 {
		*stale = append(*stale, d.idle[0].c)
		d.idle = d.idle[1:]
		p.dropLocked(d)
	}
}

func closeAll(sessions []Session) {
	for _, c := range sessions {
		c.Close()
	}
}

// takeLocked returns a lease on an idle connection or a free slot of d, or
// nil. Idle connections past the idle timeout go to stale, to be closed
// outside the lock.
func (p *pool) takeLocked(d *destination, stale *[]Session) *lease {
	for len(d.idle) > 0 {
		ic := d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if p.now().Sub(ic.since) < p.idleTimeout {
			return &lease{dest: d, conn: ic.c}
		}
		p.dropLocked(d)
		*stale = append(*stale, ic.c)
	}
	if d.open >= d.allowed() {
		return nil
	}
	for {
		select {
		case p.total <- struct{}{}:
			d.open++
			return &lease{dest: d}
		default:
		}
		// All connections are open; an idle one to another destination
		// would otherwise hold its token until the idle timeout.
		c := p.stealIdleLocked(d)
		if c == nil {
			return nil
		}
		*stale = append(*stale, c)
	}
}

// stealIdleLocked closes the oldest idle connection of a destination other
// than d, returning it (to be closed outside the lock), or nil if none.
func (p *pool) stealIdleLocked(d *destination) Session {
	var victim *destination
	for _, o := range p.mu.dests {
		if o != d && len(o.idle) > 0 && (victim == nil || o.idle[0].since.Before(victim.idle[0].since)) {
			victim = o
		}
	}
	if victim == nil {
		return nil
	}
	c := victim.idle[0].c
	victim.idle = victim.idle[1:]
	victim.open--
	<-p.total
	return c
}

// release gives the slot back: keep c idle for reuse if it is usable and
// the destination is within its cap, else close it.
func (p *pool) release(l *lease, c Session, reusable bool) {
	p.mu.Lock()
	d := l.dest
	d.used = p.now()
	if reusable && c != nil && d.open <= d.allowed() {
		d.idle = append(d.idle, idleConn{c: c, since: p.now()})
		p.mu.Unlock()
		return
	}
	p.dropLocked(d)
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// dropLocked forgets one open connection of d.
func (p *pool) dropLocked(d *destination) {
	d.open--
	<-p.total
}

// capChange says how a destination's cap changed, for the log and the
// store; changed is false when it did not.
type capChange struct {
	changed  bool
	open     int // connections open when it happened, the refused one included
	from, to int
	max      int // the configured maximum then
}

// refused answers a 421 4.3.2 on l's connection: the destination
// took fewer connections than were open, so its cap becomes that number
// minus one (at least 1), counted before l's slot is given back: this
// node's, or live, the connections of all nodes (cluster), when more. The
// slot is given back (l's connection, if any, is the caller's to close),
// and idle connections beyond the new cap are closed.
func (p *pool) refused(l *lease, r *smtpreply.Reply, live int) capChange {
	var stale []Session
	p.mu.Lock()
	d := l.dest
	ch := capChange{open: max(d.open, live), from: d.cap}
	ch.to = max(1, min(d.cap, ch.open-1))
	d.successes = 0
	if ch.to < d.cap {
		if d.learned > 0 && d.cap > d.learned {
			// A raise above what was learned was refused again: probe
			// less often.
			d.need = min(d.need*2, maxRaiseAfter)
		}
		ch.changed = true
		d.cap = ch.to
		d.learned, d.reason, d.updated, d.lowered = ch.to, r.Error(), p.now(), p.now()
	}
	d.lastReply, d.lastAt = r.Error(), p.now()
	d.used = p.now()
	p.dropLocked(d)
	p.shedLocked(d, &stale)
	p.mu.Unlock()
	closeAll(stale)
	return ch
}

// succeeded counts a successful transaction on l's connection. A run of
// them while every connection the cap allows is open (on this node, or on
// all nodes: the cluster refused a lease within atCapRecent) shows the cap
// is what holds the destination back; then the cap rises by one, up to the
// configured maximum.
func (p *pool) succeeded(l *lease) capChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := l.dest
	ch := capChange{open: d.open, from: d.cap, to: d.cap, max: p.maxPerDest}
	allInUse := d.open >= d.cap || p.now().Sub(d.atCapAt) < atCapRecent
	if !allInUse || d.cap >= p.maxPerDest || p.now().Sub(d.lowered) < p.raiseHold {
		return ch
	}
	if d.successes++; d.successes < d.need {
		return ch
	}
	d.successes = 0
	d.cap++
	if d.cap == p.maxPerDest {
		d.need = p.raiseAfter // fully recovered: start afresh
	}
	d.updated = p.now()
	ch.changed, ch.to = true, d.cap
	return ch
}

// setMax changes the configured maximum per destination to n (see
// Worker.SetMaxConnsPerDest). Idle connections beyond a lowered cap are
// closed; release closes busy ones when they come back.
func (p *pool) setMax(n int) {
	var stale []Session
	p.mu.Lock()
	old := p.maxPerDest
	p.maxPerDest = n
	for _, d := range p.mu.dests {
		if d.cap >= old || d.cap > n {
			d.cap = n // nothing learned holds it below the maximum
		}
		p.shedLocked(d, &stale)
	}
	p.mu.Unlock()
	closeAll(stale)
}

// note records the last failure of one of dest's hosts, for the status view.
func (p *pool) note(name string, r *smtpreply.Reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(name)
	d.lastReply, d.lastAt = r.Error(), p.now()
}

// destState is what is persisted of a destination (queue d/<name>).
type destState struct {
	Cap     int       `json:"cap"`
	Learned int       `json:"learned,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Updated time.Time `json:"updated"`
	Need    int       `json:"need,omitempty"`

	rateState // the learned message rate (rate.go)
}

// state returns the persistent state of name.
func (p *pool) state(name string) destState {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(name)
	return destState{Cap: d.cap, Learned: d.learned, Reason: d.reason, Updated: d.updated, Need: d.need}
}

// load restores a destination's learned state (at start), within the
// configured maximum, which may have changed since.
func (p *pool) load(name string, s destState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(name)
	d.cap = min(max(s.Cap, 1), p.maxPerDest)
	d.learned, d.reason, d.updated = s.Learned, s.Reason, s.Updated
	if s.Need > 0 {
		d.need = min(s.Need, maxRaiseAfter)
	}
}

// DestinationStatus is the state of one destination, for the status view.
type DestinationStatus struct {
	Name        string    // "smarthost:host:port,…" or "mx:host,…" (sorted MX hosts)
	Cap         int       // current cap on open connections
	LearnedCap  int       // cap set by the last 421 4.3.2; 0 = never
	MaxCap      int       // the configured maximum (max_connections_per_destination)
	Reason      string    // the reply that set LearnedCap
	Open        int       // connections open now: in use, idle and being dialled
	Idle        int       // of those, idle
	Waiting     int       // messages waiting in its line for a slot or its rate
	LastReply   string    // the last failure of any of its hosts
	LastReplyAt time.Time // when
	Updated     time.Time // when Cap last changed

	Rate RateStatus // its message rate (rate.go)
}

func (p *pool) snapshot() []DestinationStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]DestinationStatus, 0, len(p.mu.dests))
	for _, d := range p.mu.dests {
		out = append(out, DestinationStatus{
			Name: d.name, Cap: d.cap, LearnedCap: d.learned, MaxCap: p.maxPerDest,
			Reason: d.reason, Open: d.open, Idle: len(d.idle),
			LastReply: d.lastReply, LastReplyAt: d.lastAt, Updated: d.updated,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// reap closes connections idle longer than the idle timeout, and forgets
// destinations unused for long that have nothing learned to remember.
func (p *pool) reap() {
	var stale []Session
	p.mu.Lock()
	now := p.now()
	for name, d := range p.mu.dests {
		keep := d.idle[:0]
		for _, ic := range d.idle {
			if now.Sub(ic.since) >= p.idleTimeout {
				stale = append(stale, ic.c)
				p.dropLocked(d)
				continue
			}
			keep = append(keep, ic)
		}
		d.idle = keep
		if d.open == 0 && d.learned == 0 && d.cap == p.maxPerDest && now.Sub(d.used) > forgetAfter {
			delete(p.mu.dests, name)
		}
	}
	p.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// closeIdle closes every idle connection (at shutdown).
func (p *pool) closeIdle() {
	var all []Session
	p.mu.Lock()
	for _, d := range p.mu.dests {
		for _, ic := range d.idle {
			all = append(all, ic.c)
			p.dropLocked(d)
		}
		d.idle = nil
	}
	p.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}
