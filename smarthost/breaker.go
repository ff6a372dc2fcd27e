package smarthost

import (
	"sort"
	"sync"
	"time"

	"relayq/internal/smtpreply"
)

// Default cool-downs of the circuit breaker: a host that failed is skipped
// for a second, then two, four, … up to a minute while it keeps failing.
const (
	DefaultCoolDown    = time.Second
	DefaultMaxCoolDown = time.Minute
	// breakerPrune is how many hosts the breaker remembers before it
	// forgets those whose cool-down ended long ago (bounded memory: MX
	// delivery meets hosts from all over the Internet).
	breakerPrune = 1024
)

// breaker is a circuit breaker per next-hop host (host:port, and the AUTH
// username when there is one: breakerHost): a host that
// failed to connect, refused us at the greeting, EHLO or AUTH, failed the
// TLS handshake or said 421 is skipped for a cool-down that doubles with
// each failure in a row, so that the next host takes the mail at once
// instead of every message waiting for a dead one first. After the
// cool-down the host is tried again (half-open); one success closes it.
type breaker struct {
	base, max time.Duration
	now       func() time.Time

	mu struct {
		sync.Mutex
		hosts map[string]*hostState
	}
}

type hostState struct {
	failures int              // in a row
	until    time.Time        // skipped before this
	last     *smtpreply.Reply // the failure that set until
	since    time.Time        // first failure of the run
}

// HostStatus is the circuit-breaker state of one next-hop host that failed
// recently, for the status view.
type HostStatus struct {
	Addr      string    // host:port
	Failures  int       // in a row
	Until     time.Time // skipped until then; zero or past: tried again
	Since     time.Time // first failure of the run
	LastReply string
}

func newBreaker(base, ceiling time.Duration, now func() time.Time) *breaker {
	b := &breaker{base: base, max: max(base, ceiling), now: now}
	b.mu.hosts = map[string]*hostState{}
	return b
}

// coolingDown returns the failure that put addr in its cool-down when addr
// is still cooling down, else nil (try it).
func (b *breaker) coolingDown(addr string) *smtpreply.Reply {
	_, r := b.coolingUntil(addr)
	return r
}

// coolingUntil returns when addr's cool-down ends and the failure that
// started it, or a nil reply when addr may be tried now.
func (b *breaker) coolingUntil(addr string) (time.Time, *smtpreply.Reply) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.mu.hosts[addr]
	if h == nil || !b.now().Before(h.until) {
		return time.Time{}, nil
	}
	return h.until, h.last
}

// fail records a failure of addr and returns its cool-down, and false when
// addr was already cooling down (attempts that started before the first
// failure came back do not each double it).
func (b *breaker) fail(addr string, r *smtpreply.Reply) (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	h := b.mu.hosts[addr]
	if h == nil {
		if len(b.mu.hosts) >= breakerPrune {
			b.pruneLocked(now)
		}
		h = &hostState{since: now}
		b.mu.hosts[addr] = h
	}
	h.last = r
	if now.Before(h.until) {
		return h.until.Sub(now), false
	}
	h.failures++
	d := b.base
	for i := 1; i < h.failures && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	h.until = now.Add(d)
	return d, true
}

// adopt puts addr in a cool-down until until that another node started
// (cluster): skipped like one of its own, without counting a failure, so
// that the next attempts do not ask the cluster again.
func (b *breaker) adopt(addr string, until time.Time, r *smtpreply.Reply) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.mu.hosts[addr]
	if h == nil {
		if len(b.mu.hosts) >= breakerPrune {
			b.pruneLocked(b.now())
		}
		h = &hostState{since: b.now()}
		b.mu.hosts[addr] = h
	}
	if until.After(h.until) {
		h.until, h.last = until, r
	}
}

// reset forgets every host's failures: all are tried at the next attempt.
func (b *breaker) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.mu.hosts)
}

// ok records a success of addr and reports whether it had been failing.
func (b *breaker) ok(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, failing := b.mu.hosts[addr]; !failing {
		return false
	}
	delete(b.mu.hosts, addr)
	return true
}

// pruneLocked forgets hosts whose cool-down ended more than max ago.
func (b *breaker) pruneLocked(now time.Time) {
	for a, h := range b.mu.hosts {
		if now.Sub(h.until) > b.max {
			delete(b.mu.hosts, a)
		}
	}
}

func (b *breaker) snapshot() []HostStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]HostStatus, 0, len(b.mu.hosts))
	for a, h := range b.mu.hosts {
		hs := HostStatus{Addr: a, Failures: h.failures, Until: h.until, Since: h.since}
		if h.last != nil {
			hs.LastReply = h.last.Error()
		}
		out = append(out, hs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}
