package cluster

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Learned caps live in a key per destination (with CapTTL) and in a local
// cache that the background loop reads back from Redis every CapRefresh
// (500 ms) for the destinations asked for in the last capWatch: one MGET
// per refresh, whatever the number of nodes. A key rather than pub/sub: the
// key is the state itself, so a node that starts, or reconnects after
// Redis was gone, reads the current cap instead of waiting for the next
// message (pub/sub drops what is published while a node is disconnected).
// The polling bounds how old a node's view is (CapRefresh); new leases do
// not even depend on it, since acquireScript reads the key itself.

// PublishCap implements Limits. While degraded the cap applies to this
// node only (and is overwritten by Redis's value on recovery).
func (c *Client) PublishCap(ctx context.Context, dest string, cap int) {
	c.mu.Lock()
	c.mu.caps[dest] = capEntry{cap: max(cap, 0), asked: time.Now()}
	c.mu.Unlock()
	_ = c.do(ctx, func(ctx context.Context) error {
		if cap <= 0 {
			return c.rdb.Del(ctx, c.keys.cap(dest)).Err()
		}
		return c.rdb.Set(ctx, c.keys.cap(dest), cap, c.opt.CapTTL).Err()
	})
}

// LearnedCap implements Limits. The first question about a destination
// reads Redis; later ones read the cache.
func (c *Client) LearnedCap(ctx context.Context, dest string) int {
	c.mu.Lock()
	e, ok := c.mu.caps[dest]
	if ok {
		e.asked = time.Now()
		c.mu.caps[dest] = e
	}
	c.mu.Unlock()
	if ok {
		return e.cap
	}
	var learned int
	err := c.do(ctx, func(ctx context.Context) error {
		v, err := c.rdb.Get(ctx, c.keys.cap(dest)).Result()
		if err == redis.Nil {
			return nil
		}
		if err == nil {
			learned, _ = strconv.Atoi(v)
		}
		return err
	})
	if err == nil {
		c.mu.Lock()
		c.mu.caps[dest] = capEntry{cap: learned, asked: time.Now()}
		c.mu.Unlock()
	}
	return learned
}

// refreshCaps reads back the learned caps of the destinations asked for
// recently and forgets the others. With none to read it pings Redis, so
// that an unreachable Redis is noticed within CapRefresh.
func (c *Client) refreshCaps(ctx context.Context) {
	c.mu.Lock()
	var dests, ks []string
	for dest, e := range c.mu.caps {
		if time.Since(e.asked) > capWatch {
			delete(c.mu.caps, dest)
			continue
		}
		dests = append(dests, dest)
		ks = append(ks, c.keys.cap(dest))
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
		e, ok := c.mu.caps[dest]
		if !ok {
			continue
		}
		e.cap = 0
		if s, isStr := vals[i].(string); isStr {
			e.cap, _ = strconv.Atoi(s)
		}
		c.mu.caps[dest] = e
	}
}
