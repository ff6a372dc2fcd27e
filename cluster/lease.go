package cluster

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is the right to hold one connection to a destination. It stays
// valid until Release; the Client renews it in the background.
type Lease struct {
	dest   string
	member string // in the destination's sorted set: node|token-seq
	// inRedis is false for a lease taken by the local fallback, or held
	// when Redis became unreachable, until it is registered again.
	// Guarded by Client.mu.
	inRedis bool
}

// Dest is the destination the lease is for.
func (l *Lease) Dest() string { return l.dest }

// Acquire implements Limits. Through Redis it counts the leases of every
// node; while degraded it counts this node's own against
// max(1, min(cap, learned cap) / ExpectedNodes).
func (c *Client) Acquire(ctx context.Context, dest string, cap int) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cap = max(cap, 1) // a destination with no connection at all would never drain
	now := c.opt.Now()
	if c.rejoining(now, dest, cap) {
		return nil, ErrAtCap
	}
	l := c.newLease(dest)
	granted := false
	err := c.do(ctx, func(ctx context.Context) error {
		res, err := acquireScript.Run(ctx, c.rdb, []string{c.keys.leases(dest), c.keys.cap(dest)},
			ms(now), ms(now.Add(c.opt.LeaseTTL)), cap, l.member, (2 * c.opt.LeaseTTL).Milliseconds()).Int64Slice()
		if err == nil {
			granted = len(res) > 0 && res[0] == 1
		}
		return err
	})
	switch {
	case err == nil && !granted:
		return nil, ErrAtCap
	case err == nil:
		c.mu.Lock()
		// Redis may have been lost since the script ran: then the lease
		// is registered again with the others on recovery.
		l.inRedis = !c.mu.degraded
		c.addLocked(l)
		c.mu.Unlock()
		return l, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := c.fallbackCapLocked(dest, cap)
	if now.Before(c.mu.graceUntil) {
		limit = min(limit, c.mu.graceHeld[dest]) // fallbackGrace: the others may not have noticed yet
	}
	if len(c.mu.leases[dest]) >= limit {
		return nil, ErrAtCap
	}
	c.addLocked(l)
	return l, nil
}

// rejoining reports whether this node came back from an episode less than
// fallbackGrace ago and already holds its fallback share of dest.
func (c *Client) rejoining(now time.Time, dest string, cap int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.mu.degraded && now.Before(c.mu.rejoinUntil) && len(c.mu.leases[dest]) >= c.fallbackCapLocked(dest, cap)
}

// Share is how many connections to dest this node may hold now under
// cap: while Redis counts every node's (the leases decide), all of them
// but one for each other expected node, so that a node whose mail keeps
// every connection busy never starves the others (leases are not taken
// back); while degraded its fallback share, so that connections opened
// before Redis was lost are not kept beyond it.
func (c *Client) Share(dest string, cap int) int {
	cap = max(cap, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.mu.degraded {
		return max(1, cap-(c.opt.ExpectedNodes-1))
	}
	return c.fallbackCapLocked(dest, cap)
}

// fallbackCapLocked is this node's share of dest's cap while degraded.
func (c *Client) fallbackCapLocked(dest string, cap int) int {
	if e, ok := c.mu.learned[dest]; ok && e.cap > 0 && e.cap < cap {
		cap = e.cap
	}
	return max(1, cap/c.opt.ExpectedNodes)
}

func (c *Client) newLease(dest string) *Lease {
	c.mu.Lock()
	c.mu.seq++
	seq := c.mu.seq
	c.mu.Unlock()
	return &Lease{dest: dest, member: c.opt.Node + "|" + c.token + "-" + strconv.FormatUint(seq, 36)}
}

func (c *Client) addLocked(l *Lease) {
	set := c.mu.leases[l.dest]
	if set == nil {
		set = map[*Lease]struct{}{}
		c.mu.leases[l.dest] = set
	}
	set[l] = struct{}{}
}

// Release implements Limits. A lease that cannot be removed from Redis
// (Redis gone) stops counting when its TTL runs out.
func (c *Client) Release(ctx context.Context, l *Lease) {
	c.mu.Lock()
	set := c.mu.leases[l.dest]
	_, held := set[l]
	delete(set, l)
	if len(set) == 0 {
		delete(c.mu.leases, l.dest)
	}
	inRedis := l.inRedis
	c.mu.Unlock()
	if !held {
		return
	}
	// A connection closed at shutdown must still give its lease back.
	ctx = context.WithoutCancel(ctx)
	zrem := func(ctx context.Context) error { return c.rdb.ZRem(ctx, c.keys.leases(l.dest), l.member).Err() }
	if !inRedis {
		_ = c.do(ctx, zrem)
		return
	}
	// Registered, so Redis answers: in shared mode, or while recover
	// finishes (still degraded), when skipping it would leave the lease
	// counting until its TTL.
	if err := c.callWithin(ctx, c.opt.Timeout, zrem); err != nil {
		c.enterDegraded(err)
	}
}

// Live counts the leases every node holds for dest now (a 421 4.3.2 tells
// how many connections the destination took: this many, less one). While
// degraded it counts this node's own.
func (c *Client) Live(ctx context.Context, dest string) int {
	now := strconv.FormatInt(ms(c.opt.Now()), 10)
	var n int64
	err := c.do(ctx, func(ctx context.Context) (err error) {
		n, err = c.rdb.ZCount(ctx, c.keys.leases(dest), "("+now, "+inf").Result()
		return err
	})
	if err == nil {
		return int(n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.mu.leases[dest])
}

// Held returns how many leases this node holds per destination, for
// status while degraded.
func (c *Client) Held() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := make(map[string]int, len(c.mu.leases))
	for dest, set := range c.mu.leases {
		n[dest] = len(set)
	}
	return n
}

// heldLocked returns the members of the leases held, by destination; with
// missing, only those not known to be in Redis.
func (c *Client) heldLocked(missing bool) map[string][]any {
	held := map[string][]any{}
	for dest, set := range c.mu.leases {
		for l := range set {
			if !missing || !l.inRedis {
				held[dest] = append(held[dest], l.member)
			}
		}
	}
	return held
}

// register writes the given leases into Redis with a fresh expiry, whether
// they are there or not (a renewal, or a registration after Redis came
// back: a connection that exists counts, even above the cap, so that no
// new one is granted until the total is below it again). Leases released
// meanwhile are removed again.
func (c *Client) register(ctx context.Context, held map[string][]any) error {
	if len(held) == 0 {
		return nil
	}
	exp := float64(ms(c.opt.Now().Add(c.opt.LeaseTTL)))
	err := c.callWithin(ctx, c.opt.BackgroundTimeout, func(ctx context.Context) error {
		p := c.rdb.Pipeline()
		for dest, members := range held {
			zs := make([]redis.Z, len(members))
			for i, m := range members {
				zs[i] = redis.Z{Score: exp, Member: m}
			}
			p.ZAdd(ctx, c.keys.leases(dest), zs...)
			p.PExpire(ctx, c.keys.leases(dest), 2*c.opt.LeaseTTL)
		}
		_, err := p.Exec(ctx)
		return err
	})
	if err != nil {
		return err
	}
	gone := map[string][]any{}
	c.mu.Lock()
	for dest, members := range held {
		for _, m := range members {
			if l := c.findLocked(dest, m.(string)); l != nil {
				l.inRedis = true
			} else {
				gone[dest] = append(gone[dest], m)
			}
		}
	}
	c.mu.Unlock()
	if len(gone) == 0 {
		return nil
	}
	return c.callWithin(ctx, c.opt.BackgroundTimeout, func(ctx context.Context) error {
		p := c.rdb.Pipeline()
		for dest, members := range gone {
			p.ZRem(ctx, c.keys.leases(dest), members...)
		}
		_, err := p.Exec(ctx)
		return err
	})
}

func (c *Client) findLocked(dest, member string) *Lease {
	for l := range c.mu.leases[dest] {
		if l.member == member {
			return l
		}
	}
	return nil
}

// renew extends every lease held; a failure makes the client degraded.
func (c *Client) renew(ctx context.Context) {
	c.mu.Lock()
	held := c.heldLocked(false)
	c.mu.Unlock()
	if err := c.register(ctx, held); err != nil && ctx.Err() == nil {
		c.enterDegraded(err)
	}
}

// recover is the degraded client's probe: when Redis answers again, the
// leases held are registered (those taken under the fallback included)
// and only then are shared limits used again, in the same critical
// section that found no lease left to register, so that no lease taken
// meanwhile is missing from the count.
func (c *Client) recover(ctx context.Context) {
	if c.callWithin(ctx, c.opt.BackgroundTimeout, func(ctx context.Context) error { return c.rdb.Ping(ctx).Err() }) != nil {
		return
	}
	for range 3 { // leases keep being taken locally while this runs
		c.mu.Lock()
		missing := c.heldLocked(true)
		if len(missing) == 0 {
			c.mu.degraded = false
			c.mu.rejoinUntil = c.graceEnd()
			c.mu.Unlock()
			c.opt.Log.Info().Str("node", c.opt.Node).Msg("cluster: Redis answers again; destination limits are shared again")
			_ = c.doBG(ctx, c.heartbeat)
			return
		}
		c.mu.Unlock()
		if c.register(ctx, missing) != nil {
			return
		}
	}
}
