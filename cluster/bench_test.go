package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"relayq/internal/redistest"
)

// BenchmarkAcquireRelease is what a lease costs a connection: one Acquire
// (the lease script) and one Release (ZREM), two round trips to a Redis on
// loopback; also reported as median and 99th percentile.
func BenchmarkAcquireRelease(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		l, err := c.Acquire(ctx, "mx:bench.example", 20)
		if err != nil {
			b.Fatal(err)
		}
		c.Release(ctx, l)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkAllow is one shared GCRA decision (one round trip).
func BenchmarkAllow(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	r := Rate{Messages: 1 << 30, Per: 1} // never waits: measures the call
	for b.Loop() {
		if _, err := c.Allow(ctx, "mx:bench.example", r); err != nil {
			b.Fatal(err)
		}
	}
}

// benchClient is one client on a fresh Redis; the benchmark fails if the
// client was degraded at any time after its start (the figure would then
// be partly the fallback's).
func benchClient(b *testing.B) *Client {
	srv := redistest.Start(b)
	c, err := New(context.Background(), Options{URL: srv.URL(), Node: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	waitFor(b, "shared with Redis up", 5*time.Second, func() bool { return !c.Degraded() }) // a slow first dial recovers
	start := c.Episodes()
	b.Cleanup(func() {
		if c.Degraded() || c.Episodes() != start {
			b.Error("degraded during the run: the figure is the local fallback's")
		}
		_ = c.Close(context.Background())
	})
	return c
}
