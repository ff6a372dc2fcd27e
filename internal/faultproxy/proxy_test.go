package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
)

func TestScannerFindsDataAndItsEnd(t *testing.T) {
	session := "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\ndata\r\nline 1\r\n..stuffed\r\n.\r\n" +
		"NOOP\r\nDATA\r\n.\r\nQUIT\r\n"
	var want []event
	want = append(want, evDataStart, evDataEnd, evDataStart, evDataEnd)
	// Byte by byte, and all at once: events do not depend on how TCP
	// splits the stream.
	for _, step := range []int{1, 3, len(session)} {
		var s scanner
		var got []event
		var ends []int
		pos := 0
		for pos < len(session) {
			chunk := []byte(session[pos:min(pos+step, len(session))])
			for len(chunk) > 0 {
				n, ev := s.feed(chunk)
				chunk = chunk[n:]
				pos += n
				if ev != evNone {
					got = append(got, ev)
					ends = append(ends, pos)
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("step %d: events %v, want %v", step, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("step %d: events %v, want %v", step, got, want)
			}
		}
		// The first data ends after ".\r\n" of its own line, not after
		// the dot-stuffed one; the empty one right after DATA's CRLF.
		if first := strings.Index(session, "..stuffed\r\n.\r\n") + len("..stuffed\r\n.\r\n"); ends[1] != first {
			t.Errorf("step %d: first data ended at %d, want %d", step, ends[1], first)
		}
		if second := strings.Index(session, "DATA\r\n.\r\n") + len("DATA\r\n.\r\n"); ends[3] != second {
			t.Errorf("step %d: empty data ended at %d, want %d", step, ends[3], second)
		}
	}
}

func TestScannerMarksTheNthDataByte(t *testing.T) {
	s := scanner{mark: 5}
	in := []byte("DATA\r\n0123456789\r\n.\r\n")
	n, ev := s.feed(in)
	if ev != evDataStart || n != 6 {
		t.Fatalf("got %d %v", n, ev)
	}
	n2, ev := s.feed(in[n:])
	if ev != evMark || string(in[n:n+n2]) != "01234" {
		t.Fatalf("mark after %q (%v), want after \"01234\"", in[n:n+n2], ev)
	}
}

func TestCompleteReply(t *testing.T) {
	for in, want := range map[string]bool{
		"250 2.0.0 OK\r\n":          true,
		"250\r\n":                   true,
		"250-first\r\n":             false,
		"250-first\r\n250 last\r\n": true,
		"250 2.0.0 OK":              false,
	} {
		if got := completeReply([]byte(in)); got != want {
			t.Errorf("completeReply(%q) = %v, want %v", in, got, want)
		}
	}
}

// fixture is a sink behind a proxy with the plan.
func fixture(t *testing.T, plan func(int) Fault) (*sink.Server, *Proxy) {
	t.Helper()
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	p, err := Start(Options{Upstream: dst.Addr(), Plan: plan, After: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return dst, p
}

// sendOne sends one message through addr with per-command timeout, and
// returns the error of the transaction.
func sendOne(t *testing.T, addr string, timeout time.Duration) error {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = timeout, timeout
	if err := c.Hello("client.test.invalid"); err != nil {
		return err
	}
	body := "Subject: x\r\n\r\n" + strings.Repeat("line of text\r\n", 50)
	return c.SendMail("a@test.invalid", []string{"b@test.invalid"}, strings.NewReader(body))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPassForwardsAMessageUnchanged(t *testing.T) {
	dst, p := fixture(t, nil)
	if err := sendOne(t, p.Addr(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := dst.Wait(testCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	if m := dst.Messages()[0]; !bytes.HasSuffix(m.Data, []byte("line of text\r\n")) || len(m.Data) != len("Subject: x\r\n\r\n")+50*len("line of text\r\n") {
		t.Errorf("message changed on the way: %q", m.Data)
	}
}

func TestCutAfterDotDeliversButTheClientNeverHearsSo(t *testing.T) {
	dst, p := fixture(t, Once(CutAfterDot))
	err := sendOne(t, p.Addr(), 5*time.Second)
	if err == nil {
		t.Fatal("the client heard a reply to its final dot")
	}
	if err := p.WaitFired(testCtx(t), CutAfterDot, 1); err != nil {
		t.Fatal(err)
	}
	if dst.Count() != 1 {
		t.Fatalf("the next hop has %d messages, want the one whose reply was cut", dst.Count())
	}
	// The next connection passes.
	if err := sendOne(t, p.Addr(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if dst.Count() != 2 {
		t.Fatalf("the next hop has %d messages, want 2", dst.Count())
	}
}

func TestStallInDataTimesTheClientOut(t *testing.T) {
	dst, p := fixture(t, Once(StallInData))
	start := time.Now()
	err := sendOne(t, p.Addr(), 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a stalled transaction ended with %v, want a timeout", err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("timed out after %s, before the client's timeout", time.Since(start))
	}
	if p.Fired(StallInData) != 1 || dst.Count() != 0 {
		t.Fatalf("stall fired %d times, next hop has %d messages; want 1 and 0", p.Fired(StallInData), dst.Count())
	}
}

func TestResetInDataResetsTheClient(t *testing.T) {
	dst, p := fixture(t, Once(ResetInData))
	err := sendOne(t, p.Addr(), 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("a reset transaction ended with %v, want connection reset", err)
	}
	if p.Fired(ResetInData) != 1 {
		t.Fatalf("reset fired %d times", p.Fired(ResetInData))
	}
	// The next hop saw a partial message and counts nothing.
	if err := sendOne(t, p.Addr(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if dst.Count() != 1 {
		t.Fatalf("the next hop has %d messages, want only the one after the reset", dst.Count())
	}
}

func TestSilentNeverGreets(t *testing.T) {
	p, err := Start(Options{Plan: func(int) Fault { return Silent }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	conn, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := conn.Read(make([]byte, 1))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read %d bytes, %v; want nothing until the deadline", n, err)
	}
	if p.Fired(Silent) != 1 || p.Accepted() != 1 || p.Ended() != 0 {
		t.Fatalf("silent fired %d, accepted %d, ended %d; want 1, 1, 0", p.Fired(Silent), p.Accepted(), p.Ended())
	}
	// It ends when the client gives up.
	conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Ended() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the silent connection did not end after the client closed it")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseEndsEveryConnection(t *testing.T) {
	_, p := fixture(t, func(int) Fault { return StallInData })
	conn, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The greeting came through: the connection is the proxy's.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a connection open")
	}
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("after Close the connection should end, got %v", err)
	}
}
