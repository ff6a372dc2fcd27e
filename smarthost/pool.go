package smarthost

import (
	"context"
	"sync"
	"time"
)

// pool holds the connections to every destination and enforces the caps:
// never more than the destination's current cap open to one destination,
// never more than total open in all (DESIGN.md invariant 7).
type pool struct {
	maxPerDest  int
	idleTimeout time.Duration
	now         func() time.Time
	total       chan struct{} // one token per open connection, all destinations

	mu struct {
		sync.Mutex
		dests    map[string]*destination
		anyFreed chan struct{} // closed and replaced whenever any slot frees up
	}
}

// destination is the state of one next hop: a smart host, or a domain's MX set.
type destination struct {
	name  string
	cap   int           // current cap
	open  int           // connections open: in use plus idle
	idle  []idleConn    // most recently used last
	freed chan struct{} // closed and replaced whenever a slot frees up
}

type idleConn struct {
	c     *Conn
	since time.Time
}

func newPool(total, perDest int, idleTimeout time.Duration, now func() time.Time) *pool {
	p := &pool{maxPerDest: perDest, idleTimeout: idleTimeout, now: now, total: make(chan struct{}, total)}
	p.mu.dests = map[string]*destination{}
	p.mu.anyFreed = make(chan struct{})
	return p
}

func (p *pool) destLocked(name string) *destination {
	d := p.mu.dests[name]
	if d == nil {
		d = &destination{name: name, cap: p.maxPerDest, freed: make(chan struct{})}
		p.mu.dests[name] = d
	}
	return d
}

// lease is the right to use one connection slot of a destination. Conn is
// an idle connection handed over for reuse, or nil: then the holder dials.
type lease struct {
	dest *destination
	conn *Conn
}

// acquire returns a lease on a slot of dest: an idle connection if there is
// one, else a free slot to dial into. It waits, bounded by ctx, while dest
// is at its cap or all connections are in use.
func (p *pool) acquire(ctx context.Context, name string) (*lease, error) {
	for {
		p.mu.Lock()
		d := p.destLocked(name)
		for len(d.idle) > 0 {
			ic := d.idle[len(d.idle)-1]
			d.idle = d.idle[:len(d.idle)-1]
			if p.now().Sub(ic.since) < p.idleTimeout {
				p.mu.Unlock()
				return &lease{dest: d, conn: ic.c}, nil
			}
			p.dropLocked(d)
			go ic.c.Close()
		}
		if d.open < d.cap {
			select {
			case p.total <- struct{}{}:
				d.open++
				p.mu.Unlock()
				return &lease{dest: d}, nil
			default:
			}
		}
		// At the destination's cap, wait for its own slots; at the total
		// limit, for anyone's.
		freed := d.freed
		if d.open < d.cap {
			freed = p.mu.anyFreed
		}
		p.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// release gives the slot back: keep c idle for reuse if it is usable,
// else close it.
func (p *pool) release(l *lease, c *Conn, reusable bool) {
	p.mu.Lock()
	d := l.dest
	if reusable && c != nil && d.open <= d.cap {
		d.idle = append(d.idle, idleConn{c: c, since: p.now()})
		p.wakeLocked(d)
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
	p.wakeLocked(d)
}

func (p *pool) wakeLocked(d *destination) {
	close(d.freed)
	d.freed = make(chan struct{})
	close(p.mu.anyFreed)
	p.mu.anyFreed = make(chan struct{})
}

// lowerCap sets dest's cap to n (at least 1), as after a 421 4.3.2 that
// came while n+1 connections were open. It returns the new cap.
func (p *pool) lowerCap(name string, n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.destLocked(name)
	d.cap = max(1, min(d.cap, n))
	return d.cap
}

// openCount returns how many connections are open to name.
func (p *pool) openCount(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.destLocked(name).open
}

// reap closes connections idle longer than the idle timeout.
func (p *pool) reap() {
	var stale []*Conn
	p.mu.Lock()
	for _, d := range p.mu.dests {
		keep := d.idle[:0]
		for _, ic := range d.idle {
			if p.now().Sub(ic.since) >= p.idleTimeout {
				stale = append(stale, ic.c)
				p.dropLocked(d)
				continue
			}
			keep = append(keep, ic)
		}
		d.idle = keep
	}
	p.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// closeIdle closes every idle connection (at shutdown).
func (p *pool) closeIdle() {
	var all []*Conn
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
