package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// blockingQueue returns a memQueue whose Put, once it has read the body,
// reports on entered and waits for release (or its ctx).
func blockingQueue() (q *memQueue, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 1), make(chan struct{})
	q = &memQueue{beforeCommit: func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	return q, entered, release
}

// startData runs a transaction up to the end of the body on r and returns a
// channel that gets the reply code to DATA.
func startData(t *testing.T, r *rawConn) <-chan int {
	t.Helper()
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: in flight\r\n\r\nx\r\n.\r\n")
	code := make(chan int, 1)
	go func() {
		c, _, err := r.tp.ReadResponse(0)
		if err != nil {
			c = 0
		}
		code <- c
	}()
	return code
}

func TestShutdownWaitsForInFlightData(t *testing.T) {
	q, entered, release := blockingQueue()
	s, addr := startServer(t, testConfig(), q)
	busy := dialRaw(t, addr, "")
	other := dialRaw(t, addr, "") // connected, between transactions
	reply := startData(t, busy)
	<-entered // the body is read, the commit is pending

	var shutDown atomic.Bool
	done := make(chan error, 1)
	go func() {
		err := s.Shutdown(context.Background())
		shutDown.Store(true)
		done <- err
	}()

	// New connections are refused once Shutdown has begun.
	waitFor(t, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", addr, testTimeout)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	// A new transaction on an open connection is refused with 421.
	if msg := other.cmd("MAIL FROM:<s@example.org>", 421); !strings.HasPrefix(msg, "4.3.2 ") {
		t.Errorf("MAIL during shutdown: 421 %s, want 421 4.3.2", msg)
	}
	if shutDown.Load() {
		t.Fatal("Shutdown returned while a DATA was being committed")
	}

	close(release)
	if code := <-reply; code != 250 {
		t.Errorf("in-flight DATA got %d, want 250", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return after the transaction ended")
	}
	if n := len(q.messages()); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
	// Both connections were closed by Shutdown.
	for name, r := range map[string]*rawConn{"busy": busy, "idle": other} {
		if _, err := r.tp.ReadLine(); !errors.Is(err, io.EOF) {
			t.Errorf("%s connection still open after Shutdown: %v", name, err)
		}
	}
}

func TestShutdownGivesUpWhenContextEnds(t *testing.T) {
	q, entered, _ := blockingQueue() // never released
	s, addr := startServer(t, testConfig(), q)
	reply := startData(t, dialRaw(t, addr, ""))
	<-entered

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	// The Put was cancelled, nothing was stored and the client was not
	// told 250.
	if code := <-reply; code == 250 {
		t.Error("client got 250 for a message that was not stored")
	}
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages queued", n)
	}
}

func TestShutdownClosesIdleConnectionsPromptly(t *testing.T) {
	s, addr := startServer(t, testConfig(), &memQueue{})
	idle := dialRaw(t, addr, "")
	greeted := dialFrom(t, addr, "") // no EHLO: go-smtp has no session for it yet
	// Its greeting says it was accepted: a connection still in the
	// listener's backlog when Shutdown closes the listener is reset.
	br := bufio.NewReader(greeted)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting: %q, %v", line, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := idle.tp.ReadLine(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection still open: %v", err)
	}
	if _, err := io.ReadAll(br); err != nil {
		t.Errorf("unintroduced connection not closed cleanly: %v", err)
	}
}
