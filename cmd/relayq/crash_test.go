package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/admin"
	"relayq/internal/sink"
)

// crashCycles is how many times TestSIGKILLUnderLoadLosesNoAcknowledgedMessage
// kills relayq: 3, or RELAYQ_SOAK_CYCLES (`make soak` sets 20).
func crashCycles(t *testing.T) int {
	v := os.Getenv("RELAYQ_SOAK_CYCLES")
	if v == "" {
		return 3
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("RELAYQ_SOAK_CYCLES=%q: want a positive number", v)
	}
	return n
}

// notPerMessage keeps every log line but the per-message ones.
func notPerMessage(l map[string]any) bool {
	m := l["message"]
	return m != "received" && m != "delivered" && m != "deferred"
}

// ledger is what the senders were told and what the sink got, by token.
type ledger struct {
	mu       sync.Mutex
	acked    map[string]bool
	arrived  map[string]int
	pending  int // acknowledged, not arrived
	corrupt  []string
	changed  chan struct{} // closed and replaced on every arrival
	ackCount atomic.Int64
}

const (
	crashFrom, crashTo = "sender@test.invalid", "rcpt@dest.invalid"
	crashBodySize      = 1024
)

func newLedger() *ledger {
	return &ledger{acked: map[string]bool{}, arrived: map[string]int{}, changed: make(chan struct{})}
}

func (l *ledger) ack(tok string) {
	l.mu.Lock()
	l.acked[tok] = true
	if l.arrived[tok] == 0 {
		l.pending++
	}
	l.mu.Unlock()
	l.ackCount.Add(1)
}

// onData is the sink's hook: it notes the token of every message the sink
// accepts (the Message-ID is <token@test.invalid>) and checks that the
// message is the one sent, below relayq's Received header.
func (l *ledger) onData(m *sink.Message) error {
	tok := "?"
	if i := bytes.Index(m.Data, []byte("\r\nMessage-ID: <")); i >= 0 {
		rest := m.Data[i+len("\r\nMessage-ID: <"):]
		if j := bytes.IndexByte(rest, '@'); j >= 0 {
			tok = string(rest[:j])
		}
	}
	intact := bytes.HasSuffix(m.Data, message(tok, crashFrom, crashTo, crashBodySize))
	l.mu.Lock()
	defer l.mu.Unlock()
	if !intact {
		l.corrupt = append(l.corrupt, tok)
	}
	if l.arrived[tok] == 0 && l.acked[tok] {
		l.pending--
	}
	l.arrived[tok]++
	close(l.changed)
	l.changed = make(chan struct{})
	return nil
}

// missing returns how many acknowledged messages have not arrived, and a
// channel closed at the next arrival.
func (l *ledger) missing() (int, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending, l.changed
}

// lost lists the acknowledged tokens that have not arrived.
func (l *ledger) lost() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for tok := range l.acked {
		if l.arrived[tok] == 0 {
			out = append(out, tok)
		}
	}
	slices.Sort(out)
	return out
}

// waitAcks waits until n messages in all were acknowledged.
func (l *ledger) waitAcks(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for l.ackCount.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages acknowledged within %s, want %d", l.ackCount.Load(), within, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// send pushes messages over SMTP to addr until ctx ends, each with a token
// of its own, and notes every one answered 250. Any error or other reply
// leaves the message unacknowledged, and the sender reconnects (relayq may
// be dead or restarting).
func send(ctx context.Context, addr string, sender int, l *ledger) {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	seq := 0
	for ctx.Err() == nil {
		conn, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			select { // down: try again soon
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		c := smtp.NewClient(conn)
		c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
		if c.Hello("client.test.invalid") == nil {
			for ctx.Err() == nil {
				tok := fmt.Sprintf("s%d-%d", sender, seq)
				seq++
				msg := message(tok, crashFrom, crashTo, crashBodySize)
				if c.SendMail(crashFrom, []string{crashTo}, bytes.NewReader(msg)) != nil {
					break
				}
				l.ack(tok)
			}
		}
		c.Close()
	}
}

// Each cycle kills relayq after a random number of messages acknowledged
// in it, from killAfterLo to killAfterHi: a random moment in the stream,
// with mail flowing in and out.
//
// A kill can duplicate only the messages between a remote 250 and the
// commit that records it. The worker hands the connection back before
// that commit, so their number is bounded by the attempts in flight
// (delivery.max_connections), not by the connections to the destination.
// The share of duplicates then depends on how much mail flows between
// kills: with the default caps, killed every 100–600 ms (a few hundred
// messages), it is about 3 duplicates a kill, 0.4 %. Here at most 4
// attempts run at once and at least 3000 messages flow between kills: the
// two kills with the destination up can cost at most 8 duplicates, under
// 0.1 % of 9000, so the share can only exceed 0.1 % if something else
// sends mail twice.
const (
	killAfterLo, killAfterHi = 3000, 5000
	crashAttempts            = 4
)

// TestSIGKILLUnderLoadLosesNoAcknowledgedMessage runs the relayq binary
// while 8 senders push messages into it, and SIGKILLs and restarts it
// crashCycles times at random moments; the destination is down for one
// cycle. After a last restart, every message any sender got a 250 for must
// reach the sink unchanged (docs/design.md "Invariants" 1), and duplicates (sent
// again because a kill came between the remote's 250 and the commit of the
// delivery, invariant 2) must stay under 0.1 % of the acknowledged.
func TestSIGKILLUnderLoadLosesNoAcknowledgedMessage(t *testing.T) {
	cycles := crashCycles(t)
	listen, dest := freeAddr(t), freeAddr(t)
	cfgPath := childConfig(t, filepath.Join(t.TempDir(), "queue"), listen, dest, fmt.Sprintf(`
[back_pressure]
enabled = false                 # not under test; /tmp may be short of space
[delivery]
max_connections = %[1]d
max_connections_per_destination = %[1]d
`, crashAttempts))

	l := newLedger()
	var sinks []*sink.Server
	startDest := func() {
		s, err := sink.Start(sink.Options{Addr: dest, OnData: l.onData})
		if err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, s)
	}
	startDest()
	defer func() {
		for _, s := range sinks {
			s.Close()
		}
	}()

	ctx, stopSenders := context.WithCancel(context.Background())
	defer stopSenders()
	var senders sync.WaitGroup
	const nSenders = 8
	for i := 0; i < nSenders; i++ {
		senders.Add(1)
		go func() { defer senders.Done(); send(ctx, listen, i, l) }()
	}

	rng := rand.New(rand.NewPCG(uint64(cycles), 42))
	downCycle := -1
	if cycles >= 3 {
		downCycle = 1
	}
	for cycle := 0; cycle < cycles; cycle++ {
		if cycle == downCycle {
			sinks[len(sinks)-1].Close()
		}
		c := startChildKeeping(t, cfgPath, notPerMessage)
		c.waitLog(20*time.Second, 1, msgIs("listening"))
		start, before := time.Now(), l.ackCount.Load()
		l.waitAcks(t, before+killAfterLo+rng.Int64N(killAfterHi-killAfterLo), 60*time.Second)
		c.kill()
		t.Logf("cycle %d: killed after %d acknowledged in %s", cycle, l.ackCount.Load()-before, time.Since(start).Round(time.Millisecond))
		if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("cycle %d: relayq ended by itself (%v), not by our SIGKILL; last log lines: %v", cycle, c.cmd.ProcessState, lastLogs(c, 5))
		}
		if cycle == downCycle {
			startDest()
		}
	}

	// The last restart, with no kill: traffic goes on a little, then the
	// senders stop and every acknowledged message must arrive.
	final := startChildKeeping(t, cfgPath, notPerMessage)
	final.waitLog(20*time.Second, 1, msgIs("listening"))
	l.waitAcks(t, l.ackCount.Load()+100, 60*time.Second)
	stopSenders()
	senders.Wait()

	deadline := time.After(60 * time.Second)
	for {
		missing, changed := l.missing()
		if missing == 0 {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			lost := l.lost()
			t.Fatalf("LOST: %d acknowledged messages never arrived, e.g. %v", len(lost), lost[:min(len(lost), 10)])
		}
	}
	// Let re-deliveries of what had arrived before a kill come in too, so
	// that the duplicates are all counted: wait for the queue to empty.
	waitQueueEmpty(t, final, 30*time.Second)

	l.mu.Lock()
	defer l.mu.Unlock()
	acked := len(l.acked)
	var arrived, dups, unackedArrived int
	for tok, n := range l.arrived {
		arrived++
		dups += n - 1
		if !l.acked[tok] {
			unackedArrived++
		}
	}
	t.Logf("%d kill cycles: %d acknowledged, %d arrived (distinct), %d duplicates (%.3f%% of acknowledged), %d arrived unacknowledged",
		cycles, acked, arrived, dups, 100*float64(dups)/float64(acked), unackedArrived)
	if acked == 0 {
		t.Fatal("no message was acknowledged: the test proves nothing")
	}
	if len(l.corrupt) > 0 {
		t.Errorf("%d messages arrived changed, e.g. %v", len(l.corrupt), l.corrupt[:min(len(l.corrupt), 10)])
	}
	// A duplicate needs a kill between a remote 250 and the commit of that
	// delivery: at most one per delivery in flight.
	if dups > crashAttempts*cycles {
		t.Errorf("%d duplicates after %d kills: more than the deliveries that can be in flight", dups, cycles)
	}
	if float64(dups) >= 0.001*float64(acked) {
		t.Errorf("%d duplicates for %d acknowledged messages: %.3f%%, want under 0.1%%", dups, acked, 100*float64(dups)/float64(acked))
	}
}

// lastLogs returns the last n log lines c kept.
func lastLogs(c *child, n int) []map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.logs[max(0, len(c.logs)-n):])
}

// waitQueueEmpty polls the admin API of c until its queue holds nothing.
func waitQueueEmpty(t *testing.T, c *child, within time.Duration) {
	t.Helper()
	lines := c.waitLog(10*time.Second, 1, msgIs("admin API listening"))
	addr, _ := lines[0]["address"].(string)
	deadline := time.Now().Add(within)
	for {
		var st admin.Status
		api(t, addr, "/api/status", &st)
		if st.Queue.Messages == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue not empty within %s: %d messages", within, st.Queue.Messages)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
