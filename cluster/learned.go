package cluster

import (
	"context"
	"strconv"
	"time"
)

// What nodes learn from a destination's replies — the cap from a 421 4.3.2,
// the rate from a reply saying we send too many messages — lives in a key
// per destination and lesson (with CapTTL) and in a local cache that the
// background loop reads back from Redis every CapRefresh (500 ms) for the
// destinations asked for in the last capWatch: one MGET per refresh,
// whatever the number of nodes. A key rather than pub/sub: the key is the
// state itself, so a node that starts, or reconnects after Redis was gone,
// reads the current lesson instead of waiting for the next message
// (pub/sub drops what is published while a node is disconnected). The
// polling bounds how old a node's view is (CapRefresh); new leases do not
// even depend on it, since acquireScript reads the cap key itself.
//
// A publish writes the cache at once, and a refresh whose read began before
// it does not overwrite it: a node never sees its own lesson undone by a
// read that crossed it.

// learned is one destination's lessons as this node knows them.
type learned struct {
	cap       int
	rate      float64   // messages a second
	read      bool      // read from Redis at least once
	asked     time.Time // wall time of the last question, for capWatch
	published time.Time // wall time of this node's last publish
}

// PublishCap implements Limits. While degraded the cap applies to this
// node only (and is overwritten by Redis's value on recovery).
func (c *Client) PublishCap(ctx context.Context, dest string, cap int) {
	cap = max(cap, 0)
	v := ""
	if cap > 0 {
		v = strconv.Itoa(cap)
	}
	c.publish(ctx, dest, c.keys.cap(dest), v, func(e *learned) { e.cap = cap })
}

// PublishRate implements Limits. While degraded the rate applies to this
// node only (and is overwritten by Redis's value on recovery).
func (c *Client) PublishRate(ctx context.Context, dest string, perSecond float64) {
	perSecond = max(perSecond, 0)
	v := ""
	if perSecond > 0 {
		v = strconv.FormatFloat(perSecond, 'g', -1, 64)
	}
	c.publish(ctx, dest, c.keys.learnedRate(dest), v, func(e *learned) { e.rate = perSecond })
}

// publish sets one lesson in the cache (set) and in Redis (key to v, or
// deleted for "").
func (c *Client) publish(ctx context.Context, dest, key, v string, set func(*learned)) {
	now := time.Now()
	c.mu.Lock()
	e := c.mu.learned[dest]
	set(&e)
	e.asked, e.published = now, now
	c.mu.learned[dest] = e
	c.mu.Unlock()
	_ = c.do(ctx, func(ctx context.Context) error {
		if v == "" {
			return c.rdb.Del(ctx, key).Err()
		}
		return c.rdb.Set(ctx, key, v, c.opt.CapTTL).Err()
	})
}

// LearnedCap implements Limits. The first question about a destination
// reads Redis; later ones read the cache.
func (c *Client) LearnedCap(ctx context.Context, dest string) int {
	return c.lessons(ctx, dest).cap
}

// LearnedRate implements Limits, as LearnedCap.
func (c *Client) LearnedRate(ctx context.Context, dest string) float64 {
	return c.lessons(ctx, dest).rate
}

// lessons answers from the cache, once it holds what Redis had for dest;
// else it reads Redis. Degraded, it answers what the cache has (nothing
// for a destination never read nor published).
func (c *Client) lessons(ctx context.Context, dest string) learned {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.mu.learned[dest]
	if ok {
		e.asked = now
		c.mu.learned[dest] = e
	}
	c.mu.Unlock()
	if ok && e.read {
		return e
	}
	var vals []any
	err := c.do(ctx, func(ctx context.Context) (err error) {
		vals, err = c.rdb.MGet(ctx, c.keys.cap(dest), c.keys.learnedRate(dest)).Result()
		return err
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if _, ok := c.mu.learned[dest]; !ok {
			c.mu.learned[dest] = learned{asked: now}
		}
		c.applyLocked(dest, vals, now)
	}
	return c.mu.learned[dest]
}

// applyLocked sets dest's cached lessons to vals (cap, rate: an MGET's
// answer) read from a call begun at start, unless this node published
// since.
func (c *Client) applyLocked(dest string, vals []any, start time.Time) {
	e, ok := c.mu.learned[dest]
	if !ok || e.published.After(start) {
		return
	}
	e.cap, e.rate, e.read = 0, 0, true
	if s, isStr := vals[0].(string); isStr {
		e.cap, _ = strconv.Atoi(s)
	}
	if s, isStr := vals[1].(string); isStr {
		e.rate, _ = strconv.ParseFloat(s, 64)
	}
	c.mu.learned[dest] = e
}

// refreshLearned reads back the lessons of the destinations asked for
// recently and forgets the others. With none to read it pings Redis, so
// that an unreachable Redis is noticed within CapRefresh.
func (c *Client) refreshLearned(ctx context.Context) {
	start := time.Now()
	c.mu.Lock()
	var dests, ks []string
	for dest, e := range c.mu.learned {
		if start.Sub(e.asked) > capWatch {
			delete(c.mu.learned, dest)
			continue
		}
		dests = append(dests, dest)
		ks = append(ks, c.keys.cap(dest), c.keys.learnedRate(dest))
	}
	c.mu.local.prune(c.opt.Now())
	c.mu.Unlock()
	if len(ks) == 0 {
		_ = c.doBG(ctx, func(ctx context.Context) error { return c.rdb.Ping(ctx).Err() })
		return
	}
	var vals []any
	if c.doBG(ctx, func(ctx context.Context) (err error) {
		vals, err = c.rdb.MGet(ctx, ks...).Result()
		return err
	}) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, dest := range dests {
		c.applyLocked(dest, vals[2*i:2*i+2], start)
	}
}
