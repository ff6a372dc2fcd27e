package smarthost

import (
	"sync"
	"time"

	"relayq/internal/smtpreply"
	"relayq/queue"
)

// Plan is called for a message about to be queued (internal/server's
// plannedQueue calls it before Put). While a destination is down, the first
// attempt of each new message for it finds every host cooling down and
// tries nothing; all it does is record why and put the message off, at the
// cost of reading the message back and rewriting it in a synced batch.
// With a million messages queued for a dead destination that rewrite is
// most of what the queue does. Plan records the same verdict in env before
// its first commit instead: when every recipient's destination was last
// found with all its hosts cooling down and they still are, each recipient
// gets the reply that put its hosts there and the message is first due
// when that attempt would have made it due (its backoff, and not before a
// host may be tried again). Nothing is tried either way, and an operator's
// flush ends the cool-downs as before. Plan does not route: a destination
// whose route changed is seen at its next attempt; until then, at most
// until its old hosts' cool-downs end (MaxCoolDown), new mail for it is
// put off as it would have been before the change.
//
// Plan returns the destination the message waits for, under which the
// caller queues it (queue PutWaiting) so that it is due as soon as that
// destination takes mail again, and the function to call once it is
// queued under id, which logs and counts the deferrals as the attempt
// would; "" and nil when it left env alone (the message is due at once,
// as usual).
func (w *Worker) Plan(env *queue.Envelope) (dest string, queued func(id queue.ID)) {
	w.init()
	if len(env.Recipients) == 0 || w.cooled.empty() {
		return "", nil
	}
	type wait struct {
		reply *smtpreply.Reply
		host  string
		until time.Time
	}
	waits := make([]wait, len(env.Recipients))
	class := w.Router.SenderClass(env.From)
	for i := range env.Recipients {
		d, hosts := w.cooled.hosts(cooledKey(class, env.Recipients[i].Addr))
		if len(hosts) == 0 {
			return "", nil
		}
		if i == 0 {
			dest = d
		}
		for _, h := range hosts { // as deliverGroup: every host skipped, the last one's reply
			until, r := w.breaker.coolingUntil(h)
			if r == nil {
				return "", nil // this host may be tried: the message is due now
			}
			if waits[i].until.IsZero() || until.Before(waits[i].until) {
				waits[i].until = until
			}
			waits[i].reply, waits[i].host = r, h
		}
	}
	m := &queue.Message{Envelope: *env} // shares env's recipients: t.wait writes into env
	t := newTally(m, w.Now())
	for i, v := range waits {
		t.wait(i, v.reply, v.host, v.until)
	}
	env.NextAttempt = w.nextAttempt(t)
	return dest, func(id queue.ID) {
		t.m = &queue.Message{ID: id, Envelope: *env} // with what Put set (Received)
		w.logOutcomes(t)
	}
}

// noteCooled records that the destination dest of recipients idx of m,
// with targets, had every host cooling down (for Plan).
func (w *Worker) noteCooled(m *queue.Message, idx []int, dest string, targets []Target) {
	c := cooled{dest: dest, hosts: make([]string, len(targets))}
	for k, t := range targets {
		c.hosts[k] = breakerHost(t)
	}
	class := w.Router.SenderClass(m.From)
	for _, i := range idx {
		w.cooled.note(cooledKey(class, m.Recipients[i].Addr), c)
	}
}

// cooledKey is what cooledDomains keys a recipient's destination by: its
// domain, and the class of the sender (Router.SenderClass), as routes may
// be chosen by sender too.
func cooledKey(senderClass, rcpt string) string {
	return senderClass + "\x00" + queue.Domain(rcpt)
}

// cooledDomains remembers, for each recipient domain (and class of
// sender) whose destination an attempt found with every host cooling
// down, the hosts it had: Plan asks
// the circuit breaker about them. The breaker decides; this only saves
// routing (and DNS) at intake. It is bounded: past maxCooledDomains it
// starts over.
type cooledDomains struct {
	mu sync.Mutex
	m  map[string]cooled // by cooledKey
}

// cooled is a destination found with every host cooling down.
type cooled struct {
	dest  string
	hosts []string // the hosts, as the circuit breaker names them (breakerHost)
}

const maxCooledDomains = 10_000

// note records that key's destination had hosts, all cooling down.
func (c *cooledDomains) note(key string, d cooled) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCooledDomains {
		c.m = make(map[string]cooled)
	}
	c.m[key] = d
}

// hosts returns what note recorded for key: its destination and hosts,
// no hosts if nothing.
func (c *cooledDomains) hosts(key string) (string, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.m[key]
	return d.dest, d.hosts
}

func (c *cooledDomains) empty() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m) == 0
}

// forget drops everything (an operator's flush: the cool-downs are over).
func (c *cooledDomains) forget() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}
