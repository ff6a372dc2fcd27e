package cluster

import (
	"context"
	"testing"
	"time"

	"relayq/internal/redistest"
)

// stepRate drives Allow on every node at each step of a window, starting
// with the next node at each step, and returns how many messages each node
// was allowed. Every refusal's wait
// must be within one interval.
func stepRate(t *testing.T, nodes []*Client, clock *fakeClock, dest string, r Rate, window, step time.Duration, interval time.Duration) []int {
	t.Helper()
	ctx := context.Background()
	allowed := make([]int, len(nodes))
	for s, elapsed := 0, time.Duration(0); elapsed <= window; s, elapsed = s+1, elapsed+step {
		for k := range nodes {
			i := (s + k) % len(nodes)
			wait, err := nodes[i].Allow(ctx, dest, r)
			if err != nil {
				t.Fatal(err)
			}
			if wait < 0 || wait > interval {
				t.Fatalf("wait %s outside (0, %s]", wait, interval)
			}
			if wait == 0 {
				allowed[i]++
			}
		}
		clock.Add(step)
	}
	return allowed
}

// One GCRA limiter across three nodes allows the configured rate in
// total, not three times it.
func TestRateSharedAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 3, Options{Now: clock.Now})
	r := PerMinute(600) // one every 100 ms
	allowed := stepRate(t, nodes, clock, "smarthost:o365", r, 10*time.Second, 20*time.Millisecond, 100*time.Millisecond)
	total := allowed[0] + allowed[1] + allowed[2]
	// 10 s at 10/s, plus the one at the start of the window.
	if total < 100 || total > 101 {
		t.Errorf("allowed %d in 10 s at 600/min over three nodes (%v), want 100-101", total, allowed)
	}
	for i, a := range allowed {
		if a == 0 {
			t.Errorf("node %d never allowed: %v", i, allowed)
		}
	}
}

// A burst lets that many go at once, then the rate paces.
func TestRateBurst(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 2, Options{Now: clock.Now})
	r := Rate{Messages: 60, Per: time.Minute, Burst: 5}
	ctx := context.Background()
	got := 0
	for i := range 10 {
		if wait, _ := nodes[i%2].Allow(ctx, "d", r); wait == 0 {
			got++
		}
	}
	if got != 5 {
		t.Errorf("%d allowed at once with burst 5", got)
	}
	wait, _ := nodes[0].Allow(ctx, "d", r)
	if wait != time.Second {
		t.Errorf("wait after the burst = %s, want 1s", wait)
	}
}

// Degraded, each node keeps to rate/expected_nodes on its own.
func TestRateFallbackIsShareOfRate(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 3, Options{Now: clock.Now, ExpectedNodes: 3, CapRefresh: 50 * time.Millisecond})
	srv.Kill()
	for _, n := range nodes {
		waitFor(t, "degraded", 5*time.Second, n.Degraded)
	}
	allowed := stepRate(t, nodes, clock, "d", PerMinute(600), 9*time.Second, 50*time.Millisecond, 300*time.Millisecond)
	for i, a := range allowed {
		// 9 s at 600/min / 3 = one every 300 ms: 30, plus the first.
		if a < 30 || a > 31 {
			t.Errorf("node %d allowed %d in 9 s degraded, want 30-31 (a third of 600/min)", i, a)
		}
	}
}
