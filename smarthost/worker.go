package smarthost

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/smtpreply"
	"relayq/queue"
	"relayq/retry"
)

// Queue is what the worker needs of the store; *queue.Store is one.
type Queue interface {
	// DueAfter returns up to limit due schedule entries not skipped that
	// come after the cursor (all for the zero Cursor), when the next
	// non-skipped one is due (zero if none), and the cursor after the
	// last one returned.
	DueAfter(now time.Time, c queue.Cursor, limit int, skip func(queue.ID) bool) ([]queue.Entry, time.Time, queue.Cursor, error)
	// Recheck shows the next scan the message's schedule entry, which
	// scans passed over while it was in flight.
	Recheck(id queue.ID) error
	// Get returns the stored message, or queue.ErrNotFound.
	Get(id queue.ID) (*queue.Message, error)
	// Changes counts the changes of operator state (hold, release of a
	// hold, bounce) and deletions, bumped after each commits: a message
	// read after Changes returned c still has its stored operator state
	// and exists while Changes still returns c (Update reconciles any
	// other change since: a flush's or a release's due time, Released).
	Changes() uint64
	// Body streams the body; the caller closes it.
	Body(id queue.ID) (io.ReadCloser, error)
	// Update commits the message's new state and any NDRs with fsync,
	// before returning; queue.ErrNotFound if it was deleted meanwhile.
	Update(ctx context.Context, m *queue.Message, news ...queue.NewMessage) error
	// Wake is signalled when something may have become due.
	Wake() <-chan struct{}
	// NewID returns a fresh ID for an NDR.
	NewID() queue.ID
	// ReleaseDest makes up to limit messages indexed as waiting for dest
	// due now, reporting how many and whether more may be indexed.
	ReleaseDest(ctx context.Context, dest string, limit int) (int, bool, error)
}

var _ Queue = (*queue.Store)(nil)

// Route is where one domain's recipients of one sender go for one attempt.
type Route struct {
	// Destination names the next hop for caps, connection reuse and the
	// learned state: "smarthost:" and its hosts, or "mx:" and the domain's
	// MX hosts, sorted; with the AUTH username when the route has one
	// (two accounts at one provider are two destinations, and a
	// connection authenticated as one is never reused for the other).
	Destination string
	// Targets are the hosts (for MX: each host's addresses) to try, in
	// order, until one takes the message.
	Targets []Target
	// Rewrite is how the sender is rewritten on this route (rewrite.go).
	Rewrite Rewrite
	// Rate paces the messages sent to Destination (rate.go); zero: none.
	Rate config.Rate
}

// Router picks the route for the recipients at a domain of mail from a
// sender. It is asked at every attempt, so configuration changes apply to
// queued mail. Its errors are (or wrap) a *smtpreply.Reply: 451 4.4.3 for a
// temporary DNS failure, 550 5.1.2 for a domain that does not exist, 556
// 5.1.10 for a null MX.
type Router interface {
	// Route returns the route for recipients at domain of mail whose
	// envelope sender is sender ("" for the null sender).
	Route(ctx context.Context, sender, domain string) (*Route, error)
	// SenderClass names how Route treats sender, without routing: two
	// senders of one class get the same route for every domain. Plan
	// keys what it remembers of cooling destinations by it.
	SenderClass(sender string) string
}

// Static routes every domain to the same targets: a smart host.
type Static Route

// Route implements Router.
func (s *Static) Route(context.Context, string, string) (*Route, error) { return (*Route)(s), nil }

// SenderClass implements Router: every sender is routed alike.
func (s *Static) SenderClass(string) string { return "" }

// Worker takes due messages from the queue, delivers them, classifies every
// reply with retry, and commits the result: the one loop of
// relay → queue → smarthost worker → retry → queue.
type Worker struct {
	Queue  Queue
	Router Router
	// Courier opens the sessions with next hops; nil: the SMTP client
	// (smtpclient), dialling through Dialer and greeting as Hostname.
	Courier  Courier
	Dialer   Dialer // nil: a net.Dialer with a 30 s timeout
	Hostname string // EHLO name, NDR Reporting-MTA
	// Signer signs mail whose From: a route rewrote (rewrite.go), for
	// the rewritten domain; nil: such mail goes unsigned.
	Signer Signer
	// Backoff, Lifetime and DelayWarning are the initial retry timings;
	// SetRetry changes them while Run goes on.
	Backoff retry.Backoff
	// Lifetime is how long a message may stay queued; then 4.4.7.
	Lifetime time.Duration
	// MaxConns caps outbound connections (and concurrent attempts) in
	// total; MaxConnsPerDest per destination (initially: see
	// SetMaxConnsPerDest).
	MaxConns, MaxConnsPerDest int
	// IdleTimeout closes a reusable connection unused this long.
	IdleTimeout time.Duration
	// RaiseAfter is how many successful transactions in a row, with every
	// connection the cap allows in use, raise a destination's cap by one
	// (0: DefaultRaiseAfter).
	RaiseAfter int
	// CoolDown is how long a host that failed is skipped (circuit
	// breaker), doubling with each failure in a row up to MaxCoolDown
	// (0: DefaultCoolDown, DefaultMaxCoolDown).
	CoolDown, MaxCoolDown time.Duration
	// State keeps what is learned about destinations across restarts;
	// nil keeps it in memory only. *queue.Store is one.
	State DestStore
	// Cluster shares connection leases, learned caps and host cool-downs
	// with other relayq nodes (cluster.go); nil keeps them in this process.
	Cluster Cluster
	// DelayWarning is how long a message may wait before its sender gets
	// one "delayed" DSN (retry.delay_warning); 0 sends none.
	DelayWarning time.Duration
	// ReturnFullMax is the largest original an NDR returns whole when the
	// sender asked RET=FULL; larger ones are returned as their headers.
	// 0 means DefaultReturnFullMax (1 MiB), < 0 headers only.
	ReturnFullMax int64
	// Grace bounds how long Run waits for attempts in flight at shutdown.
	Grace time.Duration
	Now   func() time.Time
	Log   zerolog.Logger
	// Observe, if set, is told every recipient's verdict as it is
	// committed: metrics and the status page's list of recent events.
	Observe func(Outcome)

	setup     sync.Once
	timing    atomic.Pointer[retryTiming] // set by defaults and SetRetry
	pool      *pool
	sched     *sched
	pacer     *pacer // each destination's message rate (rate.go)
	gate      gate   // the scheduler's look at pool and pacer
	breaker   *breaker
	cooled    cooledDomains // destinations found with every host cooling down (plan.go)
	ndr       ndrMaker
	persistMu sync.Mutex     // orders the writes of destination state
	releases  sync.WaitGroup // release goroutines (caps.go), waited for by Run

	doubleBounces atomic.Int64 // DoubleBounces
}

// DestStore keeps the learned state of destinations (queue key d/<name>).
// The value's encoding is the worker's.
type DestStore interface {
	// SetDest stores v as name's state and returns once it is synced.
	SetDest(ctx context.Context, name string, v []byte) error
	// Dests returns every stored state by destination name.
	Dests() (map[string][]byte, error)
}

var _ DestStore = (*queue.Store)(nil)

// runnerIdle is how long an attempt's goroutine waits for the next one
// before it ends.
const runnerIdle = 10 * time.Second

// doneRecheck bounds how long after an attempt ends the schedule is
// scanned again when nothing else asks for it (Run).
const doneRecheck = 100 * time.Millisecond

// fullScanEvery is how often the schedule is scanned from its start
// rather than from where the last scan stopped (queue.Cursor). Such a scan
// walks every message held in the lines (up to maxKnown), which a scan
// from the cursor passes only once; an entry left before the cursor by an
// attempt that wrote nothing is shown to the next scan by recheck, so this
// is only the net under a recheck that failed. At once a second, the
// walk took 40 % of the worker's CPU with 100,000 messages in the lines
// (README, Performance, the large queue).
const fullScanEvery = time.Minute

// task is a job handed to a runner, and the line it was taken from.
type task struct {
	j    *job
	from string
}

// Run delivers until ctx is cancelled, then lets the attempts in flight
// finish (bounded by Grace) and closes the idle connections.
//
// The loop takes due messages from the queue into the scheduler's lines
// (sched) and starts deliveries from them round-robin, each destination
// within its cap and all within MaxConns.
func (w *Worker) Run(ctx context.Context) error {
	w.init()
	w.sched.reset() // what an earlier Run left in the lines is on disk, due
	attemptCtx, cancelAttempts := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAttempts()

	r := &runners{w: w, ctx: ctx, attemptCtx: attemptCtx,
		tasks: make(chan task), stop: make(chan struct{}), done: make(chan struct{}, 1)}
	reap := time.NewTicker(max(w.IdleTimeout/2, 100*time.Millisecond))
	defer reap.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	paced := time.NewTimer(time.Hour)
	defer paced.Stop()

	// The schedule is scanned when something may have become due: a new
	// or rescheduled message (Wake), the timer, or a finished attempt
	// while the last scan stopped for want of room. Any other finished
	// attempt only brings the next scan within doneRecheck: its message
	// was rescheduled (Wake) or is gone, unless its commit failed, and a
	// scan per attempt cost a few % of the CPU per message under load.
	st := scanState{more: true}
	scan := true
	for ctx.Err() == nil {
		if scan {
			w.scan(&st)
			scan = false
		}
		w.dispatch(r.tasks, r.start)
		timer.Reset(st.wait(w.Now()))
		paced.Reset(w.sched.pacedWait(w.Now()))
		select {
		case <-ctx.Done():
		case <-w.Queue.Wake():
			scan = true
		case <-r.done:
			st.behind = true
			if st.more {
				scan = true
			} else if st.recheckAt.IsZero() {
				st.recheckAt = w.Now().Add(doneRecheck)
			}
		case <-timer.C:
			scan = true
		case <-reap.C:
			w.pool.reap()
			w.pacer.reap()
			if w.Cluster != nil {
				w.pool.shareAll(w.Cluster.Share)
			}
		case <-paced.C: // a destination's rate allows a message again: dispatch
		case <-w.pool.wake: // a destination held at the cluster's cap may go on: dispatch
		}
	}

	r.end(cancelAttempts)
	w.releases.Wait()
	w.pool.closeIdle()
	return nil
}

// runners run the attempts: goroutines that, done with one, wait a while
// for the next. A new goroutine per attempt would grow its stack anew in
// every Pebble read (a tenth of the worker's CPU went there). There are
// never more runners than attempts in flight at a time.
type runners struct {
	w          *Worker
	ctx        context.Context // Run's: once it is done, no job is taken
	attemptCtx context.Context // cancelled when the grace at shutdown is over
	tasks      chan task       // unbuffered: a send succeeds only into an idle runner
	stop       chan struct{}
	// done wakes Run's loop when an attempt ends. It is a signal, not a
	// count, so a send that finds one pending is dropped.
	done chan struct{}
	wg   sync.WaitGroup
}

func (r *runners) start(tk task) {
	r.wg.Add(1)
	go r.run(tk)
}

func (r *runners) run(tk task) {
	defer r.wg.Done()
	w := r.w
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		requeued := w.attempt(r.attemptCtx, tk.j, tk.from)
		w.sched.finish(tk.from, tk.j, requeued)
		if !requeued {
			w.recheck(tk.j)
		}
		select {
		case r.done <- struct{}{}:
		default:
		}
		// The slot just freed is most likely its own line's: take the
		// next job at once rather than through the loop, which may be
		// busy scanning the schedule.
		if j, from := w.sched.next(w.gate); j != nil && r.ctx.Err() == nil {
			tk = task{j: j, from: from}
			continue
		} else if j != nil { // shutting down: back where it was
			w.sched.requeue(from, j, true)
			w.sched.finish(from, j, true)
		}
		idle.Reset(runnerIdle)
		select {
		case tk = <-r.tasks:
		case <-idle.C:
			return
		case <-r.stop:
			return
		}
	}
}

// end stops the idle runners and waits for the attempts in flight, for
// Grace at most; then it interrupts them (cancelAttempts) and waits for
// them to commit what they reached. It cancels the attempts' context in
// any case: the releases of mail for destinations back use it too.
func (r *runners) end(cancelAttempts context.CancelFunc) {
	close(r.stop)
	finished := make(chan struct{})
	go func() { r.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(r.w.Grace):
		r.w.Log.Warn().Dur("grace", r.w.Grace).Msg("deliveries still running at shutdown; interrupting them")
		cancelAttempts()
		<-finished
	}
	cancelAttempts()
}

// scanState is where Run's scans of the schedule stand.
type scanState struct {
	next      time.Time // when the first message the last scan left is due; zero: none
	more      bool      // the last scan stopped for want of room: more may be due now
	recheckAt time.Time // an attempt ended: scan by then at the latest; zero: none
	cursor    queue.Cursor
	fullAt    time.Time // when the schedule was last scanned from its start (real clock)
	behind    bool      // an attempt ended since: a full scan is due by fullAt+fullScanEvery
}

// scan takes due mail from the queue into the scheduler's lines, as much
// as there is room for: from where the last scan stopped, or from the
// start of the schedule once fullScanEvery has passed.
func (w *Worker) scan(st *scanState) {
	if time.Since(st.fullAt) >= fullScanEvery { // the real clock: a cadence, not a due time
		st.cursor, st.fullAt, st.behind = queue.Cursor{}, time.Now(), false
	}
	limit := min(w.sched.room(), scanBatch)
	var (
		es  []queue.Entry
		err error
	)
	if limit > 0 {
		es, st.next, st.cursor, err = w.Queue.DueAfter(w.Now(), st.cursor, limit, w.sched.knows)
		w.sched.add(es)
	}
	st.more, st.recheckAt = len(es) == limit, time.Time{}
	if err != nil {
		w.Log.Error().Err(err).Msg("reading the schedule")
		st.next, st.more = w.Now().Add(time.Second), false
	}
}

// wait is how long Run may wait at now for something to wake it before it
// scans again.
func (st *scanState) wait(now time.Time) time.Duration {
	wait := time.Hour
	if !st.more && !st.next.IsZero() {
		wait = max(st.next.Sub(now), 0)
	}
	if !st.recheckAt.IsZero() {
		wait = min(wait, max(st.recheckAt.Sub(now), 0))
	}
	if st.behind {
		wait = min(wait, max(fullScanEvery-time.Since(st.fullAt), 0))
	}
	return wait
}

// dispatch starts every delivery the scheduler allows now: into an idle
// runner, else a new one (start).
func (w *Worker) dispatch(tasks chan<- task, start func(task)) {
	for {
		j, from := w.sched.next(w.gate)
		if j == nil {
			return
		}
		select {
		case tasks <- task{j: j, from: from}:
		default:
			start(task{j: j, from: from})
		}
	}
}

// init applies the defaults and loads the learned destination state, once.
func (w *Worker) init() {
	w.setup.Do(func() {
		w.defaults()
		w.loadDests()
	})
}

func (w *Worker) defaults() {
	if w.Now == nil {
		w.Now = time.Now
	}
	if w.Dialer == nil {
		w.Dialer = &net.Dialer{Timeout: 30 * time.Second}
	}
	if w.Courier == nil {
		w.Courier = smtpCourier{dialer: w.Dialer, hello: w.Hostname}
	}
	if w.MaxConns <= 0 {
		w.MaxConns = config.DefaultDeliveryMaxConnections
	}
	if w.MaxConnsPerDest <= 0 {
		w.MaxConnsPerDest = config.DefaultMaxConnectionsPerDestination
	}
	if w.IdleTimeout <= 0 {
		w.IdleTimeout = 5 * time.Second
	}
	if w.Cluster != nil {
		w.IdleTimeout = min(w.IdleTimeout, clusterIdleTimeout)
	}
	if w.Grace <= 0 {
		w.Grace = 30 * time.Second
	}
	if w.Lifetime <= 0 {
		w.Lifetime = config.DefaultMaxQueueLifetime
	}
	if w.Backoff.Min <= 0 {
		w.Backoff = retry.DefaultBackoff()
	}
	if w.RaiseAfter <= 0 {
		w.RaiseAfter = DefaultRaiseAfter
	}
	if w.CoolDown <= 0 {
		w.CoolDown = DefaultCoolDown
	}
	if w.MaxCoolDown <= 0 {
		w.MaxCoolDown = DefaultMaxCoolDown
	}
	w.timing.Store(&retryTiming{backoff: w.Backoff, lifetime: w.Lifetime, delayWarning: w.DelayWarning})
	w.pool = newPool(w.MaxConns, w.MaxConnsPerDest, w.RaiseAfter, w.IdleTimeout, w.Now)
	if w.Cluster != nil {
		w.pool.raiseHold = clusterRaiseHold
	}
	w.sched = newSched(w.MaxConns)
	w.pacer = newPacer(w.RaiseAfter, w.Now)
	w.gate = gate{capOf: w.pool.capOf, pace: func(dest string) (bool, time.Time) { return w.pacer.reserve(dest, w.Now()) }}
	w.breaker = newBreaker(w.CoolDown, w.MaxCoolDown, w.Now)
	if w.Queue != nil {
		w.ndr = ndrMaker{hostname: w.Hostname, now: w.Now, newID: w.Queue.NewID, body: w.Queue.Body, returnMax: w.ReturnFullMax}
	}
}

// loadDests restores the caps learned before a restart.
func (w *Worker) loadDests() {
	if w.State == nil {
		return
	}
	all, err := w.State.Dests()
	if err != nil {
		w.Log.Error().Err(err).Msg("reading learned destination caps; starting from the configured ones")
		return
	}
	for name, v := range all {
		var s destState
		if err := json.Unmarshal(v, &s); err != nil {
			w.Log.Error().Err(err).Str("dest", name).Msg("unreadable destination state; ignored")
			continue
		}
		w.pool.load(name, s)
		w.pacer.load(name, s.rateState)
		if s.LearnedPerHour > 0 {
			w.Log.Info().Str("dest", name).Float64("rate_per_hour", s.LearnedPerHour).
				Str("reason", s.rateState.Reason).Msg("learned destination rate restored")
		}
		if s.Learned > 0 {
			w.Log.Info().Str("dest", name).Int("cap", s.Cap).Int("learned", s.Learned).
				Str("reason", s.Reason).Time("updated", s.Updated).Msg("learned destination cap restored")
		}
	}
}

// retryTiming is the retry schedule in force. A value is never modified
// once stored: SetRetry stores a new one.
type retryTiming struct {
	backoff                retry.Backoff
	lifetime, delayWarning time.Duration
}

func (w *Worker) retryTiming() *retryTiming {
	w.init()
	return w.timing.Load()
}

// SetRetry changes the retry timings while Run goes on (a configuration
// reload): the backoff after each failed attempt from now on, the queue
// lifetime and the delay warning (0: none) checked at each attempt. A
// message already deferred keeps the time it was given; zero values mean
// the defaults, as in Worker.
func (w *Worker) SetRetry(b retry.Backoff, lifetime, delayWarning time.Duration) {
	w.init()
	if b.Min <= 0 {
		b = retry.DefaultBackoff()
	}
	if lifetime <= 0 {
		lifetime = config.DefaultMaxQueueLifetime
	}
	w.timing.Store(&retryTiming{backoff: b, lifetime: lifetime, delayWarning: delayWarning})
}

// SetMaxConnsPerDest changes the configured maximum of connections per
// destination while Run goes on (a configuration reload; n <= 0 means
// config.DefaultMaxConnectionsPerDestination).
// A destination at the old maximum moves to the new one; a cap learned
// from a 421 4.3.2 that is lower stays (within the new maximum) and rises
// from there as usual. Connections beyond a lowered cap are not cut: idle
// ones are closed, busy ones finish their transaction and are not reused.
func (w *Worker) SetMaxConnsPerDest(n int) {
	w.init()
	if n <= 0 {
		n = config.DefaultMaxConnectionsPerDestination
	}
	w.pool.setMax(n)
}

// Destinations returns the state of every destination known: its current,
// learned and maximum cap, why it was learned, its open connections and
// last failure. It is a snapshot, safe to call at any time.
func (w *Worker) Destinations() []DestinationStatus {
	w.init()
	out := w.pool.snapshot()
	waiting, rates := w.sched.waiting(), w.pacer.snapshot()
	for i := range out {
		out[i].Waiting = waiting[out[i].Name]
		out[i].Rate = rates[out[i].Name]
	}
	return out
}

// Hosts returns the next-hop hosts that failed recently and the cool-down
// the circuit breaker gave them.
func (w *Worker) Hosts() []HostStatus {
	w.init()
	return w.breaker.snapshot()
}

// attempt makes one delivery attempt of the message of j, taken from the
// line of from: every pending recipient, grouped by destination, each
// transaction's outcome committed when it ends, before anything else.
// The group of from's destination goes first, on the slot the scheduler
// gave j; another destination's group is delivered at once if that one
// has a slot free, else the message joins its line and the attempt ends
// there (it reports true: the job was requeued and stays in the
// scheduler). So does a group a 421 4.3.2 sent back.
func (w *Worker) attempt(ctx context.Context, j *job, from string) (requeued bool) {
	m, changes, err := w.read(j)
	if errors.Is(err, queue.ErrNotFound) {
		return false
	}
	if err != nil {
		w.Log.Error().Err(err).Str("id", string(j.id)).Msg("reading a queued message")
		j.due = time.Time{} // no recheck: a record that cannot be read waits for the next full scan, not 100 ms
		return false
	}
	if m.Held {
		return false // held by an operator while it waited in a line
	}
	now := w.Now()
	if m.BounceRequested {
		w.operatorBounce(ctx, m, now)
		return false
	}
	if retry.Expired(m.Received, now, w.retryTiming().lifetime) {
		w.expire(ctx, m)
		return false
	}
	groups, unrouted := w.route(ctx, m)
	t := newTally(m, now)
	for _, res := range unrouted {
		t.record(res.idx, res.decision, res.reply, "")
	}
	if len(unrouted) > 0 && w.commit(ctx, t) != nil {
		return false
	}
	for k, g := range groups {
		if g.route.Destination == from && k > 0 {
			groups[0], groups[k] = groups[k], groups[0]
		}
	}
	asRead := len(unrouted) == 0 // m is as read: nothing committed
	for _, g := range groups {
		dest := g.route.Destination
		w.pacer.configure(dest, g.route.Rate)
		held := dest == from
		if !held && !w.sched.enter(dest, w.gate) {
			next := &job{id: j.id, due: j.due}
			if asRead {
				next.m, next.changes = m, changes
			}
			w.sched.requeue(dest, next, false)
			return true
		}
		asRead = false
		err := w.deliverGroup(ctx, t, g, j)
		if !held {
			w.sched.leave(dest)
		}
		switch {
		case errors.Is(err, errSentBack):
			w.sched.requeue(dest, j, true)
			return true
		case err != nil:
			return false
		}
	}
	return false
}

// recheck makes the next scan see the schedule entry of j's message, if it
// has one: scans passed over it while j was in flight (the entry it was
// due at, left in place by an attempt that wrote nothing, or the one its
// commit wrote), and from their cursor would not come back to it.
func (w *Worker) recheck(j *job) {
	if j.due.IsZero() {
		return
	}
	if err := w.Queue.Recheck(j.id); err != nil {
		w.Log.Error().Err(err).Str("id", string(j.id)).Msg("rechecking a schedule entry; the next full scan finds it")
	}
}

// read returns the message of j and the queue's Changes from before it
// was read: the copy j carries if the queue has had no change of operator
// state since it was read (the routing that kept the copy committed
// nothing; a flush or release since is reconciled by Update), else the
// stored one.
func (w *Worker) read(j *job) (*queue.Message, uint64, error) {
	m := j.m
	j.m = nil // one use: what this attempt commits makes it stale
	if c := w.Queue.Changes(); m != nil && c == j.changes {
		return m, c, nil
	}
	c := w.Queue.Changes()
	m, err := w.Queue.Get(j.id)
	return m, c, err
}

// operatorBounce returns every pending recipient of m to its sender, as an
// operator asked with `relayq queue bounce`: an NDR like any other bounce.
func (w *Worker) operatorBounce(ctx context.Context, m *queue.Message, now time.Time) {
	d, reply := retry.OperatorBounce()
	t := newTally(m, now)
	for _, i := range m.Pending() {
		t.record(i, d, reply, "")
	}
	w.commit(ctx, t)
}

// ForgetHostFailures ends every host's cool-down, so the next attempt
// tries them all: an operator's flush means "try now", whatever failed
// before.
func (w *Worker) ForgetHostFailures() {
	w.init()
	w.breaker.reset()
	w.cooled.forget()
}

// Outcome is one recipient's committed verdict in one attempt.
type Outcome struct {
	ID     queue.ID
	Rcpt   string
	Result Result // delivered, deferred, bounced or expired
	Host   string // the host that gave Reply, "" for local verdicts
	Reply  string
	Took   time.Duration // from the start of the attempt to the commit
	// MessageID and Subject are the message's header fields as queued.
	MessageID, Subject string
}

func (w *Worker) observe(o Outcome) {
	if w.Observe != nil {
		w.Observe(o)
	}
}

// group is the pending recipients (indexes into m.Recipients) for one
// destination and one way of rewriting the sender.
type group struct {
	route *Route
	idx   []int
}

// outcome is the verdict for one recipient.
type outcome struct {
	idx      int
	decision retry.Decision
	reply    *smtpreply.Reply
	host     string
	dsn      bool // the next hop offered DSN (RcptResult.DSN)
	// notBefore, when set, means no host could be tried (all cooling
	// down): no verdict, the recipient is due again then.
	notBefore time.Time
}

// route groups the pending recipients by destination and sender
// rewriting: each group is a transaction of its own. Recipients whose
// domain cannot be routed get their outcome at once.
func (w *Worker) route(ctx context.Context, m *queue.Message) ([]*group, []outcome) {
	var (
		groups   []*group
		byDest   = map[string]*group{}
		byDomain = map[string]*Route{}
		errs     = map[string]error{}
		unrouted []outcome
	)
	for _, i := range m.Pending() {
		domain := queue.Domain(m.Recipients[i].Addr)
		r, seen := byDomain[domain]
		if !seen && errs[domain] == nil {
			var err error
			r, err = w.Router.Route(ctx, m.From, domain)
			if err != nil {
				errs[domain] = err
			}
			byDomain[domain] = r
		}
		if err := errs[domain]; err != nil {
			reply := retry.FromError(retry.StageConnect, err)
			unrouted = append(unrouted, outcome{idx: i, decision: retry.Classify(retry.StageConnect, reply), reply: reply})
			continue
		}
		key := r.Destination + "\x00" + r.Rewrite.Sender + "\x00" + r.Rewrite.From
		g := byDest[key]
		if g == nil {
			g = &group{route: r}
			byDest[key] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	return groups, unrouted
}
