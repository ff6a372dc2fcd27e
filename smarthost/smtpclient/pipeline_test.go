package smtpclient

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"relayq/internal/sink"
	"relayq/internal/smtptest"
	"relayq/retry"
)

// pipeServer is a raw next hop for what the scripted peer cannot show:
// which commands it held before it answered, and a session whose socket
// buffers are small enough for a client that never reads to deadlock.
type pipeServer struct {
	addr string
	opts pipeOpts

	mu     sync.Mutex
	groups [][]string // holdUntilData: the commands read before each first answer
	ahead  int        // MAIL, RCPT or DATA lines read with more input already buffered
	rcpts  []string   // every RCPT accepted, in order
	datas  [][]byte   // each message's data
}

type pipeOpts struct {
	pipelining bool // offer PIPELINING
	// holdUntilData: answer MAIL, the RCPTs and DATA only once DATA is
	// read, all at once. A client that waits for the reply to MAIL before
	// it sends the RCPTs then gets nothing until its timeout.
	holdUntilData bool
	sockBuf       int    // socket buffer sizes of the server's side, 0 = the system's
	rcptText      string // the text of the 250 to RCPT
}

func startPipeServer(t *testing.T, o pipeOpts) *pipeServer {
	t.Helper()
	s := &pipeServer{opts: o}
	s.addr = smtptest.AcceptLoop(t, 20*time.Second, func(c net.Conn) func() {
		if o.sockBuf > 0 {
			c.(*net.TCPConn).SetReadBuffer(o.sockBuf)
			c.(*net.TCPConn).SetWriteBuffer(o.sockBuf)
		}
		return func() { s.serve(textproto.NewConn(c)) }
	})
	return s
}

// serve answers like go-smtp's server: every reply written at once
// (unless holdUntilData), every command accepted.
func (s *pipeServer) serve(tp *textproto.Conn) {
	say := func(lines ...string) bool {
		for _, l := range lines {
			tp.W.WriteString(l + "\r\n")
		}
		return tp.W.Flush() == nil
	}
	say("220 pipe.test ESMTP")
	var held []string
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " ")[0])
		var reply string
		switch verb {
		case "EHLO":
			ext := []string{"250-pipe.test", "250-8BITMIME"}
			if s.opts.pipelining {
				ext = append(ext, "250-PIPELINING")
			}
			if !say(append(ext, "250 SIZE 100000000")...) {
				return
			}
			continue
		case "MAIL":
			reply = "250 2.1.0 ok"
		case "RCPT":
			reply = "250 2.1.5 " + s.opts.rcptText
			s.mu.Lock()
			s.rcpts = append(s.rcpts, smtptest.AddrIn(line))
			s.mu.Unlock()
		case "DATA":
			reply = "354 go on"
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			if !say("250 2.0.0 ok") {
				return
			}
			continue
		}
		s.mu.Lock()
		if tp.R.Buffered() > 0 {
			s.ahead++
		}
		s.mu.Unlock()
		if s.opts.holdUntilData {
			held = append(held, line)
			tp.W.WriteString(reply + "\r\n")
			if verb != "DATA" {
				continue
			}
			s.mu.Lock()
			s.groups = append(s.groups, held)
			s.mu.Unlock()
			held = nil
			if !say() {
				return
			}
		} else if !say(reply) {
			return
		}
		if verb == "DATA" {
			data, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.datas = append(s.datas, data)
			s.mu.Unlock()
			if !say("250 2.0.0 queued") {
				return
			}
		}
	}
}

func (s *pipeServer) seen() (groups [][]string, ahead int, rcpts []string, datas [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.groups), s.ahead, slices.Clone(s.rcpts), slices.Clone(s.datas)
}

// TestPipeliningSendsMailRcptsAndDataInOneWrite: to a next hop offering
// PIPELINING, MAIL, the RCPTs and DATA go out in one write, and the body
// and "." in another. The server answers nothing until it has read DATA,
// so a client waiting for a reply in between would time out. Without
// PIPELINING each command waits for its reply: the server never finds the
// next command already there.
func TestPipeliningSendsMailRcptsAndDataInOneWrite(t *testing.T) {
	msgs := [][]string{{"a@x.example"}, {"b@x.example", "c@x.example"}}
	for _, offered := range []bool{true, false} {
		t.Run(fmt.Sprintf("PIPELINING offered %v", offered), func(t *testing.T) {
			s := startPipeServer(t, pipeOpts{pipelining: offered, holdUntilData: offered})
			var d countingDialer
			tg := target(s.addr, TLSNone)
			tg.Timeout = 2 * time.Second // a lock-step client stuck on the held replies fails soon
			c, err := Dial(testCtx(t), &d, tg, hello)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i, rcpts := range msgs {
				before := d.writes.Load()
				res, err := send(t, c, env(rcpts...))
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				for _, r := range res {
					checkResults(t, []RcptResult{r}, delivered())
				}
				// The commands (MAIL, RCPT…, DATA) in one write, or one
				// each; then the body and "." in one.
				want := int64(2)
				if !offered {
					want = int64(len(rcpts) + 3)
				}
				if n := d.writes.Load() - before; n != want {
					t.Errorf("message %d: %d writes, want %d", i, n, want)
				}
			}
			groups, ahead, _, datas := s.seen()
			if len(datas) != len(msgs) {
				t.Fatalf("server got %d messages, want %d", len(datas), len(msgs))
			}
			if !offered {
				if ahead != 0 {
					t.Errorf("without PIPELINING the server found %d commands sent before their turn", ahead)
				}
				return
			}
			for i, g := range groups {
				want := []string{"MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=" + fmt.Sprint(len(msgBody))}
				for _, rc := range msgs[i] {
					want = append(want, "RCPT TO:<"+rc+">")
				}
				want = append(want, "DATA")
				if !slices.Equal(g, want) {
					t.Errorf("message %d: the server held %q before answering, want %q", i, g, want)
				}
			}
		})
	}
}

// pipePeer is the scripted peer of replies_test.go, offering PIPELINING.
func pipePeer(t *testing.T, script func(smtptest.Turn) string) (*smtptest.Peer, *Conn) {
	t.Helper()
	p := smtptest.StartPeer(t, []string{"PIPELINING", "8BITMIME"}, script)
	c := mustDial(t, peerTarget(p.Addr))
	if !c.ext.pipelining {
		t.Fatal("the peer's PIPELINING was not seen")
	}
	return p, c
}

// verbs returns the verbs of connection n's lines from the first MAIL on.
func verbs(p *smtptest.Peer, n int) []string {
	var out []string
	for _, l := range p.Conn(n).Lines {
		v := strings.ToUpper(strings.Fields(l + " ")[0])
		if v == "MAIL" || len(out) > 0 {
			out = append(out, v)
		}
	}
	return out
}

func TestPipelinedReplies(t *testing.T) {
	const (
		mailRefused = "550 5.7.1 sender denied"
		userUnknown = "550 5.1.1 no such user"
		tooMany     = "452 4.5.3 too many recipients"
	)
	rcptIs := func(tu smtptest.Turn, prefix string) bool {
		return tu.Verb == "RCPT" && strings.HasPrefix(smtptest.AddrIn(tu.Line), prefix)
	}
	tests := []struct {
		name   string
		from   string // "" = a@example.org
		rcpts  []string
		script func(smtptest.Turn) string
		wants  []want
		verbs  []string // the commands of the transaction, as the peer read them
		gotTo  []string // the recipients of the message the peer took; nil = none taken
		empty  bool     // the peer took an empty message (just ".") to nobody
	}{
		{
			name: "MAIL refused: every recipient gets its reply, the RCPT and DATA replies are read and ignored",
			from: "denied@example.org", rcpts: []string{"a@x.example", "b@x.example"},
			script: func(tu smtptest.Turn) string {
				switch {
				case tu.Verb == "MAIL" && strings.Contains(tu.Line, "<denied@"):
					return mailRefused
				case tu.Verb == "RCPT" && tu.From == "":
					return "503 5.5.1 MAIL first"
				case tu.Verb == "DATA" && tu.Rcpts == 0:
					return "503 5.5.1 RCPT first"
				}
				return ""
			},
			wants: []want{{550, "5.7.1", retry.StageMail, false}, {550, "5.7.1", retry.StageMail, false}},
			verbs: []string{"MAIL", "RCPT", "RCPT", "DATA"}, // no RSET: no transaction is open
		},
		{
			name:  "one RCPT refused among several: the others delivered",
			rcpts: []string{"a@x.example", "bad@x.example", "c@x.example"},
			script: func(tu smtptest.Turn) string {
				if rcptIs(tu, "bad") {
					return userUnknown
				}
				return ""
			},
			wants: []want{delivered(), {550, "5.1.1", retry.StageRcpt, false}, delivered()},
			verbs: []string{"MAIL", "RCPT", "RCPT", "RCPT", "DATA"},
			gotTo: []string{"a@x.example", "c@x.example"},
		},
		{
			name:  "every RCPT refused and DATA 554: no body, RSET",
			rcpts: []string{"bad1@x.example", "bad2@x.example"},
			script: func(tu smtptest.Turn) string {
				switch {
				case rcptIs(tu, "bad"):
					return userUnknown
				case tu.Verb == "DATA" && tu.Rcpts == 0:
					return "554 5.5.1 no valid recipients"
				}
				return ""
			},
			wants: []want{{550, "5.1.1", retry.StageRcpt, false}, {550, "5.1.1", retry.StageRcpt, false}},
			verbs: []string{"MAIL", "RCPT", "RCPT", "DATA", "RSET"},
		},
		{
			name:  "every RCPT refused and DATA 354 anyway: just the dot, recipients keep their RCPT replies",
			rcpts: []string{"bad1@x.example", "bad2@x.example"},
			script: func(tu smtptest.Turn) string {
				if rcptIs(tu, "bad") {
					return userUnknown
				}
				return ""
			},
			wants: []want{{550, "5.1.1", retry.StageRcpt, false}, {550, "5.1.1", retry.StageRcpt, false}},
			verbs: []string{"MAIL", "RCPT", "RCPT", "DATA"}, // the "." ended the transaction: no RSET
			empty: true,
		},
		{
			name:  "452 4.5.3 in the middle: a later recipient accepted anyway is delivered in this transaction",
			rcpts: []string{"r1@x.example", "r2@x.example", "r3@x.example", "r4@x.example"},
			script: func(tu smtptest.Turn) string {
				if rcptIs(tu, "r2") || rcptIs(tu, "r4") {
					return tooMany
				}
				return ""
			},
			wants: []want{delivered(), {452, "4.5.3", retry.StageRcpt, false}, delivered(), {452, "4.5.3", retry.StageRcpt, false}},
			verbs: []string{"MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"},
			gotTo: []string{"r1@x.example", "r3@x.example"},
		},
		{
			name:  "multi-line replies keep the dialogue in step",
			rcpts: []string{"a@x.example", "bad@x.example"},
			script: func(tu smtptest.Turn) string {
				switch {
				case tu.Verb == "MAIL":
					return "250-2.1.0 sender\n250 2.1.0 ok"
				case rcptIs(tu, "bad"):
					return "550-5.1.1 no such user\n550-5.1.1 here\n550 5.1.1 at all"
				case tu.Verb == "RCPT":
					return "250-2.1.5 recipient\n250 2.1.5 ok"
				case tu.Verb == "DATA":
					return "354-go\n354 on"
				case tu.Verb == ".":
					return "250-2.0.0 queued\n250 2.0.0 as 42"
				}
				return ""
			},
			wants: []want{delivered(), {550, "5.1.1", retry.StageRcpt, false}},
			verbs: []string{"MAIL", "RCPT", "RCPT", "DATA"},
			gotTo: []string{"a@x.example"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, c := pipePeer(t, tt.script)
			e := env(tt.rcpts...)
			if tt.from != "" {
				e.From = tt.from
			}
			res, err := send(t, c, e)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			checkResults(t, res, tt.wants...)
			if got := verbs(p, 1); !slices.Equal(got, tt.verbs) {
				t.Errorf("the peer read %v, want %v", got, tt.verbs)
			}
			// The Conn is in step for the next transaction.
			res, err = send(t, c, env("next@x.example"))
			if err != nil {
				t.Fatalf("next Send: %v", err)
			}
			checkResults(t, res, delivered())
			msgs := p.Wait(1)
			if tt.gotTo != nil || tt.empty {
				msgs = p.Wait(2)
				first := msgs[0]
				if tt.empty && (len(first.To) != 0 || len(first.Data) != 0) {
					t.Errorf("the peer took %d bytes to %v, want an empty message to nobody", len(first.Data), first.To)
				}
				if tt.gotTo != nil && !slices.Equal(first.To, tt.gotTo) {
					t.Errorf("the peer took a message to %v, want %v", first.To, tt.gotTo)
				}
				msgs = msgs[1:]
			}
			if len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"next@x.example"}) {
				t.Errorf("the peer's next messages %+v, want one to next@x.example", msgs)
			}
		})
	}
}

// TestPipelinedMultiLineRepliesText: the text of a multi-line refusal is
// its lines joined, the enhanced code of each taken off (RFC 2034 §4), and
// the 250 after the dot keeps the remote's whole text.
func TestPipelinedMultiLineRepliesText(t *testing.T) {
	_, c := pipePeer(t, func(tu smtptest.Turn) string {
		switch {
		case tu.Verb == "RCPT" && strings.HasPrefix(smtptest.AddrIn(tu.Line), "bad"):
			return "550-5.1.1 no such user\n550-5.1.1 here\n550 5.1.1 at all"
		case tu.Verb == ".":
			return "250-2.0.0 queued\n250 2.0.0 as 42"
		}
		return ""
	})
	res, err := send(t, c, env("a@x.example", "bad@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Reply.Error(); got != "250 2.0.0 queued; 2.0.0 as 42" {
		t.Errorf("delivered with %q", got)
	}
	if got := res[1].Reply.Error(); got != "550 5.1.1 no such user; here; at all" {
		t.Errorf("refused with %q", got)
	}
}

// Test421AtARcptOfAPipelinedGroupBreaksTheConn: the 421 decides every
// recipient not yet decided, the one accepted before it too; the client
// hangs up without QUIT (RFC 5321 §3.8). The peer still reads what was
// already sent in the group, and nothing more.
func Test421AtARcptOfAPipelinedGroupBreaksTheConn(t *testing.T) {
	p, c := pipePeer(t, func(tu smtptest.Turn) string {
		if tu.Verb == "RCPT" && strings.HasPrefix(smtptest.AddrIn(tu.Line), "b@") {
			return "421 4.3.0 closing"
		}
		return ""
	})
	res, err := send(t, c, env("a@x.example", "b@x.example", "c@x.example"))
	checkReply(t, err, 421, "4.3.0", false)
	closing := want{421, "4.3.0", retry.StageRcpt, false}
	checkResults(t, res, closing, closing, closing)
	if _, err := send(t, c, env("z@x.example")); err == nil {
		t.Fatal("a broken Conn sent again")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !p.HungUp(1) {
		if time.Now().After(deadline) {
			t.Fatal("the client kept the connection open after a 421")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pc := p.Conn(1)
	if want := []string{"RCPT TO:<c@x.example>", "DATA"}; !slices.Equal(pc.After421, want) || pc.QuitAfter {
		t.Errorf("after the 421 the peer read %q, want only the rest of the group %q", pc.After421, want)
	}
}

// smallBufDialer dials with small socket buffers, so that a client that
// wrote without reading would fill them soon.
type smallBufDialer struct{ size int }

func (d smallBufDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.(*net.TCPConn).SetReadBuffer(d.size)
	c.(*net.TCPConn).SetWriteBuffer(d.size)
	return c, nil
}

// TestManyRecipientsArePipelinedWithoutDeadlock: thousands of long RCPTs
// and long replies, more than the socket buffers of both sides hold. A
// client that wrote every RCPT before reading would block in its write
// while the server blocks in writing the replies nobody reads; the groups
// are bounded, so the transaction completes.
func TestManyRecipientsArePipelinedWithoutDeadlock(t *testing.T) {
	const (
		n   = 4000
		buf = 64 << 10
	)
	long := strings.Repeat("x", 200)
	s := startPipeServer(t, pipeOpts{pipelining: true, sockBuf: buf, rcptText: "ok " + long})
	tg := target(s.addr, TLSNone)
	tg.Timeout = 3 * time.Second // a deadlock ends here
	c, err := Dial(testCtx(t), smallBufDialer{buf}, tg, hello)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rcpts := make([]string, n)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("r%04d.%s@x.example", i, long)
	}
	res, err := send(t, c, env(rcpts...))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	for _, r := range res {
		if r.Reply.Code != 250 || r.Stage != retry.StageBody {
			t.Fatalf("%.12s…: %v at %v, want delivered", r.Rcpt, r.Reply, r.Stage)
		}
	}
	_, _, got, datas := s.seen()
	if len(datas) != 1 || !slices.Equal(got, rcpts) {
		t.Errorf("server got %d messages and %d of the %d RCPTs in order", len(datas), len(got), n)
	}
}

// BenchmarkSend sends 1 KiB messages one after another on one Conn to the
// sink over loopback, pipelined (as the sink offers) and lock-step (the
// offer ignored): the difference is two round trips per message.
func BenchmarkSend(b *testing.B) {
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 13)[:1024]
	for _, pipelined := range []bool{true, false} {
		name := "pipelined"
		if !pipelined {
			name = "lock-step"
		}
		b.Run(name, func(b *testing.B) {
			s, err := sink.Start(sink.Options{Discard: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			c, err := Dial(ctx, &net.Dialer{}, target(s.Addr(), TLSNone), hello)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.ext.pipelining = pipelined
			e := Envelope{From: "a@example.org", Rcpts: []string{"b@example.net"}, Size: int64(len(body))}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				res, err := c.Send(ctx, e, strings.NewReader(body))
				if err != nil || res[0].Reply.Code != 250 {
					b.Fatalf("Send: %v, %v", res[0].Reply, err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// TestResetAndCloseSayRSETAndQUIT: after Dial the session is spoken by
// our own code: RSET (with no EHLO after it; a reply of only its code is
// a reply, RFC 5321 §4.2), then QUIT, and the connection is closed.
func TestResetAndCloseSayRSETAndQUIT(t *testing.T) {
	p := smtptest.StartPeer(t, []string{"PIPELINING"}, func(tu smtptest.Turn) string {
		if tu.Verb == "RSET" {
			return "250"
		}
		return ""
	})
	c := mustDial(t, peerTarget(p.Addr))
	if err := c.Reset(); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	res, err := send(t, c, env("a@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, delivered())
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !p.HungUp(1) {
		if time.Now().After(deadline) {
			t.Fatal("the connection is still open after Close")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var verbs []string
	for _, l := range p.Conn(1).Lines {
		verbs = append(verbs, strings.Fields(l)[0])
	}
	if got := strings.Join(verbs, " "); got != "EHLO RSET MAIL RCPT DATA QUIT" {
		t.Errorf("the peer read %s", got)
	}
}

// A large body goes out chunk by chunk, its last chunk in the same write
// as the end of the data: a 100 KiB message is three writes (the
// commands, 64 KiB of body, the rest with "\r\n.\r\n"), and arrives whole,
// dot-stuffing and all.
func TestLargeBodyEndsWithItsLastChunk(t *testing.T) {
	s := startPipeServer(t, pipeOpts{pipelining: true})
	var d countingDialer
	c, err := Dial(testCtx(t), &d, target(s.addr, TLSNone), hello)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := strings.Repeat("y", 78) + "\r\n"
	body := strings.Repeat(line, 1200) + ".a line that starts with a dot\r\n" + strings.Repeat(line, 80)
	e := Envelope{From: "a@example.org", Rcpts: []string{"a@x.example"}, Size: int64(len(body))}
	before := d.writes.Load()
	res, err := c.Send(testCtx(t), e, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, delivered())
	if n := d.writes.Load() - before; n != 3 {
		t.Errorf("%d writes for a %d-byte message, want 3", n, len(body))
	}
	_, _, _, datas := s.seen()
	if len(datas) != 1 || string(datas[0]) != strings.ReplaceAll(body, "\r\n", "\n") {
		t.Errorf("the server got %d messages; the body arrived changed", len(datas))
	}
	if _, err := send(t, c, env("b@x.example")); err != nil { // the connection goes on
		t.Fatal(err)
	}
}
