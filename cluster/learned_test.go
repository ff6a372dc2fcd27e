package cluster

import (
	"context"
	"testing"
	"time"

	"relayq/internal/redistest"
)

// A rate learned by one node (a reply saying we send too fast) is every
// node's after one refresh; a raise and a forgotten rate too. The key
// expires (CapTTL), and a rate of one message an hour survives the trip.
func TestLearnedRateSharedByAllNodes(t *testing.T) {
	srv := redistest.Start(t)
	nodes := newNodes(t, srv, 3, Options{CapRefresh: 100 * time.Millisecond, CapTTL: time.Hour})
	ctx := context.Background()
	const dest = "smarthost:o365"
	for _, n := range nodes {
		if got := n.LearnedRate(ctx, dest); got != 0 {
			t.Fatalf("%s: LearnedRate before any = %v", n.opt.Node, got)
		}
	}
	nodes[0].PublishRate(ctx, dest, 5)
	if got := nodes[0].LearnedRate(ctx, dest); got != 5 {
		t.Errorf("publisher's LearnedRate = %v, want 5 at once", got)
	}
	nodes[2].refreshLearned(ctx)
	if got := nodes[2].LearnedRate(ctx, dest); got != 5 {
		t.Errorf("LearnedRate after one refresh = %v, want 5", got)
	}
	waitFor(t, "the background refresh shows the rate on node 1", 5*time.Second, func() bool {
		return nodes[1].LearnedRate(ctx, dest) == 5
	})
	ttl, err := nodes[0].rdb.PTTL(ctx, nodes[0].keys.learnedRate(dest)).Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Errorf("the learned rate's key expires in %v (%v), want within CapTTL (1h)", ttl, err)
	}

	nodes[1].PublishRate(ctx, dest, 5.5) // a raise after a run of successes
	waitFor(t, "a raise on node 1 reaches node 0", 5*time.Second, func() bool {
		return nodes[0].LearnedRate(ctx, dest) == 5.5
	})
	nodes[2].PublishRate(ctx, dest, 1.0/3600)
	waitFor(t, "one an hour reaches node 1 exactly", 5*time.Second, func() bool {
		return nodes[1].LearnedRate(ctx, dest) == 1.0/3600
	})
	nodes[2].PublishRate(ctx, dest, 0)
	waitFor(t, "a forgotten rate is forgotten on node 0", 5*time.Second, func() bool {
		return nodes[0].LearnedRate(ctx, dest) == 0
	})
	if n, err := nodes[0].rdb.Exists(ctx, nodes[0].keys.learnedRate(dest)).Result(); err != nil || n != 0 {
		t.Errorf("the key of a forgotten rate exists: %d, %v", n, err)
	}
	if got := nodes[0].LearnedCap(ctx, dest); got != 0 {
		t.Errorf("LearnedCap = %d: publishing rates set a cap", got)
	}
}

// A read of Redis that began before this node published (a refresh
// crossing the publish) does not undo the node's own lesson in its cache.
func TestOwnPublishNotUndoneByACrossingRead(t *testing.T) {
	srv := redistest.Start(t)
	n := newNodes(t, srv, 1, Options{})[0]
	ctx := context.Background()
	const dest = "d"
	n.LearnedRate(ctx, dest) // cached: none
	start := time.Now()
	n.PublishRate(ctx, dest, 2)
	n.PublishCap(ctx, dest, 3)
	n.mu.Lock()
	n.applyLocked(dest, []any{nil, nil}, start) // what an MGET begun at start saw
	n.mu.Unlock()
	if r, c := n.LearnedRate(ctx, dest), n.LearnedCap(ctx, dest); r != 2 || c != 3 {
		t.Errorf("after a crossing read: rate %v, cap %d; want the published 2 and 3", r, c)
	}
	n.mu.Lock()
	n.applyLocked(dest, []any{nil, "7"}, time.Now()) // a read begun after
	n.mu.Unlock()
	if r, c := n.LearnedRate(ctx, dest), n.LearnedCap(ctx, dest); r != 7 || c != 0 {
		t.Errorf("after a later read: rate %v, cap %d; want Redis's 7 and none", r, c)
	}
}

// Degraded (Redis hung), a node answers its learned rates from its cache
// at once, keeps a rate it publishes to itself, and learns none for a
// destination it never asked about. Redis back, Redis's value wins on
// that node, and the others never saw the local one.
func TestLearnedRateWhileDegraded(t *testing.T) {
	srv := redistest.Start(t)
	nodes := newNodes(t, srv, 2, Options{CapRefresh: 50 * time.Millisecond, Timeout: DefaultTimeout})
	ctx := context.Background()
	const dest = "smarthost:o365"
	nodes[0].PublishRate(ctx, dest, 5)
	waitFor(t, "node 1 has the rate", 5*time.Second, func() bool { return nodes[1].LearnedRate(ctx, dest) == 5 })

	srv.Pause()
	t.Cleanup(srv.Resume)
	waitFor(t, "node 1 degraded", 10*time.Second, nodes[1].Degraded)
	start := time.Now()
	if got := nodes[1].LearnedRate(ctx, dest); got != 5 {
		t.Errorf("degraded LearnedRate = %v, want the cached 5", got)
	}
	if got := nodes[1].LearnedRate(ctx, "never-asked"); got != 0 {
		t.Errorf("degraded LearnedRate of a new destination = %v, want none", got)
	}
	nodes[1].PublishRate(ctx, dest, 2.5)
	if got := nodes[1].LearnedRate(ctx, dest); got != 2.5 {
		t.Errorf("degraded, after publishing 2.5: LearnedRate = %v", got)
	}
	if took := time.Since(start); took > DefaultTimeout {
		t.Errorf("three degraded calls took %s; none may wait on Redis", took)
	}

	srv.Resume()
	for _, n := range nodes {
		waitFor(t, n.opt.Node+" shares again", 10*time.Second, func() bool { return !n.Degraded() })
	}
	waitFor(t, "Redis's 5 overwrites node 1's local 2.5", 5*time.Second, func() bool {
		return nodes[1].LearnedRate(ctx, dest) == 5
	})
	if got := nodes[0].LearnedRate(ctx, dest); got != 5 {
		t.Errorf("node 0's LearnedRate = %v, want 5: a rate published while degraded stays local", got)
	}
}
