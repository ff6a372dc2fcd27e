package smarthost

import (
	"context"
	"errors"
	"time"

	"relayq/cluster"
	"relayq/internal/smtpreply"
)

// Cluster shares destination limits with other relayq nodes ([cluster],
// package cluster): connection leases, learned caps and rates, message
// rates and cool-downs; *cluster.Client is one. Every method answers even
// when the shared store is gone (from a local fallback); the only errors
// are cluster.ErrAtCap and the caller's own context's.
type Cluster interface {
	// Acquire takes a connection lease for dest while the connections of
	// all nodes are below min(cap, the learned cap); cluster.ErrAtCap
	// when they are not. The lease lives until Release.
	Acquire(ctx context.Context, dest string, cap int) (*cluster.Lease, error)
	// Release gives a lease back; releasing twice does nothing.
	Release(ctx context.Context, l *cluster.Lease)
	// Live counts the leases all nodes hold for dest now.
	Live(ctx context.Context, dest string) int
	// PublishCap records the cap learned for dest for every node.
	PublishCap(ctx context.Context, dest string, cap int)
	// LearnedCap is the cap published for dest by any node, 0 for none.
	LearnedCap(ctx context.Context, dest string) int
	// SetCooldown records that host is not to be dialled before until by
	// any node; a zero until clears it.
	SetCooldown(ctx context.Context, host string, until time.Time)
	// Cooldown is the end of host's cool-down, zero when it has none.
	Cooldown(ctx context.Context, host string) time.Time
	// Share is how many connections to dest under cap this node may hold
	// now: cap while the nodes share limits, its fallback share while
	// the shared store is unreachable.
	Share(dest string, cap int) int
	// Allow says whether one message may go to dest now under rate r,
	// shared by all nodes (r/expected_nodes on this node alone while the
	// shared store is unreachable): 0, or how long to wait. A zero wait
	// takes the message's place.
	Allow(ctx context.Context, dest string, r cluster.Rate) (time.Duration, error)
	// PublishRate records the rate learned for dest (messages a second)
	// for every node; 0 forgets it.
	PublishRate(ctx context.Context, dest string, perSecond float64)
	// LearnedRate is the rate published for dest by any node (messages a
	// second), 0 for none.
	LearnedRate(ctx context.Context, dest string) float64
	// Degraded reports whether the shared store is unreachable: what
	// LearnedRate answers may then be this node's own or out of date.
	Degraded() bool
}

var _ Cluster = (*cluster.Client)(nil)

// clusterIdleTimeout bounds how long an idle connection is kept with a
// cluster: it holds a lease that another node's waiting mail may need.
// A destination with mail waiting reuses its connection at once, so only
// a node done with a destination lets go of it.
const clusterIdleTimeout = time.Second

// clusterRaiseHold is how long after a destination's cap was lowered (by
// any node) no node tries a raise: each node counts its own run of
// successes, and their probes above the learned cap would otherwise come
// every few hundred milliseconds, each a connection the destination
// refuses.
const clusterRaiseHold = time.Minute

// errAtClusterCap: the other nodes hold every connection the destination
// allows. The message goes back to the front of its line, which waits
// cluster.RetryAtCap (pool.hold): no backoff, no attempt counted.
var errAtClusterCap = errors.New("every connection the destination allows is held by the cluster")

// errSharedCooldown is what connect returns when another node put the host
// in its cool-down: deliverGroup skips the host as its own breaker would.
type errSharedCooldown struct{ until time.Time }

func (e *errSharedCooldown) Error() string {
	return "host cooling down after failing on another node until " + e.until.Format(time.RFC3339)
}

// sharedCoolReply stands for a cool-down another node set: it keeps only
// when the cool-down ends, not the reply that started it.
var sharedCoolReply = &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeNoAnswer, Local: true,
	Text: "host cooling down after failing on another relayq node"}

// dial opens a new connection for l to target. With a cluster it first
// checks the host's shared cool-down and takes a lease under the
// destination's cap (errAtClusterCap when there is none), which the
// session gives back when it is closed (sharedSession).
func (w *Worker) dial(ctx context.Context, l *lease, target Target) (Session, error) {
	if w.Cluster == nil {
		return w.Courier.Dial(ctx, target)
	}
	dest := l.dest.name
	if until := w.Cluster.Cooldown(ctx, breakerHost(target)); until.After(w.Now()) {
		w.breaker.adopt(breakerHost(target), until, sharedCoolReply)
		return nil, &errSharedCooldown{until: until}
	}
	w.syncCap(ctx, dest)
	// The destination's cap, not this node's share of it (capOf): the
	// cluster counts every node's leases against it, and divides it
	// itself while degraded.
	shared, err := w.Cluster.Acquire(ctx, dest, w.pool.destCap(dest))
	if errors.Is(err, cluster.ErrAtCap) {
		w.pool.hold(dest)
		return nil, errAtClusterCap
	}
	if err != nil {
		return nil, err // the caller's context: shutting down
	}
	conn, err := w.Courier.Dial(ctx, target)
	if err != nil {
		w.Cluster.Release(ctx, shared)
		return nil, err
	}
	return &sharedSession{Session: conn, release: func() {
		w.Cluster.Release(context.WithoutCancel(ctx), shared)
		w.pool.unhold(dest)
	}}, nil
}

// syncCap makes dest's cap the one the cluster learned, when one was
// published (pool.follow), and bounds this node's connections by its share
// (pool.share).
func (w *Worker) syncCap(ctx context.Context, dest string) {
	if w.Cluster == nil {
		return
	}
	if learned := w.Cluster.LearnedCap(ctx, dest); learned > 0 {
		w.pool.follow(dest, learned)
	}
	w.pool.share(dest, w.Cluster.Share)
}

// clusterPaced asks the cluster whether a delivery to dest that the
// pacer let start may go now under dest's rate in force (configured or
// learned), which all nodes share; it reports true when it may not. Then
// the pacer holds dest until the cluster allows the next message, and the
// caller sends the recipients back to the front of the line: no
// deferral, no attempt counted, no backoff. It first follows the rate the
// cluster learned (syncRate). It asks Redis outside the scheduler's lock:
// pacer.reserve, under it, never does.
func (w *Worker) clusterPaced(ctx context.Context, dest string) bool {
	if w.Cluster == nil {
		return false
	}
	w.syncRate(ctx, dest)
	perSecond := w.pacer.perSecond(dest)
	if perSecond <= 0 {
		return false
	}
	wait, err := w.Cluster.Allow(ctx, dest, clusterRate(perSecond))
	switch {
	case err != nil:
		return false // shutting down: the caller sees ctx
	case wait <= 0:
		w.pacer.allowed(dest, w.Now())
		return false
	}
	w.pacer.hold(dest, w.Now().Add(wait))
	return true
}

// clusterRate is a rate in messages a second as the cluster's Rate: one
// message per interval, evenly spaced like the pacer's limiter (burst 1).
func clusterRate(perSecond float64) cluster.Rate {
	return cluster.Rate{Messages: 1, Per: time.Duration(float64(time.Second) / perSecond)}
}

// syncRate makes dest's learned rate the one the cluster shows when that
// changed (pacer.follow): one node's lesson applies to all within the
// cluster's refresh (cluster.Options.CapRefresh). While the shared store
// is unreachable each node keeps its own, and a lesson learned meanwhile
// is published when it answers again.
func (w *Worker) syncRate(ctx context.Context, dest string) {
	if w.Cluster.Degraded() {
		return
	}
	if perSecond, ok := w.pacer.takeUnshared(dest); ok {
		w.publishRate(ctx, dest, perSecond)
	}
	ch := w.pacer.follow(dest, w.Cluster.LearnedRate(ctx, dest))
	if ch.changed {
		w.Log.Info().Str("dest", dest).Float64("rate_per_hour", ch.to*3600).Float64("previous_rate_per_hour", ch.from*3600).
			Msg("destination's learned rate follows another relayq node's (0: none learned)")
	}
}

// publishRate tells the other nodes that dest's learned rate is now
// perSecond (0: none). If the cluster is unreachable, syncRate publishes
// it once it answers.
func (w *Worker) publishRate(ctx context.Context, dest string, perSecond float64) {
	if w.Cluster == nil {
		return
	}
	w.Cluster.PublishRate(ctx, dest, perSecond)
	if w.Cluster.Degraded() {
		w.pacer.markUnshared(dest)
	}
}

// sharedSession is a session that holds a cluster lease: closing it, by
// whichever path the pool drops the connection (reuse refused, idle
// timeout, broken, shutdown), gives the lease back.
type sharedSession struct {
	Session
	release func()
	closed  bool
}

func (s *sharedSession) Close() error {
	err := s.Session.Close()
	if !s.closed {
		s.closed = true
		s.release()
	}
	return err
}
