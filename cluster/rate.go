package cluster

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Rate is a message rate: Messages per Per, of which Burst may go at once
// (0 or 1: evenly spaced).
type Rate struct {
	Messages int
	Per      time.Duration
	Burst    int
}

// PerMinute is n messages a minute, evenly spaced.
func PerMinute(n int) Rate { return Rate{Messages: n, Per: time.Minute} }

// interval is the time between two messages when nodes share the rate
// equally (the fallback's share: each node gets rate/nodes).
func (r Rate) interval(nodes int) time.Duration {
	return r.Per * time.Duration(nodes) / time.Duration(r.Messages)
}

func (r Rate) burst() int { return max(r.Burst, 1) }

// Allow implements Limits with one GCRA limiter per destination shared by
// all nodes; while degraded, a local one at rate/ExpectedNodes. A rate
// with no Messages or no Per is no limit.
func (c *Client) Allow(ctx context.Context, dest string, r Rate) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if r.Messages <= 0 || r.Per <= 0 {
		return 0, nil
	}
	now := c.opt.Now()
	var wait time.Duration
	err := c.do(ctx, func(ctx context.Context) error {
		us, err := gcraScript.Run(ctx, c.rdb, []string{c.keys.rate(dest)},
			now.UnixMicro(), r.interval(1).Microseconds(), r.burst()).Int64()
		wait = time.Duration(us) * time.Microsecond
		return err
	})
	switch {
	case err == nil:
		return wait, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.local.allow(dest, now, r.interval(c.opt.ExpectedNodes), r.burst()), nil
}

// SetCooldown implements Limits. The cool-down is also kept locally, for
// use while degraded.
func (c *Client) SetCooldown(ctx context.Context, host string, until time.Time) {
	now := c.opt.Now()
	c.mu.Lock()
	c.mu.local.setCooldown(host, now, until)
	c.mu.Unlock()
	_ = c.do(ctx, func(ctx context.Context) error {
		if !until.After(now) {
			return c.rdb.Del(ctx, c.keys.cooldown(host)).Err()
		}
		return c.rdb.Set(ctx, c.keys.cooldown(host), ms(until), until.Sub(now)).Err()
	})
}

// Cooldown implements Limits: Redis's answer, which another node may have
// set or cleared; the local one while degraded.
func (c *Client) Cooldown(ctx context.Context, host string) time.Time {
	now := c.opt.Now()
	var until time.Time
	err := c.do(ctx, func(ctx context.Context) error {
		v, err := c.rdb.Get(ctx, c.keys.cooldown(host)).Result()
		if err == redis.Nil {
			return nil
		}
		if err != nil {
			return err
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil // not ours; treat as none
		}
		until = time.UnixMilli(n)
		return nil
	})
	if err != nil {
		c.mu.Lock()
		until = c.mu.local.cooldown(host)
		c.mu.Unlock()
	}
	if !until.After(now) {
		return time.Time{}
	}
	return until
}
