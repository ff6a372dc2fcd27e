package cluster

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// heartbeat records this node as seen now, and forgets nodes not seen
// within NodeWindow. One sorted set (node → last seen, ms) with a TTL
// lists the nodes in one call.
func (c *Client) heartbeat(ctx context.Context) error {
	now := c.opt.Now()
	p := c.rdb.Pipeline()
	p.ZAdd(ctx, c.keys.nodes(), redis.Z{Score: float64(ms(now)), Member: c.opt.Node})
	p.ZRemRangeByScore(ctx, c.keys.nodes(), "-inf", "("+strconv.FormatInt(ms(now.Add(-NodeWindow)), 10))
	p.PExpire(ctx, c.keys.nodes(), 2*NodeWindow)
	_, err := p.Exec(ctx)
	return err
}

// Node is one node of the cluster as the heartbeats show it.
type Node struct {
	Name     string
	LastSeen time.Time
}

// Nodes lists the nodes seen within NodeWindow, by name.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	since := strconv.FormatInt(ms(c.opt.Now().Add(-NodeWindow)), 10)
	var zs []redis.Z
	err := c.doBG(ctx, func(ctx context.Context) (err error) {
		zs, err = c.rdb.ZRangeByScoreWithScores(ctx, c.keys.nodes(), &redis.ZRangeBy{Min: since, Max: "+inf"}).Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	nodes := make([]Node, len(zs))
	for i, z := range zs {
		nodes[i] = Node{Name: z.Member.(string), LastSeen: time.UnixMilli(int64(z.Score))}
	}
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, nil
}

// DestView is one destination as every node shares it.
type DestView struct {
	Dest       string
	LearnedCap int            // 0: none published
	Leases     map[string]int // live leases per node
}

// maxScan bounds the SCAN pages Destinations reads.
const maxScan = 100

// Destinations lists the destinations with live leases or a learned cap,
// by name. It fails while degraded: Held then gives this node's view.
func (c *Client) Destinations(ctx context.Context) ([]DestView, error) {
	dests, err := c.scanDests(ctx)
	if err != nil {
		return nil, err
	}
	now := strconv.FormatInt(ms(c.opt.Now()), 10)
	views := make([]DestView, len(dests))
	err = c.doBG(ctx, func(ctx context.Context) error {
		p := c.rdb.Pipeline()
		leases := make([]*redis.StringSliceCmd, len(dests))
		caps := make([]*redis.StringCmd, len(dests))
		for i, d := range dests {
			leases[i] = p.ZRangeByScore(ctx, c.keys.leases(d), &redis.ZRangeBy{Min: "(" + now, Max: "+inf"})
			caps[i] = p.Get(ctx, c.keys.cap(d))
		}
		if _, err := p.Exec(ctx); err != nil && err != redis.Nil {
			return err
		}
		for i, d := range dests {
			v := DestView{Dest: d, Leases: map[string]int{}}
			v.LearnedCap, _ = strconv.Atoi(caps[i].Val())
			for _, m := range leases[i].Val() {
				node := m[:max(strings.LastIndexByte(m, '|'), 0)]
				v.Leases[node]++
			}
			views[i] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return views, nil
}

// scanDests finds the destinations that have a leases or a cap key.
func (c *Client) scanDests(ctx context.Context) ([]string, error) {
	prefix := c.keys.prefix + "dest:"
	seen := map[string]bool{}
	var cursor uint64
	for range maxScan {
		var page []string
		err := c.doBG(ctx, func(ctx context.Context) (err error) {
			page, cursor, err = c.rdb.Scan(ctx, cursor, prefix+"*", 1000).Result()
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, k := range page {
			rest := strings.TrimPrefix(k, prefix)
			for _, suffix := range []string{":leases", ":cap"} {
				if d, ok := strings.CutSuffix(rest, suffix); ok {
					seen[d] = true
				}
			}
		}
		if cursor == 0 {
			break
		}
	}
	dests := make([]string, 0, len(seen))
	for d := range seen {
		dests = append(dests, d)
	}
	slices.Sort(dests)
	return dests, nil
}
