package cluster

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/redistest"
)

// fakeClock is the nodes' shared clock in tests that step time.
type fakeClock struct {
	mu struct {
		sync.Mutex
		now time.Time
	}
}

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.mu.now = time.UnixMilli(1_800_000_000_000)
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.mu.now = c.mu.now.Add(d)
	c.mu.Unlock()
}

// newNodes starts n clients named n0, n1, … on srv, closed at the end of
// the test. o's URL, Node and Log are filled in: logs go to the test's
// log, and to logs[0] if given.
func newNodes(t *testing.T, srv *redistest.Server, n int, o Options, logs ...*syncBuffer) []*Client {
	t.Helper()
	nodes := make([]*Client, n)
	for i := range nodes {
		oi := o
		oi.URL, oi.Node = srv.URL(), fmt.Sprintf("n%d", i)
		var w io.Writer = zerolog.NewTestWriter(t)
		if len(logs) > 0 {
			w = io.MultiWriter(w, logs[0])
		}
		oi.Log = zerolog.New(w)
		if oi.Timeout == 0 {
			// These tests check what is shared, not latency: a slow
			// machine (or -race) must not make a node degraded.
			oi.Timeout = time.Second
		}
		c, err := New(context.Background(), oi)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		// The first dial may take longer than the 50 ms timeout on a
		// loaded machine; the client then starts degraded and recovers.
		waitFor(t, oi.Node+" shares limits with Redis up", 5*time.Second, func() bool { return !c.Degraded() })
		nodes[i] = c
	}
	return nodes
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// acquireAll takes leases on c until ErrAtCap (at most limit) and returns
// them.
func acquireAll(t *testing.T, c *Client, dest string, cap, limit int) []*Lease {
	t.Helper()
	var got []*Lease
	for range limit {
		l, err := c.Acquire(context.Background(), dest, cap)
		if err == ErrAtCap {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	t.Fatalf("%s: still granting after %d leases (cap %d)", c.opt.Node, limit, cap)
	return nil
}

// syncBuffer is a log sink safe for the client's goroutines.
type syncBuffer struct {
	mu struct {
		sync.Mutex
		lines []string
	}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.mu.lines = append(b.mu.lines, string(p))
	b.mu.Unlock()
	return len(p), nil
}

func (b *syncBuffer) count(level string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, l := range b.mu.lines {
		if strings.Contains(l, `"level":"`+level+`"`) {
			n++
		}
	}
	return n
}
