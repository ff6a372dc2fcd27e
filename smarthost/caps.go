package smarthost

import (
	"context"
	"encoding/json"
	"time"

	"relayq/internal/smtpreply"
	"relayq/queue"
	"relayq/retry"
)

// lowerCap answers a 421 4.3.2 on l's connection: the
// destination took fewer connections than were open, so its cap becomes
// that number minus one, at least 1; the change is logged and stored. l's
// slot is given back. It reports whether other connections were open: then
// the refusal was about our concurrency and the message may go back to the
// front of the line at once; with only this one it was not, and the caller
// treats it as the host failing.
//
// With a cluster, the connections open are those of all nodes (the
// destination counts them all against one source address), and the new
// cap is published to every node. The refused connection's lease is
// already given back (dial, or the caller's Close), so it is added.
func (w *Worker) lowerCap(ctx context.Context, l *lease, dest string, r *smtpreply.Reply) bool {
	live := 0
	if w.Cluster != nil {
		live = w.Cluster.Live(ctx, dest) + 1
	}
	ch := w.pool.refused(l, r, live)
	if ch.changed && w.Cluster != nil {
		w.Cluster.PublishCap(ctx, dest, ch.to)
	}
	if ch.changed {
		w.Log.Warn().Str("dest", dest).Int("open", ch.open).Int("cap", ch.to).Int("previous_cap", ch.from).
			Int("code", r.Code).Str("enhanced", r.Status().String()).Str("reply", r.Error()).
			Msg("destination refused a connection: too many connections; cap lowered")
		w.persist(ctx, dest)
	}
	return ch.open > 1
}

// succeeded counts a successful transaction to dest through host: it may
// raise the destination's cap (logged and stored) and closes the host's
// circuit breaker.
func (w *Worker) succeeded(ctx context.Context, l *lease, dest, host string) {
	if w.breaker.ok(host) {
		w.Log.Info().Str("dest", dest).Str("host", host).Msg("host is taking mail again")
		if w.Cluster != nil {
			w.Cluster.SetCooldown(ctx, host, time.Time{})
		}
	}
	if w.pool.takeRelease(dest) {
		w.releases.Add(1)
		go func() {
			defer w.releases.Done()
			w.release(ctx, dest) // ends with the attempts' context (Run)
		}()
	}
	w.syncCap(ctx, dest)
	ch := w.pool.succeeded(l)
	if !ch.changed {
		return
	}
	if w.Cluster != nil {
		w.Cluster.PublishCap(ctx, dest, ch.to)
	}
	w.Log.Warn().Str("dest", dest).Int("cap", ch.to).Int("previous_cap", ch.from).Int("max_cap", ch.max).
		Msg("destination took every connection its cap allows for a run of deliveries; cap raised")
	w.persist(ctx, dest)
}

// hostFailed records a failed host: the destination's last reply and, when
// trip is set (it failed to connect, refused us, or said 421), the circuit
// breaker's cool-down, which a cluster shares with every node.
func (w *Worker) hostFailed(ctx context.Context, m *queue.Message, dest, host string, r *smtpreply.Reply, d retry.Decision, trip bool) {
	w.pool.note(dest, r)
	ev := w.Log.Warn().Str("id", string(m.ID)).Str("dest", dest).Str("host", host).
		Int("code", r.Code).Str("enhanced", d.Status.String()).Str("reply", r.Error())
	if trip {
		if cool, first := w.breaker.fail(host, r); first {
			ev = ev.Dur("cool_down", cool)
			if w.Cluster != nil {
				w.Cluster.SetCooldown(ctx, host, w.Now().Add(cool))
			}
		}
	}
	ev.Msg("host failed")
}

// persist stores dest's learned state. Writes are serialised and each
// reads the state afresh, so the last one written is the latest.
func (w *Worker) persist(ctx context.Context, dest string) {
	if w.State == nil {
		return
	}
	w.persistMu.Lock()
	defer w.persistMu.Unlock()
	s := w.pool.state(dest)
	s.rateState = w.pacer.state(dest)
	v, err := json.Marshal(s)
	if err == nil {
		err = w.State.SetDest(context.WithoutCancel(ctx), dest, v)
	}
	if err != nil {
		w.Log.Error().Err(err).Str("dest", dest).Msg("storing the learned destination cap")
	}
}

// releaseBatch is how many messages one call of ReleaseDest makes due.
const releaseBatch = 1000

// releasePace is how often a release looks whether the destination's line
// has room for the next batch.
const releasePace = 100 * time.Millisecond

// release makes the mail deferred because dest failed due again (dest has
// just taken a message), a batch at a time as dest's line drains: it goes
// through the line within dest's cap like any other mail, and a large
// release never floods the scheduler or holds up other destinations. Mail
// deferred for reasons of its own keeps its backoff (it is not indexed).
func (w *Worker) release(ctx context.Context, dest string) {
	total := 0
	tick := time.NewTicker(releasePace)
	defer tick.Stop()
	for {
		n, more, err := w.Queue.ReleaseDest(ctx, dest, releaseBatch)
		total += n
		if err != nil {
			if ctx.Err() == nil {
				w.Log.Error().Err(err).Str("dest", dest).Msg("making the mail deferred for a destination due again")
			}
			return
		}
		if !more {
			break
		}
		// Let the scan take this batch in, then wait for the line (and
		// the routing line, which it passes through) to drain below half a
		// batch.
		for ok := false; !ok; ok = w.sched.waitingFor(dest)+w.sched.waitingFor("") < releaseBatch/2 {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
	if total > 0 {
		w.Log.Info().Str("dest", dest).Int("messages", total).Msg("destination is taking mail again: the mail deferred for it is due now")
	}
}
