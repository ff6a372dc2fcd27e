package smarthost

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/cluster"
	"relayq/config"
	"relayq/internal/redistest"
	"relayq/internal/sink"
	"relayq/internal/smtpreply"
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

// pacedNodes is the rate tests' setup: two workers paced at perMinute for
// one destination (a sink), each with a backlog of messages to
// recipients named n<node>-<k>, sharing limits through one Redis when
// shared is set; hooks script the sink.
func pacedNodes(t *testing.T, shared bool, perMinute, backlog int, hooks sink.Options) (*sink.Server, []*harness) {
	t.Helper()
	dst, err := sink.Start(hooks)
	if err != nil {
		t.Fatal(err)
	}
	targets := []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}
	paced := func(w *Worker) {
		w.Router = &Static{Destination: "sink", Targets: targets, Rate: config.Rate{PerMinute: perMinute}}
		w.RaiseAfter = 1000 // no raise of a learned rate within a test
	}
	var nodes []*harness
	if shared {
		nodes = clusterNodes(t, 2, dst, targets, &recordingDialer{}, paced)
	} else {
		nodes = []*harness{pausedHarness(t, dst, nil, paced), pausedHarness(t, nil, nil, paced)}
	}
	for i, h := range nodes {
		for k := range backlog {
			h.put("a@src.invalid", fmt.Sprintf("n%d-%d@dst.invalid", i, k))
		}
		h.start()
	}
	return dst, nodes
}

// arrivals returns when msgs arrived, in order, and which of two nodes
// sent each (by recipient prefix).
func arrivals(msgs []sink.Message) ([]time.Time, []int) {
	msgs = slices.Clone(msgs)
	slices.SortFunc(msgs, func(a, b sink.Message) int { return a.At.Compare(b.At) })
	at, from := make([]time.Time, len(msgs)), make([]int, len(msgs))
	for i, m := range msgs {
		at[i] = m.At
		if strings.HasPrefix(m.To[0], "n1-") {
			from[i] = 1
		}
	}
	return at, from
}

// byNode counts the arrivals of each of two nodes.
func byNode(from []int) [2]int {
	var n [2]int
	for _, i := range from {
		n[i]++
	}
	return n
}

// mostWithin is the most arrivals in any window of d.
func mostWithin(at []time.Time, d time.Duration) int {
	most, lo := 0, 0
	for hi := range at {
		for at[hi].Sub(at[lo]) >= d {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

// Two nodes with a backlog each for a destination of 600 messages a
// minute (one every 100 ms) send at most that together: 50 messages span
// at least 4.9 s of the shared limiter's turns (asserted: 4 s, for
// delivery jitter) and no 2 s window holds more than 21 (+2). The nodes
// share the turns as they come (each has a part of the first half), not
// one after the other. Without the cluster each node paces alone and the
// two send twice the rate; the control run shows that the bounds would
// catch it.
func TestClusterNodesShareTheDestinationRate(t *testing.T) {
	const perMinute, backlog = 600, 25
	const n = 2 * backlog
	run := func(t *testing.T, shared bool) (span time.Duration, most int, firstHalf [2]int) {
		dst, _ := pacedNodes(t, shared, perMinute, backlog, sink.Options{})
		at, from := arrivals(waitCount(t, dst, n, 30*time.Second))
		span, most, firstHalf = at[n-1].Sub(at[0]), mostWithin(at, 2*time.Second), byNode(from[:n/2])
		t.Logf("shared %v: %d messages in %s (%.1f/s), at most %d in 2 s; the first %d: %v from each node",
			shared, n, span.Round(time.Millisecond), float64(n-1)/span.Seconds(), most, n/2, firstHalf)
		return span, most, firstHalf
	}
	span, most, firstHalf := run(t, true)
	if span < 4*time.Second || most > 23 {
		t.Errorf("two nodes sharing 600/min sent %d messages in %s, at most %d in 2 s: faster than the rate", n, span, most)
	}
	if firstHalf[0] < n/8 || firstHalf[1] < n/8 {
		t.Errorf("the first %d messages came %v from each node; want the nodes to share the turns", n/2, firstHalf)
	}
	t.Run("control without the cluster", func(t *testing.T) {
		span, most, _ := run(t, false)
		if span >= 4*time.Second && most <= 23 {
			t.Errorf("two nodes pacing alone sent %d messages in %s, at most %d in 2 s: the shared run's bounds would not catch twice the rate", n, span, most)
		}
	})
}

// A rate one node lowers on a reply saying it sends too fast (450 4.7.1)
// is the other's within about a second (the cluster's refresh, 500 ms,
// then its next delivery), and both then keep to it together: ten more
// messages take at least 1.4 s (the halved rate's 1.8 s, less jitter;
// 0.9 s at the old rate). Both nodes deliver before the refusal, and no
// run of successes raises the rate within the test (RaiseAfter).
func TestClusterLearnedRateReachesEveryNode(t *testing.T) {
	const perMinute, backlog = 600, 60
	var rcpts, refusedAt atomic.Int64
	tooFast := &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "sending rate exceeded, slow down"}
	dst, nodes := pacedNodes(t, true, perMinute, backlog, sink.Options{OnRcpt: func(to string) error {
		// Once both nodes are under way, node 0's next message is refused.
		if rcpts.Add(1) > 10 && strings.HasPrefix(to, "n0-") && refusedAt.CompareAndSwap(0, time.Now().UnixNano()) {
			return tooFast
		}
		return nil
	}})
	const lowered = perMinute / 2 * 60 // messages an hour
	learned := func(i int) func() bool {
		return func() bool {
			for _, d := range nodes[i].worker.Destinations() {
				if d.Name == "sink" {
					return d.Rate.LearnedPerHour == lowered
				}
			}
			return false // no delivery to it yet
		}
	}
	waitFor(t, "node 0 lowers the rate on the destination's 450 4.7.1", learned(0))
	waitFor(t, "node 1 follows node 0's lowered rate", learned(1))
	took := time.Since(time.Unix(0, refusedAt.Load()))
	t.Logf("node 1 paced at node 0's learned rate %s after the refusal", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Errorf("node 1 followed the rate node 0 learned %s after the refusal; want about a second", took)
	}
	if r := destStatus(t, nodes[1].worker, "sink").Rate; !strings.Contains(r.Reason, "another relayq node") {
		t.Errorf("node 1's rate status %+v; want it to say another node learned it", r)
	}

	base := dst.Count()

	at, _ := arrivals(waitCount(t, dst, base+10, 30*time.Second)[base:])
	if span := at[len(at)-1].Sub(at[0]); span < 1400*time.Millisecond {
		t.Errorf("10 messages in %s after both nodes follow 300/min; want at least 1.4 s", span)
	} else {
		t.Logf("10 messages in %s at the learned 300/min", span.Round(time.Millisecond))
	}
}

// The pacer follows the cluster's shared limiter: after hold(until) the
// destination may go at until, not a local interval after the turn the
// refused delivery took; after allowed(at) its next turn is an interval
// after at, the cluster's decision, not after the reservation made
// before it. Either way a node that waits for the shared rate is not
// behind the one that just sent at every turn.
func TestPacerFollowsTheClusterLimiter(t *testing.T) {
	const interval = 100 * time.Millisecond
	t0 := time.Unix(1_800_000_000, 0)
	p := newPacer(DefaultRaiseAfter, func() time.Time { return t0 })
	p.configure("d", config.Rate{PerMinute: 600})
	reserve := func(at time.Duration) bool {
		ok, _ := p.reserve("d", t0.Add(at))
		return ok
	}
	if !reserve(0) {
		t.Fatal("first message refused")
	}
	p.hold("d", t0.Add(30*time.Millisecond))
	if reserve(29 * time.Millisecond) {
		t.Error("reserve before the cluster's time: allowed")
	}
	if !reserve(30 * time.Millisecond) {
		t.Error("reserve at the cluster's time refused: the refused turn was not given back")
	}
	p.allowed("d", t0.Add(50*time.Millisecond)) // the cluster said yes 20 ms after the reservation
	if reserve(30*time.Millisecond + interval) {
		t.Error("reserve an interval after the reservation: allowed, ahead of the cluster's decision")
	}
	if !reserve(50*time.Millisecond + interval) {
		t.Error("reserve an interval after the cluster's decision: refused")
	}
}

// A rate lowered while Redis is unreachable stays on that node (the other
// keeps its own), and is published once Redis answers again, even a
// restarted, empty one: then the other node follows it.
func TestClusterRateLearnedWhileDegradedIsPublishedOnRecovery(t *testing.T) {
	srv := redistest.Start(t)
	var ws [2]*Worker
	for i := range ws {
		c, err := cluster.New(context.Background(), cluster.Options{
			URL: srv.URL(), Node: fmt.Sprintf("n%d", i), Timeout: time.Second, CapRefresh: 50 * time.Millisecond,
			Log: zerolog.New(zerolog.NewTestWriter(t)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		ws[i] = &Worker{Cluster: c, Log: zerolog.New(zerolog.NewTestWriter(t))}
		ws[i].init()
		ws[i].pacer.configure("sink", config.Rate{PerMinute: 600})
	}
	ctx := context.Background()
	rateOf := func(i int) float64 {
		ws[i].syncRate(ctx, "sink")
		return ws[i].pacer.perSecond("sink")
	}
	srv.Kill()
	for _, w := range ws {
		waitFor(t, "degraded after Redis died", w.Cluster.Degraded)
	}
	reply := &smtpreply.Reply{Code: 450, Enhanced: smtpreply.EnhancedCode{4, 7, 1}, Text: "sending rate exceeded"}
	ws[0].lowerRate(ctx, "sink", reply)
	if r0, r1 := rateOf(0), rateOf(1); r0 != 5 || r1 != 10 {
		t.Fatalf("degraded, after node 0 learned 300/min: rates %v and %v a second, want 5 and 10", r0, r1)
	}
	srv.Restart()
	for _, w := range ws {
		waitFor(t, "sharing again after Redis restarted", func() bool { return !w.Cluster.Degraded() })
	}
	waitFor(t, "node 1 follows the rate node 0 learned while Redis was gone", func() bool {
		return rateOf(0) == 5 && rateOf(1) == 5
	})
}
