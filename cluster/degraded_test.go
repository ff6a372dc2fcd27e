package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"relayq/internal/redistest"
)

// Redis killed: every node turns degraded on its own (no call needed),
// logs it once, opens nothing beyond what it holds for the fallback's
// grace (the others may still hold more than their share), and then keeps
// to cap/expected_nodes counting the leases it already holds. Redis back (empty): the nodes register the leases they
// hold and share again, and no new lease is granted while the total is at
// the cap.
func TestRedisDownFallbackAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	var logs syncBuffer
	clock := newFakeClock()
	nodes := newNodes(t, srv, 3, Options{ExpectedNodes: 3, CapRefresh: 50 * time.Millisecond, Now: clock.Now}, &logs)
	ctx := context.Background()
	const dest, cap = "mx:exchange.example", 9 // fallback: 3 per node
	held := make([][]*Lease, len(nodes))
	for range 2 {
		for i, n := range nodes {
			l, err := n.Acquire(ctx, dest, cap)
			if err != nil {
				t.Fatal(err)
			}
			held[i] = append(held[i], l)
		}
	}

	// A slow first dial may have made a node degraded for a moment at
	// start: count from here.
	warnsBefore := logs.count("warn")
	episodesBefore := make([]uint64, len(nodes))
	for i, n := range nodes {
		episodesBefore[i] = n.Episodes()
	}
	srv.Kill()
	for _, n := range nodes {
		waitFor(t, n.opt.Node+" degraded after Redis died", 5*time.Second, n.Degraded)
	}
	for _, n := range nodes {
		if more := acquireAll(t, n, dest, cap, 10); len(more) != 0 {
			t.Errorf("%s degraded, holding 2, others holding theirs: got %d more leases in the fallback's grace, want none", n.opt.Node, len(more))
		}
	}
	clock.Add(nodes[0].fallbackGrace())
	for i, n := range nodes {
		more := acquireAll(t, n, dest, cap, 10)
		if len(more) != 1 {
			t.Errorf("%s degraded, holding 2: got %d more leases, want 1 (cap %d / 3 nodes)", n.opt.Node, len(more), cap)
		}
		held[i] = append(held[i], more...)
	}
	if w := logs.count("warn") - warnsBefore; w != len(nodes) {
		t.Errorf("%d warnings for 3 nodes' one episode each, want 3", w)
	}

	srv.Restart()
	for _, n := range nodes {
		waitFor(t, n.opt.Node+" shared again after Redis came back", 5*time.Second, func() bool { return !n.Degraded() })
	}
	views, err := nodes[0].Destinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 1 || views[0].Leases["n0"] != 3 || views[0].Leases["n1"] != 3 || views[0].Leases["n2"] != 3 {
		t.Fatalf("after recovery Redis shows %+v, want 3 leases of each node", views)
	}
	if _, err := nodes[0].Acquire(ctx, dest, cap); err != ErrAtCap {
		t.Fatalf("Acquire at 9 of 9 after recovery = %v, want ErrAtCap", err)
	}
	nodes[1].Release(ctx, held[1][0])
	if _, err := nodes[0].Acquire(ctx, dest, cap); err != ErrAtCap {
		t.Errorf("Acquire beyond n0's share of 3 right after recovery = %v, want ErrAtCap (others may still be degraded)", err)
	}
	clock.Add(nodes[0].fallbackGrace())
	if _, err := nodes[0].Acquire(ctx, dest, cap); err != nil {
		t.Errorf("Acquire after another node's Release = %v, want a lease", err)
	}
	if w := logs.count("warn") - warnsBefore; w != len(nodes) {
		t.Errorf("%d warnings after recovery, want still 3", w)
	}
	for i, n := range nodes {
		if e := n.Episodes() - episodesBefore[i]; e != 1 {
			t.Errorf("%s: %d degraded episodes, want 1", n.opt.Node, e)
		}
	}
}

// A Redis that hangs (stopped, connections open) costs a call at most the
// per-call timeout, not go-redis's seconds-long defaults, and the caller
// gets a lease from the fallback.
func TestHungRedisTimesOutToFallback(t *testing.T) {
	srv := redistest.Start(t)
	// One expected node: no grace (TestFallbackWaitsForTheOthersToShed).
	nodes := newNodes(t, srv, 1, Options{ExpectedNodes: 1, CapRefresh: 50 * time.Millisecond, Timeout: DefaultTimeout})
	n := nodes[0]
	srv.Pause()
	start := time.Now()
	l, err := n.Acquire(context.Background(), "mx:slow.example", 4)
	if took := time.Since(start); took > time.Second {
		// 20 times the 50 ms bound; go-redis's own read timeout is 3 s.
		t.Errorf("Acquire against a hung Redis took %s", took)
	}
	if err != nil || l == nil || !n.Degraded() {
		t.Fatalf("Acquire = %v, %v, degraded %v; want a fallback lease", l, err, n.Degraded())
	}
	srv.Resume()
	waitFor(t, "shared again after Redis resumed", 5*time.Second, func() bool { return !n.Degraded() })
}

// A client started while Redis is down works degraded from the start
// (after the fallback's grace) and shares once Redis is up.
func TestStartWithRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	clock := newFakeClock()
	c, err := New(context.Background(), Options{URL: srv.URL(), Node: "late", ExpectedNodes: 2, CapRefresh: 50 * time.Millisecond, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if !c.Degraded() {
		t.Fatal("not degraded with Redis down")
	}
	if got := len(acquireAll(t, c, "d", 4, 10)); got != 0 {
		t.Errorf("started with Redis down: %d leases at once, want none for the grace (the other node may hold the whole cap)", got)
	}
	clock.Add(c.fallbackGrace())
	if got := len(acquireAll(t, c, "d", 4, 10)); got != 2 {
		t.Errorf("degraded with expected_nodes 2: %d leases of cap 4, want 2", got)
	}
	srv.Restart()
	waitFor(t, "shared after Redis started", 5*time.Second, func() bool { return !c.Degraded() })
	if got := c.Held()["d"]; got != 2 {
		t.Errorf("Held = %d, want the 2 fallback leases", got)
	}
}

// Cool-downs set by one node are seen (and cleared) by the others; while
// degraded a node keeps its own.
func TestCooldownsShared(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 2, Options{Now: clock.Now, CapRefresh: 50 * time.Millisecond})
	ctx := context.Background()
	until := clock.Now().Add(time.Minute)
	nodes[0].SetCooldown(ctx, "mx1.example.com", until)
	if got := nodes[1].Cooldown(ctx, "mx1.example.com"); !got.Equal(until) {
		t.Errorf("other node's Cooldown = %v, want %v", got, until)
	}
	nodes[1].SetCooldown(ctx, "mx1.example.com", time.Time{})
	if got := nodes[0].Cooldown(ctx, "mx1.example.com"); !got.IsZero() {
		t.Errorf("Cooldown after clearing = %v, want none", got)
	}
	nodes[0].SetCooldown(ctx, "mx2.example.com", until)
	srv.Kill()
	waitFor(t, "degraded", 5*time.Second, nodes[0].Degraded)
	if got := nodes[0].Cooldown(ctx, "mx2.example.com"); !got.Equal(until) {
		t.Errorf("degraded Cooldown = %v, want its own %v", got, until)
	}
	clock.Add(time.Minute)
	if got := nodes[0].Cooldown(ctx, "mx2.example.com"); !got.IsZero() {
		t.Errorf("Cooldown at its end = %v, want none", got)
	}
}

// The fallback divides the learned cap, not the configured one, when a
// lower cap was learned before Redis went away.
func TestFallbackUsesLearnedCap(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 2, Options{ExpectedNodes: 3, CapRefresh: 50 * time.Millisecond, Now: clock.Now})
	ctx := context.Background()
	nodes[0].PublishCap(ctx, "d", 6)
	if got := nodes[1].LearnedCap(ctx, "d"); got != 6 {
		t.Fatalf("LearnedCap = %d, want 6", got)
	}
	srv.Kill()
	waitFor(t, "degraded", 5*time.Second, nodes[1].Degraded)
	clock.Add(nodes[1].fallbackGrace()) // n0 was seen: n1's fallback starts with a grace
	if got := len(acquireAll(t, nodes[1], "d", 20, 30)); got != 2 {
		t.Errorf("degraded with a learned cap of 6 over 3 nodes: %d leases, want 2", got)
	}
}

// Under load on three nodes, Redis killed and restarted: with every node
// degraded the total stays within the cap; once all share again the total
// never rises above the cap (nor above what was open then); and after the
// last Release, Redis holds no lease (none leaked by the switch back).
func TestRedisRestartUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	const cap, nNodes = 9, 3
	nodes := newNodes(t, srv, nNodes, Options{ExpectedNodes: nNodes, CapRefresh: 50 * time.Millisecond, LeaseTTL: 3 * time.Second})
	ctx := context.Background()
	var open, peak, granted atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, n := range nodes {
		for range 4 {
			wg.Go(func() {
				for i := 0; i < 100000 && !stop.Load(); i++ {
					l, err := n.Acquire(ctx, "d", cap)
					if err != nil {
						time.Sleep(100 * time.Microsecond)
						continue
					}
					granted.Add(1)
					now := open.Add(1)
					for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
					}
					time.Sleep(200 * time.Microsecond)
					open.Add(-1)
					n.Release(ctx, l)
				}
			})
		}
	}
	allDegradedIs := func(want bool) func() bool {
		return func() bool {
			for _, n := range nodes {
				if n.Degraded() != want {
					return false
				}
			}
			return true
		}
	}
	// letRun waits until the phase has granted some leases: a phase that
	// granted none would pass its check without testing it.
	letRun := func(phase string) {
		from := granted.Load()
		waitFor(t, "leases granted in the "+phase+" phase", 5*time.Second, func() bool { return granted.Load() >= from+100 })
	}
	letRun("shared")
	srv.Kill()
	waitFor(t, "all nodes degraded", 5*time.Second, allDegradedIs(true))
	peak.Store(open.Load())
	letRun("degraded")
	if p := peak.Load(); p > cap {
		t.Errorf("all nodes degraded: %d open at once, cap %d", p, cap)
	}
	srv.Restart()
	waitFor(t, "all nodes shared again", 5*time.Second, allDegradedIs(false))
	atRecovery := open.Load()
	peak.Store(atRecovery)
	letRun("shared again")
	stop.Store(true)
	wg.Wait()
	if p := peak.Load(); p > max(cap, atRecovery) {
		t.Errorf("after recovery: %d open at once, cap %d (%d open when all were shared again)", p, cap, atRecovery)
	}
	views, err := nodes[0].Destinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		if len(v.Leases) != 0 {
			t.Errorf("leases left in Redis after every Release: %v", v.Leases)
		}
	}
}

// The first node to lose Redis does not take its whole fallback share
// while the others still hold the connections Redis granted them: a node
// holding 1 of a cap of 9 (the others 4 each) opens none more for the
// grace, then up to its share of 3.
func TestFallbackWaitsForTheOthersToShed(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 3, Options{ExpectedNodes: 3, CapRefresh: 50 * time.Millisecond, Now: clock.Now})
	const dest, cap = "mx:exchange.example", 9
	for i, want := range []int{1, 4, 4} {
		for range want {
			if _, err := nodes[i].Acquire(context.Background(), dest, cap); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv.Kill()
	waitFor(t, "n0 degraded", 5*time.Second, nodes[0].Degraded)
	if got := acquireAll(t, nodes[0], dest, cap, 10); len(got) != 0 {
		t.Errorf("n0 holding 1 took %d more at once while n1 and n2 hold 8 of 9: the destination would see %d", len(got), 9+len(got))
	}
	clock.Add(nodes[0].fallbackGrace() - time.Millisecond)
	if got := acquireAll(t, nodes[0], dest, cap, 10); len(got) != 0 {
		t.Errorf("n0 took %d more before its grace ended", len(got))
	}
	clock.Add(time.Millisecond)
	if got := acquireAll(t, nodes[0], dest, cap, 10); len(got) != 2 {
		t.Errorf("after the grace n0 took %d more, want 2 (its share of 3)", len(got))
	}
}
