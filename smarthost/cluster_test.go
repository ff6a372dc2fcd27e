package smarthost

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/cluster"
	"relayq/internal/redistest"
	"relayq/internal/sink"
	"relayq/internal/smtptest"
)

// clusterNodes starts n paused workers, each with its own queue, sharing
// limits through one real Redis and delivering to dst through dialer
// (shared, so that it counts the connections of all of them). tune, if
// set, tunes each.
func clusterNodes(t *testing.T, n int, dst *sink.Server, targets []Target, dialer Dialer, tune func(*Worker)) []*harness {
	t.Helper()
	srv := redistest.Start(t)
	router := &Static{Destination: "sink", Targets: targets}
	nodes := make([]*harness, n)
	for i := range nodes {
		c, err := cluster.New(context.Background(), cluster.Options{
			URL: srv.URL(), Node: fmt.Sprintf("n%d", i),
			// These tests check what is shared, not latency: a loaded
			// machine must not make a node fall back to local limits.
			Timeout: time.Second,
			Log:     zerolog.New(zerolog.NewTestWriter(t)),
		})
		if err != nil {
			t.Fatal(err)
		}
		// Registered before the worker's: cleanups run last first, so the
		// client closes after its worker stopped.
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		waitFor(t, "node shares limits through Redis", func() bool { return !c.Degraded() })
		var own *sink.Server
		if i == 0 {
			own = dst // closed with the first node
		}
		nodes[i] = pausedHarness(t, own, router, func(w *Worker) {
			w.Cluster = c
			w.Dialer = dialer
			if tune != nil {
				tune(w)
			}
		})
	}
	return nodes
}

// Three nodes with a cap of 4 each and a backlog each: together they never
// open more than 4 connections to the destination (leases), and every
// message arrives once. Without the cluster they would open 12.
func TestClusterNodesShareTheDestinationCap(t *testing.T) {
	const perNode, limit = 40, 4
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := &recordingDialer{}
	targets := []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}
	nodes := clusterNodes(t, 3, dst, targets, dialer, func(w *Worker) { w.MaxConnsPerDest = limit })
	for i, h := range nodes {
		for k := range perNode {
			h.put("a@src.invalid", fmt.Sprintf("n%d-%d@dst.invalid", i, k))
		}
	}
	for _, h := range nodes {
		h.start()
	}
	msgs := nodes[0].waitSink(3 * perNode)
	if p := dialer.peak(); p > limit {
		t.Errorf("%d connections open at once from 3 nodes; their shared cap is %d", p, limit)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.To[0]]++
	}
	for rcpt, n := range seen {
		if n != 1 {
			t.Errorf("%s arrived %d times", rcpt, n)
		}
	}
	if len(seen) != 3*perNode {
		t.Errorf("%d distinct recipients arrived, want %d", len(seen), 3*perNode)
	}
}

// A cap one node learns from 421 4.3.2 holds for all: the destination
// takes 2 connections; once learned, no node opens a third.
func TestClusterLearnedCapHoldsForEveryNode(t *testing.T) {
	const limit = 2
	dst, err := sink.Start(sink.Options{MaxConns: limit})
	if err != nil {
		t.Fatal(err)
	}
	dialer := &recordingDialer{}
	targets := []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}
	nodes := clusterNodes(t, 3, dst, targets, dialer, func(w *Worker) {
		w.MaxConnsPerDest = 6
		w.RaiseAfter = 1000 // no probing above the learned cap in this test
	})
	for i, h := range nodes {
		for k := range 20 {
			h.put("a@src.invalid", fmt.Sprintf("n%d-%d@dst.invalid", i, k))
		}
	}
	for _, h := range nodes {
		h.start()
	}
	nodes[0].waitSink(60)
	_, _, refused := dst.Connections()
	if refused == 0 {
		t.Fatal("the destination refused nothing: the test proves nothing")
	}

	dialer.resetPeak()
	for i, h := range nodes {
		for k := range 20 {
			h.put("a@src.invalid", fmt.Sprintf("again-n%d-%d@dst.invalid", i, k))
		}
	}
	nodes[0].waitSink(120)
	if p := dialer.peak(); p > limit {
		t.Errorf("%d connections open at once after the cap of %d was learned", p, limit)
	}
	if _, _, now := dst.Connections(); now != refused {
		t.Errorf("%d more connections refused after the cap was learned", now-refused)
	}
	for i, h := range nodes {
		if d := destStatus(t, h.worker, "sink"); d.Cap > limit {
			t.Errorf("node %d: cap %d, want at most the learned %d", i, d.Cap, limit)
		}
	}
}

// A host one node found dead is skipped by the others without a dial.
func TestClusterCooldownSkipsAHostAnotherNodeFoundDead(t *testing.T) {
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	down := smtptest.ClosedAddr(t)
	dialer := &recordingDialer{}
	targets := []Target{
		{Addr: down, TLS: TLSNone, Timeout: 5 * time.Second},
		{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second},
	}
	nodes := clusterNodes(t, 2, dst, targets, dialer, func(w *Worker) { w.CoolDown = time.Minute })
	nodes[0].put("a@src.invalid", "first@dst.invalid")
	nodes[0].start()
	nodes[0].waitSink(1)
	before := dialer.dials()
	if got := dialer.dialedSince(0); len(got) < 2 || got[0] != down {
		t.Fatalf("node 0 dialled %v, want the dead host first", got)
	}

	nodes[1].put("a@src.invalid", "second@dst.invalid")
	nodes[1].start()
	nodes[0].waitSink(2)
	for _, addr := range dialer.dialedSince(before) {
		if addr == down {
			t.Errorf("node 1 dialled %s, which node 0 found dead a moment ago", down)
		}
	}
}
