package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"relayq/internal/redistest"
)

// Three nodes taking and giving back leases from many goroutines never
// hold more than the cap together.
func TestLeasesNeverExceedCapAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	nodes := newNodes(t, srv, 3, Options{})
	const (
		cap        = 5
		perNode    = 8   // goroutines
		iterations = 150 // per goroutine
	)
	var open, peak, granted atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	for _, n := range nodes {
		for range perNode {
			wg.Go(func() {
				for range iterations {
					l, err := n.Acquire(ctx, "mx:example.com", cap)
					if err == ErrAtCap {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					granted.Add(1)
					now := open.Add(1)
					for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
					}
					time.Sleep(100 * time.Microsecond) // hold the "connection" a moment
					open.Add(-1)
					n.Release(ctx, l)
				}
			})
		}
	}
	wg.Wait()
	for _, n := range nodes {
		if n.Degraded() {
			t.Fatalf("%s went degraded: the run did not test shared leases", n.opt.Node)
		}
	}
	if peak.Load() > cap {
		t.Errorf("%d leases held at once across nodes, cap %d", peak.Load(), cap)
	}
	if peak.Load() < 2 || granted.Load() < perNode {
		t.Errorf("peak %d, granted %d: too little concurrency to test anything", peak.Load(), granted.Load())
	}
	views, err := nodes[0].Destinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		if len(v.Leases) != 0 {
			t.Errorf("%s: leases left after every Release: %v", v.Dest, v.Leases)
		}
	}
}

// A node that stops renewing (crashed: no Release) keeps its leases for
// their TTL and not longer; then the others take its share.
func TestDeadNodeLeasesExpireWithinTTL(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	const ttl = 30 * time.Second
	nodes := newNodes(t, srv, 3, Options{Now: clock.Now, LeaseTTL: ttl})
	dead, a, b := nodes[0], nodes[1], nodes[2]
	const dest, cap = "smarthost:relay.example:587", 4
	if got := acquireAll(t, dead, dest, cap, 10); len(got) != cap {
		t.Fatalf("dead node got %d leases, want %d", len(got), cap)
	}
	dead.halt() // no more renewals, no Release

	clock.Add(ttl - time.Millisecond)
	if _, err := a.Acquire(context.Background(), dest, cap); err != ErrAtCap {
		t.Fatalf("before the TTL: Acquire = %v, want ErrAtCap (the dead node's leases still count)", err)
	}
	clock.Add(2 * time.Millisecond)
	got := len(acquireAll(t, a, dest, cap, 10))
	got += len(acquireAll(t, b, dest, cap, 10))
	if got != cap {
		t.Errorf("after the TTL the live nodes got %d leases, want the whole cap %d", got, cap)
	}
}

// Renewal is what keeps a live node's leases: three TTLs later they
// still count.
func TestRenewedLeasesOutliveTTL(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	const ttl = 30 * time.Second
	nodes := newNodes(t, srv, 2, Options{Now: clock.Now, LeaseTTL: ttl})
	holder, other := nodes[0], nodes[1]
	const dest, cap = "mx:example.org", 3
	acquireAll(t, holder, dest, cap, 10)
	ctx := context.Background()
	for range 9 {
		clock.Add(ttl / 3)
		holder.renew(ctx)
	}
	if _, err := other.Acquire(ctx, dest, cap); err != ErrAtCap {
		t.Fatalf("Acquire = %v, want ErrAtCap: renewed leases expired", err)
	}
	views, err := other.Destinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 1 || views[0].Leases[holder.opt.Node] != cap {
		t.Errorf("Destinations = %+v, want %d leases of %s", views, cap, holder.opt.Node)
	}
}

// A cap learned by one node (421 4.3.2) applies at once to the leases of
// all, and their cached view has it after one refresh (the loop refreshes
// every CapRefresh, 500 ms).
func TestLearnedCapSharedByAllNodes(t *testing.T) {
	srv := redistest.Start(t)
	nodes := newNodes(t, srv, 3, Options{CapRefresh: 100 * time.Millisecond})
	ctx := context.Background()
	const dest = "mx:exchange.example"
	for _, n := range nodes {
		if got := n.LearnedCap(ctx, dest); got != 0 {
			t.Fatalf("%s: LearnedCap before any = %d", n.opt.Node, got)
		}
	}
	nodes[0].PublishCap(ctx, dest, 2)
	if got := len(acquireAll(t, nodes[1], dest, 20, 30)); got != 2 {
		t.Errorf("after a published cap of 2, a node got %d leases of configured cap 20", got)
	}
	nodes[2].refreshLearned(ctx)
	if got := nodes[2].LearnedCap(ctx, dest); got != 2 {
		t.Errorf("LearnedCap after one refresh = %d, want 2", got)
	}
	waitFor(t, "the background refresh shows the cap on node 1", 5*time.Second, func() bool {
		return nodes[1].LearnedCap(ctx, dest) == 2
	})
	nodes[1].PublishCap(ctx, dest, 0)
	waitFor(t, "a forgotten cap is forgotten on node 2", 5*time.Second, func() bool {
		return nodes[2].LearnedCap(ctx, dest) == 0
	})
}

// Nodes lists the nodes whose heartbeat is recent; Destinations, the
// leases of each node per destination.
func TestStatusViews(t *testing.T) {
	srv := redistest.Start(t)
	clock := newFakeClock()
	nodes := newNodes(t, srv, 3, Options{Now: clock.Now})
	ctx := context.Background()
	acquireAll(t, nodes[0], "d1", 2, 5)
	acquireAll(t, nodes[1], "d1", 3, 5) // one more under a cap of 3
	nodes[2].PublishCap(ctx, "d2", 7)
	views, err := nodes[2].Destinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 2 || views[0].Dest != "d1" || views[0].Leases["n0"] != 2 || views[0].Leases["n1"] != 1 ||
		views[1].Dest != "d2" || views[1].LearnedCap != 7 {
		t.Errorf("Destinations = %+v", views)
	}
	got, err := nodes[0].Nodes(ctx)
	if err != nil || len(got) != 3 {
		t.Fatalf("Nodes = %v, %v; want 3", got, err)
	}
	nodes[2].halt()
	clock.Add(NodeWindow + time.Second)
	for _, n := range nodes[:2] {
		if err := n.heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, err = nodes[0].Nodes(ctx)
	if err != nil || len(got) != 2 || got[0].Name != "n0" || got[1].Name != "n1" {
		t.Errorf("Nodes after n2 stopped = %v, %v; want n0, n1", got, err)
	}
}
