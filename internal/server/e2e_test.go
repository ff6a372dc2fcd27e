package server_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"relayq/internal/server"
	"relayq/internal/server/servertest"
	"relayq/internal/sink"
)

func TestEndToEnd500MessagesFrom20ClientsArriveOnce(t *testing.T) {
	dst := servertest.Sink(t, sink.Options{})
	in := servertest.Start(t, servertest.Config(t, dst.Addr()), server.Options{})
	const clients, perClient = 20, 25
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var tokens []string
			for i := 0; i < perClient; i++ {
				tokens = append(tokens, fmt.Sprintf("c%d-m%d", c, i))
			}
			servertest.Submit(t, in.Addrs()[0], "sender@test.invalid", "rcpt@dest.invalid", tokens, 1024)
		}(c)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, clients*perClient); err != nil {
		t.Fatalf("sink got %d of %d messages: %v", dst.Count(), clients*perClient, err)
	}
	ids := servertest.MessageIDs(t, dst.Messages())
	for c := 0; c < clients; c++ {
		for i := 0; i < perClient; i++ {
			id := fmt.Sprintf("<c%d-m%d@test.invalid>", c, i)
			if ids[id] != 1 {
				t.Errorf("message %s arrived %d times", id, ids[id])
			}
		}
	}
	for _, m := range dst.Messages()[:1] {
		if !bytes.Contains(m.Data, []byte("by relay.test.invalid")) {
			t.Errorf("no Received header of ours in:\n%s", m.Data[:min(len(m.Data), 400)])
		}
	}
	// Every delivered message leaves the queue.
	servertest.WaitFor(t, 10*time.Second, func() bool { return in.Store().Messages() == 0 }, "queue to empty")
}

// BenchmarkRelayThroughput pushes 1 KiB messages from 20 connections through
// relayq (synced queue commit before each 250, delivery through a smart
// host) into a sink, and reports messages/s end to end.
func BenchmarkRelayThroughput(b *testing.B) { benchmarkRelay(b, 1024) }

// BenchmarkRelayThroughput100K is the same with 100 KiB messages.
func BenchmarkRelayThroughput100K(b *testing.B) { benchmarkRelay(b, 100<<10) }

func benchmarkRelay(b *testing.B, size int) {
	dst := servertest.Sink(b, sink.Options{Discard: true})
	in := servertest.Start(b, servertest.Config(b, dst.Addr()), server.Options{})
	const conns = 20
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		n := b.N / conns
		if c < b.N%conns {
			n++
		}
		wg.Add(1)
		go func(c, n int) {
			defer wg.Done()
			tokens := make([]string, n)
			for i := range tokens {
				tokens[i] = fmt.Sprintf("b%d-%d", c, i)
			}
			servertest.Submit(b, in.Addrs()[0], "sender@test.invalid", "rcpt@dest.invalid", tokens, size)
		}(c, n)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := dst.Wait(ctx, b.N); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
