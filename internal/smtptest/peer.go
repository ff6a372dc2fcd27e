// Package smtptest holds test fixtures for the outbound SMTP side: a
// loopback accept loop and a scripted next hop speaking raw SMTP (Peer),
// for what a go-smtp server hook cannot express. Only tests import it.
package smtptest

import (
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"relayq/internal/sink"
)

// Turn is what a peer script sees of one command.
type Turn struct {
	Conn  int    // the connection's number, from 1
	Verb  string // GREETING, EHLO, MAIL, RCPT, DATA, "." (after the data), RSET, …
	Line  string // the command line as received
	From  string // the transaction's MAIL FROM address, "" for <>
	Rcpts int    // RCPTs accepted in the transaction so far
}

// Peer is a scripted next hop speaking raw SMTP, for what a go-smtp hook
// cannot express (a 421 greeting, a 421 to DATA or EHLO, a connection
// dropped mid-dialogue) and to see the exact MAIL and RCPT lines. script
// returns the reply for a Turn: "" for the default (accept), "DROP" to
// close the connection without a word. After a 421 the peer keeps reading
// until the client hangs up, and records what it still said.
type Peer struct {
	t      *testing.T
	Addr   string
	ext    []string // EHLO keywords, e.g. "SIZE 1000", "DSN"
	script func(Turn) string

	mu      sync.Mutex
	conns   []*PeerConn
	msgs    []sink.Message
	changed chan struct{}
}

// PeerConn is what the peer saw on one connection.
type PeerConn struct {
	Lines     []string // every command line received
	After421  []string // those received after a 421 (the client must hang up)
	Sent421   bool
	QuitAfter bool // QUIT came after the 421
	Ended     bool // the handler returned: the client hung up (or QUIT, or DROP)
}

// StartPeer starts a peer offering the EHLO keywords ext ("SIZE 1000",
// "PIPELINING") and answering as script says; it stops with the test.
func StartPeer(t *testing.T, ext []string, script func(Turn) string) *Peer {
	t.Helper()
	p := &Peer{t: t, ext: ext, script: script, changed: make(chan struct{})}
	p.Addr = AcceptLoop(t, 20*time.Second, func(c net.Conn) func() {
		p.mu.Lock()
		pc := &PeerConn{}
		p.conns = append(p.conns, pc)
		n := len(p.conns)
		p.mu.Unlock()
		return func() {
			p.serve(textproto.NewConn(c), n, pc)
			p.mu.Lock()
			pc.Ended = true
			p.mu.Unlock()
		}
	})
	return p
}

func (p *Peer) reply(tu Turn, def string) string {
	if p.script != nil {
		if r := p.script(tu); r != "" {
			return r
		}
	}
	return def
}

func (p *Peer) serve(tp *textproto.Conn, n int, pc *PeerConn) {
	send := func(r string) bool {
		if r == "DROP" {
			return false
		}
		tp.W.WriteString(strings.ReplaceAll(r, "\n", "\r\n") + "\r\n")
		tp.W.Flush()
		if strings.HasPrefix(r, "421") {
			p.mu.Lock()
			pc.Sent421 = true
			p.mu.Unlock()
		}
		return true
	}
	if !send(p.reply(Turn{Conn: n, Verb: "GREETING"}, "220 peer.test ESMTP")) {
		return
	}
	var (
		from  string
		rcpts []string
	)
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " ")[0])
		p.mu.Lock()
		pc.Lines = append(pc.Lines, line)
		if pc.Sent421 {
			pc.After421 = append(pc.After421, line)
			pc.QuitAfter = pc.QuitAfter || verb == "QUIT"
			p.mu.Unlock()
			continue // say nothing more: the client must hang up
		}
		p.mu.Unlock()
		tu := Turn{Conn: n, Verb: verb, Line: line, From: from, Rcpts: len(rcpts)}
		var def string
		switch verb {
		case "EHLO":
			ls := append([]string{"peer.test"}, p.ext...)
			for i, l := range ls {
				sep := "-"
				if i == len(ls)-1 {
					sep = " "
				}
				def += "250" + sep + l
				if i < len(ls)-1 {
					def += "\n"
				}
			}
		case "MAIL":
			tu.From = AddrIn(line)
			def = "250 2.1.0 ok"
		case "RCPT":
			def = "250 2.1.5 ok"
		case "DATA":
			def = "354 go on"
		case "QUIT":
			send("221 2.0.0 bye")
			return
		default:
			def = "250 2.0.0 ok"
		}
		r := p.reply(tu, def)
		if !send(r) {
			return
		}
		switch {
		case verb == "MAIL" && strings.HasPrefix(r, "2"):
			from, rcpts = tu.From, nil
		case verb == "RCPT" && strings.HasPrefix(r, "2"):
			rcpts = append(rcpts, AddrIn(line))
		case verb == "RSET":
			from, rcpts = "", nil
		case verb == "DATA" && strings.HasPrefix(r, "354"):
			data, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			tu.Verb, tu.Rcpts = ".", len(rcpts)
			final := p.reply(tu, "250 2.0.0 queued")
			if !send(final) {
				return
			}
			if strings.HasPrefix(final, "2") {
				p.mu.Lock()
				p.msgs = append(p.msgs, sink.Message{From: from, To: rcpts, Data: data, At: time.Now()})
				close(p.changed)
				p.changed = make(chan struct{})
				p.mu.Unlock()
			}
			from, rcpts = "", nil
		}
	}
}

// AddrIn returns the address between the first < and > of a command line.
func AddrIn(line string) string {
	i, j := strings.IndexByte(line, '<'), strings.IndexByte(line, '>')
	if i < 0 || j < i {
		return ""
	}
	return line[i+1 : j]
}

// Wait returns the accepted messages once there are at least n.
func (p *Peer) Wait(n int) []sink.Message {
	p.t.Helper()
	return p.WaitUntil(func(msgs []sink.Message) bool { return len(msgs) >= n })
}

// WaitUntil returns the accepted messages once done says so of them.
func (p *Peer) WaitUntil(done func([]sink.Message) bool) []sink.Message {
	p.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		msgs, changed := append([]sink.Message(nil), p.msgs...), p.changed
		p.mu.Unlock()
		if done(msgs) {
			return msgs
		}
		select {
		case <-changed:
		case <-timeout:
			p.t.Fatalf("the peer's %d messages are not what the test waits for", len(msgs))
		}
	}
}

// Conns returns how many connections the peer has seen.
func (p *Peer) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Conn returns a copy of what connection n (from 1) saw.
func (p *Peer) Conn(n int) PeerConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n > len(p.conns) {
		p.t.Fatalf("peer saw %d connections, want at least %d", len(p.conns), n)
	}
	return *p.conns[n-1]
}

// ClosedWithoutQuit waits until connection n is closed by the client and
// checks that, after the 421, it sent nothing (no QUIT: RFC 5321 §3.8).
func (p *Peer) ClosedWithoutQuit(n int) {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := p.Conn(n)
		if !c.Sent421 {
			p.t.Fatalf("connection %d got no 421", n)
		}
		if len(c.After421) > 0 {
			p.t.Fatalf("after the 421 the client said %q, want it to hang up", c.After421)
		}
		if p.HungUp(n) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the client kept connection %d open after a 421", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// HungUp reports whether the peer's handler for connection n has returned:
// after a 421 it reads until the client closes the connection.
func (p *Peer) HungUp(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns[n-1].Ended
}

// AcceptLoop listens on a loopback port and accepts connections until the
// test ends, when it closes the listener and waits for every handler.
// accepted is called in the accept loop, in Turn, with each connection,
// under a deadline of d; the function it returns, if any, then serves the
// connection in its own goroutine. The connection is closed when that
// function (or, without one, accepted) returns. It returns the address.
func AcceptLoop(t *testing.T, d time.Duration, accepted func(net.Conn) func()) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(d))
			serve := accepted(c)
			if serve == nil {
				c.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve()
			}()
		}
	}()
	return l.Addr().String()
}

// ClosedAddr returns a loopback address nothing listens on.
func ClosedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// StartSink starts a sink with opts that closes with the test.
func StartSink(t *testing.T, opts sink.Options) *sink.Server {
	t.Helper()
	s, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
