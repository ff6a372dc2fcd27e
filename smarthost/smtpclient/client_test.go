package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/internal/smtptest"
	"relayq/retry"
)

const (
	testTimeout = 5 * time.Second
	hello       = "relay.test.localhost"
	msgBody     = "From: a@example.org\r\nSubject: test\r\n\r\nhello\r\n"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func target(addr string, mode TLSMode) Target {
	return Target{Addr: addr, TLS: mode, Timeout: testTimeout}
}

func mustDial(t *testing.T, tg Target) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), &net.Dialer{}, tg, hello)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// env is an envelope for rcpts whose recipients end at a "too many
// recipients", as the delivery side's are.
func env(rcpts ...string) Envelope {
	return Envelope{From: "a@example.org", Rcpts: rcpts, Size: int64(len(msgBody)),
		EndsRcpts: retry.TooManyRecipients}
}

func send(t *testing.T, c *Conn, e Envelope) ([]RcptResult, error) {
	t.Helper()
	res, err := c.Send(testCtx(t), e, strings.NewReader(msgBody))
	if len(res) != len(e.Rcpts) {
		t.Fatalf("Send gave %d results for %d recipients", len(res), len(e.Rcpts))
	}
	for i, r := range res {
		if r.Rcpt != e.Rcpts[i] || r.Reply == nil {
			t.Fatalf("result %d = %+v for %q", i, r, e.Rcpts[i])
		}
	}
	return res, err
}

// want is an expected result: basic code, enhanced code, stage, and whether
// the reply is local.
type want struct {
	code     int
	enhanced string
	stage    retry.Stage
	local    bool
}

func checkResults(t *testing.T, res []RcptResult, wants ...want) {
	t.Helper()
	for i, w := range wants {
		r := res[i]
		if r.Reply.Code != w.code || r.Reply.Enhanced.String() != w.enhanced || r.Stage != w.stage || r.Reply.Local != w.local {
			t.Errorf("%s: got %v (stage %v, local %v), want %d %s (stage %v, local %v)",
				r.Rcpt, r.Reply, r.Stage, r.Reply.Local, w.code, w.enhanced, w.stage, w.local)
		}
	}
}

func checkReply(t *testing.T, err error, code int, enhanced string, local bool) *smtpreply.Reply {
	t.Helper()
	var r *smtpreply.Reply
	if !errors.As(err, &r) {
		t.Fatalf("error %v (%T) is no *smtpreply.Reply", err, err)
	}
	if r.Code != code || r.Enhanced.String() != enhanced || r.Local != local {
		t.Fatalf("got %v (local %v), want %d %s (local %v)", r, r.Local, code, enhanced, local)
	}
	return r
}

func delivered() want { return want{250, "2.0.0", retry.StageBody, false} }

func smtpErr(code int, e1, e2, e3 int, text string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e1, e2, e3}, Message: text}
}

func TestTwoMessagesOnOneConn(t *testing.T) {
	s := smtptest.StartSink(t, sink.Options{})
	c := mustDial(t, target(s.Addr(), TLSNone))
	for i := range 2 {
		res, err := send(t, c, env(fmt.Sprintf("r%d@example.net", i), "x@example.net"))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		checkResults(t, res, delivered(), delivered())
	}
	msgs := s.Messages()
	if len(msgs) != 2 {
		t.Fatalf("sink got %d messages", len(msgs))
	}
	for i, m := range msgs {
		if m.From != "a@example.org" || strings.Join(m.To, ",") != fmt.Sprintf("r%d@example.net,x@example.net", i) ||
			string(m.Data) != msgBody {
			t.Errorf("message %d = %+v", i, m)
		}
	}
	if c.TLS() || c.Addr() != s.Addr() {
		t.Errorf("TLS() = %v, Addr() = %q", c.TLS(), c.Addr())
	}
	if ok, _ := c.Extension("8bitmime"); !ok {
		t.Error("Extension(8bitmime) = false")
	}
}

func TestPerRecipientResults(t *testing.T) {
	rejectBad := func(to string) error {
		if strings.HasPrefix(to, "bad") {
			return smtpErr(550, 5, 1, 1, "no such user")
		}
		return nil
	}
	tests := []struct {
		name   string
		opts   sink.Options
		rcpts  []string
		wants  []want
		gotTo  string // recipients of the one message the sink got, "" = none
		broken bool
	}{
		{
			name:  "one RCPT refused 550 5.1.1, the others delivered",
			opts:  sink.Options{OnRcpt: rejectBad},
			rcpts: []string{"a@x.example", "bad@x.example", "c@x.example"},
			wants: []want{delivered(), {550, "5.1.1", retry.StageRcpt, false}, delivered()},
			gotTo: "a@x.example,c@x.example",
		},
		{
			name:  "every RCPT refused: no DATA",
			opts:  sink.Options{OnRcpt: rejectBad},
			rcpts: []string{"bad1@x.example", "bad2@x.example"},
			wants: []want{{550, "5.1.1", retry.StageRcpt, false}, {550, "5.1.1", retry.StageRcpt, false}},
		},
		{
			name:  "MAIL refused: every recipient at StageMail",
			opts:  sink.Options{OnMail: func(string) error { return smtpErr(550, 5, 7, 1, "sender denied") }},
			rcpts: []string{"a@x.example", "b@x.example"},
			wants: []want{{550, "5.7.1", retry.StageMail, false}, {550, "5.7.1", retry.StageMail, false}},
		},
		{
			name: "DATA final reply 554 applies to every accepted recipient",
			opts: sink.Options{OnRcpt: rejectBad,
				OnData: func(*sink.Message) error { return smtpErr(554, 5, 6, 0, "content rejected") }},
			rcpts: []string{"a@x.example", "bad@x.example", "c@x.example"},
			wants: []want{{554, "5.6.0", retry.StageBody, false}, {550, "5.1.1", retry.StageRcpt, false}, {554, "5.6.0", retry.StageBody, false}},
		},
		{
			name:   "421 at MAIL: error, every recipient carries the 421",
			opts:   sink.Options{OnMail: func(string) error { return smtpErr(421, 4, 3, 2, "too many connections") }},
			rcpts:  []string{"a@x.example", "b@x.example"},
			wants:  []want{{421, "4.3.2", retry.StageMail, false}, {421, "4.3.2", retry.StageMail, false}},
			broken: true,
		},
		{
			name: "421 at the second RCPT: the accepted first one carries it too",
			opts: sink.Options{OnRcpt: func(to string) error {
				if to == "b@x.example" {
					return smtpErr(421, 4, 4, 5, "going down")
				}
				return nil
			}},
			rcpts:  []string{"a@x.example", "b@x.example", "c@x.example"},
			wants:  []want{{421, "4.4.5", retry.StageRcpt, false}, {421, "4.4.5", retry.StageRcpt, false}, {421, "4.4.5", retry.StageRcpt, false}},
			broken: true,
		},
		{
			name:  "bad address syntax is refused locally, the rest delivered",
			rcpts: []string{"a@x.example", "evil>@x.example"},
			wants: []want{delivered(), {501, "5.1.3", retry.StageRcpt, true}},
			gotTo: "a@x.example",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.StartSink(t, tt.opts)
			c := mustDial(t, target(s.Addr(), TLSNone))
			res, err := send(t, c, env(tt.rcpts...))
			checkResults(t, res, tt.wants...)
			if tt.broken {
				checkReply(t, err, tt.wants[0].code, tt.wants[0].enhanced, false)
				if _, err := send(t, c, env("z@x.example")); err == nil {
					t.Fatal("a broken Conn sent again")
				}
				return
			}
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			var gotTo string
			if msgs := s.Messages(); len(msgs) == 1 {
				gotTo = strings.Join(msgs[0].To, ",")
			} else if len(msgs) > 1 {
				t.Fatalf("sink got %d messages", len(msgs))
			}
			if gotTo != tt.gotTo {
				t.Errorf("sink got a message to %q, want %q", gotTo, tt.gotTo)
			}
			// The Conn is back in a state for the next transaction.
			s.SetHooks(sink.Hooks{})
			res, err = send(t, c, env("next@x.example"))
			if err != nil {
				t.Fatalf("next Send: %v", err)
			}
			checkResults(t, res, delivered())
		})
	}
}

// TestTooManyRecipientsLeavesTheRestForTheNextTransaction: after a 452
// 4.5.3 the recipients refused with it go in the caller's next transaction
// on the same Conn. Lock-step, no RCPT follows the 452; with PIPELINING
// (the sink) every RCPT was already sent, and each is decided by its own
// reply.
func TestTooManyRecipientsLeavesTheRestForTheNextTransaction(t *testing.T) {
	rcpts := []string{"1@x.example", "2@x.example", "3@x.example", "4@x.example"}
	tooMany := want{452, "4.5.3", retry.StageRcpt, false}
	t.Run("lock-step: no RCPT after the 452", func(t *testing.T) {
		p := smtptest.StartPeer(t, nil, func(tu smtptest.Turn) string {
			if tu.Verb == "RCPT" && tu.Rcpts >= 2 {
				return "452 4.5.3 Too many recipients"
			}
			return ""
		})
		c := mustDial(t, peerTarget(p.Addr))
		res, err := send(t, c, env(rcpts...))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered(), delivered(), tooMany, tooMany)
		if got := strings.Join(verbs(p, 1), " "); got != "MAIL RCPT RCPT RCPT DATA" {
			t.Errorf("the peer read %s, want no RCPT after the 452", got)
		}
		res, err = send(t, c, env(rcpts[2:]...))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered(), delivered())
		if msgs := p.Wait(2); strings.Join(msgs[1].To, ",") != "3@x.example,4@x.example" {
			t.Errorf("the peer got %+v", msgs)
		}
	})
	t.Run("lock-step, no rule given: the client decides nothing, every RCPT is sent", func(t *testing.T) {
		p := smtptest.StartPeer(t, nil, func(tu smtptest.Turn) string {
			if tu.Verb == "RCPT" && tu.Rcpts >= 2 {
				return "452 4.5.3 Too many recipients"
			}
			return ""
		})
		c := mustDial(t, peerTarget(p.Addr))
		e := env(rcpts...)
		e.EndsRcpts = nil
		res, err := send(t, c, e)
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered(), delivered(), tooMany, tooMany)
		if got := strings.Join(verbs(p, 1), " "); got != "MAIL RCPT RCPT RCPT RCPT DATA" {
			t.Errorf("the peer read %s, want every RCPT", got)
		}
	})
	t.Run("pipelined: every RCPT sent in the group", func(t *testing.T) {
		var calls atomic.Int32
		s := smtptest.StartSink(t, sink.Options{OnRcpt: func(string) error {
			if calls.Add(1) > 2 {
				return smtpErr(452, 4, 5, 3, "Too many recipients")
			}
			return nil
		}})
		c := mustDial(t, target(s.Addr(), TLSNone))
		res, err := send(t, c, env(rcpts...))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered(), delivered(), tooMany, tooMany)
		if n := calls.Load(); n != 4 {
			t.Errorf("%d RCPT commands reached the sink, want 4 (one group)", n)
		}
		calls.Store(0)
		res, err = send(t, c, env(rcpts[2:]...))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered(), delivered())
		if msgs := s.Messages(); len(msgs) != 2 || strings.Join(msgs[1].To, ",") != "3@x.example,4@x.example" {
			t.Errorf("sink got %+v", msgs)
		}
	})
}

func TestSizePrecheckSendsNothing(t *testing.T) {
	s := smtptest.StartSink(t, sink.Options{MaxSize: 1000})
	c := mustDial(t, target(s.Addr(), TLSNone))
	if c.MaxSize() != 1000 {
		t.Fatalf("MaxSize() = %d", c.MaxSize())
	}
	e := env("a@x.example", "b@x.example")
	e.Size = 5000
	res, err := send(t, c, e)
	if err != nil {
		t.Fatal(err)
	}
	tooBig := want{552, "5.3.4", retry.StageMail, true}
	checkResults(t, res, tooBig, tooBig)
	if txt := res[0].Reply.Text; !strings.Contains(txt, "5000") || !strings.Contains(txt, "1000") {
		t.Errorf("text %q does not name both sizes", txt)
	}
	if d := retry.Classify(res[0].Stage, res[0].Reply); d.Action != retry.Bounce {
		t.Errorf("classified %v, want bounce", d.Action)
	}
	if s.Count() != 0 {
		t.Error("the sink got the message")
	}
	// A message within the limit still goes on the same Conn.
	res, err = send(t, c, env("a@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, delivered())
}

func TestTLSModes(t *testing.T) {
	srvTLS, roots, err := sink.SelfSigned("127.0.0.1", "mx.test.invalid")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		sink    sink.Options
		target  func(addr string) Target
		wantTLS bool
		wantErr string // enhanced code of the expected local error; "" = success
	}{
		{"starttls required, verified with the test roots", sink.Options{TLS: srvTLS},
			func(a string) Target { tg := target(a, TLSStartTLS); tg.RootCAs = roots; return tg }, true, ""},
		{"starttls with a ServerName in the certificate", sink.Options{TLS: srvTLS},
			func(a string) Target {
				tg := target(a, TLSStartTLS)
				tg.RootCAs, tg.ServerName = roots, "mx.test.invalid"
				return tg
			}, true, ""},
		{"starttls with a ServerName not in the certificate fails 4.4.1", sink.Options{TLS: srvTLS},
			func(a string) Target {
				tg := target(a, TLSStartTLS)
				tg.RootCAs, tg.ServerName = roots, "other.test.invalid"
				return tg
			}, false, "4.4.1"},
		{"starttls with an unknown authority fails 4.4.1", sink.Options{TLS: srvTLS},
			func(a string) Target { return target(a, TLSStartTLS) }, false, "4.4.1"},
		{"starttls with InsecureSkipVerify accepts an unknown authority", sink.Options{TLS: srvTLS},
			func(a string) Target { tg := target(a, TLSStartTLS); tg.InsecureSkipVerify = true; return tg }, true, ""},
		{"starttls required but not offered fails 4.4.1", sink.Options{},
			func(a string) Target { tg := target(a, TLSStartTLS); tg.RootCAs = roots; return tg }, false, "4.4.1"},
		{"opportunistic without STARTTLS goes on in plaintext", sink.Options{},
			func(a string) Target { return target(a, TLSOpportunistic) }, false, ""},
		{"opportunistic with STARTTLS encrypts without verifying", sink.Options{TLS: srvTLS},
			func(a string) Target { return target(a, TLSOpportunistic) }, true, ""},
		{"none never starts TLS", sink.Options{TLS: srvTLS},
			func(a string) Target { return target(a, TLSNone) }, false, ""},
		{"implicit TLS, verified", sink.Options{TLS: srvTLS, ImplicitTLS: true},
			func(a string) Target { tg := target(a, TLSImplicit); tg.RootCAs = roots; return tg }, true, ""},
		{"implicit TLS with an unknown authority fails 4.4.1", sink.Options{TLS: srvTLS, ImplicitTLS: true},
			func(a string) Target { return target(a, TLSImplicit) }, false, "4.4.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.StartSink(t, tt.sink)
			c, err := Dial(testCtx(t), &net.Dialer{}, tt.target(s.Addr()), hello)
			if tt.wantErr != "" {
				checkReply(t, err, 451, tt.wantErr, true)
				var de *DialError
				if !errors.As(err, &de) || de.Stage == retry.StageMail {
					t.Errorf("error %v: no DialError with a dial stage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			if c.TLS() != tt.wantTLS {
				t.Errorf("TLS() = %v, want %v", c.TLS(), tt.wantTLS)
			}
			res, err := send(t, c, env("a@x.example"))
			if err != nil {
				t.Fatal(err)
			}
			checkResults(t, res, delivered())
		})
	}
}

func TestAuth(t *testing.T) {
	srvTLS, roots, err := sink.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]string{"app1": "s3cret"}
	tests := []struct {
		name     string
		sink     sink.Options
		mode     TLSMode
		user     string
		pass     string
		code     int // 0 = success
		enhanced string
		local    bool
	}{
		{"PLAIN succeeds", sink.Options{Users: users}, TLSNone, "app1", "s3cret", 0, "", false},
		{"LOGIN when only LOGIN is offered", sink.Options{Users: users, AuthMechanisms: []string{"LOGIN"}}, TLSNone, "app1", "s3cret", 0, "", false},
		{"PLAIN inside STARTTLS", sink.Options{Users: users, TLS: srvTLS}, TLSStartTLS, "app1", "s3cret", 0, "", false},
		{"wrong password gives the server's 535", sink.Options{Users: users}, TLSNone, "app1", "wrong", 535, "5.7.8", false},
		{"AUTH not offered is a local 530", sink.Options{}, TLSNone, "app1", "s3cret", 530, "5.7.0", true},
		{"no username: the server's 530 comes at MAIL", sink.Options{Users: users}, TLSNone, "", "", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.StartSink(t, tt.sink)
			tg := target(s.Addr(), tt.mode)
			tg.RootCAs, tg.Username, tg.Password = roots, tt.user, tt.pass
			c, err := Dial(testCtx(t), &net.Dialer{}, tg, hello)
			if tt.code != 0 {
				checkReply(t, err, tt.code, tt.enhanced, tt.local)
				var de *DialError
				if !errors.As(err, &de) || de.Stage != retry.StageHello {
					t.Errorf("stage of %v is not hello", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			res, err := send(t, c, env("a@x.example"))
			if err != nil {
				t.Fatal(err)
			}
			if tt.user == "" {
				checkResults(t, res, want{530, "5.7.0", retry.StageMail, false})
				return
			}
			checkResults(t, res, delivered())
		})
	}
}

func TestDialFailures(t *testing.T) {
	closed := smtptest.ClosedAddr(t)

	silent := rawServer(t, func(*textproto.Conn) {}) // accepts and never greets
	full := smtptest.StartSink(t, sink.Options{MaxConns: 1})
	mustDial(t, target(full.Addr(), TLSNone)) // takes the only slot

	tests := []struct {
		name     string
		target   Target
		code     int
		enhanced string
		local    bool
	}{
		{"connection refused is a local 4.4.1", target(closed, TLSNone), 451, "4.4.1", true},
		{"no greeting within the timeout is a local 4.4.1",
			Target{Addr: silent, TLS: TLSNone, Timeout: 200 * time.Millisecond}, 451, "4.4.1", true},
		{"a 421 4.3.2 greeting is the server's reply", target(full.Addr(), TLSNone), 421, "4.3.2", false},
		{"an unknown TLS mode is a local 4.3.5", Target{Addr: closed, TLS: "sometimes"}, 451, "4.3.5", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Dial(testCtx(t), &net.Dialer{}, tt.target, hello)
			checkReply(t, err, tt.code, tt.enhanced, tt.local)
			var de *DialError
			if !errors.As(err, &de) || de.Stage != retry.StageConnect {
				t.Errorf("stage of %v is not connect", err)
			}
		})
	}
}

func TestContextCancellationAbortsAStuckTransaction(t *testing.T) {
	release := make(chan struct{})
	s := smtptest.StartSink(t, sink.Options{OnData: func(*sink.Message) error { <-release; return nil }})
	t.Cleanup(func() { close(release) }) // runs before the sink closes
	c := mustDial(t, target(s.Addr(), TLSNone))

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := c.Send(ctx, env("a@x.example", "b@x.example"), strings.NewReader(msgBody))
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("Send took %v after ctx expired", elapsed)
	}
	checkReply(t, err, 451, "4.4.2", true)
	stuck := want{451, "4.4.2", retry.StageBody, true}
	checkResults(t, res, stuck, stuck)
	if err := c.Reset(); err == nil {
		t.Error("Reset on an aborted Conn succeeded")
	}
}

// failingReader gives some bytes, then an error, like a queue read failing.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n > 0 {
		line := strings.Repeat("x", 76) + "\r\n" // within every line limit
		n := copy(p, strings.Repeat(line, len(p)/len(line)+1)[:min(len(p), r.n)])
		r.n -= n
		return n, nil
	}
	return 0, errors.New("disk on fire")
}

func TestBodyReadErrorDropsTheConnectionBeforeTheDot(t *testing.T) {
	s := smtptest.StartSink(t, sink.Options{})
	c := mustDial(t, target(s.Addr(), TLSNone))
	res, err := c.Send(testCtx(t), env("a@x.example"), &failingReader{n: 100 << 10})
	checkReply(t, err, 451, "4.3.0", true)
	checkResults(t, res, want{451, "4.3.0", retry.StageBody, true})
	// Closing the sink would hide a late delivery; instead wait until the
	// sink's session is gone and check that nothing was counted.
	deadline := time.Now().Add(testTimeout)
	for open, _, _ := s.Connections(); open > 0; open, _, _ = s.Connections() {
		if time.Now().After(deadline) {
			t.Fatal("the sink's session never ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.Count() != 0 {
		t.Fatal("a truncated message was delivered")
	}
}

func TestResetKeepsTheConnUsable(t *testing.T) {
	s := smtptest.StartSink(t, sink.Options{MaxSize: 4096})
	c := mustDial(t, target(s.Addr(), TLSNone))
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if c.MaxSize() != 4096 {
		t.Errorf("MaxSize() after Reset = %d", c.MaxSize())
	}
	res, err := send(t, c, env("a@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, delivered())
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := send(t, c, env("a@x.example")); err == nil {
		t.Error("Send on a closed Conn succeeded")
	}
}

func TestParseTLSMode(t *testing.T) {
	tests := []struct {
		in   string
		want TLSMode
		ok   bool
	}{
		{"none", TLSNone, true}, {"Opportunistic", TLSOpportunistic, true},
		{" starttls ", TLSStartTLS, true}, {"IMPLICIT", TLSImplicit, true},
		{"", "", false}, {"tls", "", false},
	}
	for _, tt := range tests {
		got, err := ParseTLSMode(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseTLSMode(%q) = %q, %v", tt.in, got, err)
		}
	}
}

// rawServer runs a one-connection-at-a-time scripted SMTP peer for what a
// go-smtp server cannot be made to do; handle gets each connection.
func rawServer(t *testing.T, handle func(*textproto.Conn)) string {
	t.Helper()
	return smtptest.AcceptLoop(t, testTimeout, func(conn net.Conn) func() {
		handle(textproto.NewConn(conn))
		// Wait for the client to hang up, so handle's last words arrive.
		io.Copy(io.Discard, conn)
		return nil
	})
}

// script answers commands with canned replies until QUIT or EOF.
func script(replies map[string]string) func(*textproto.Conn) {
	return func(tp *textproto.Conn) {
		tp.PrintfLine("220 raw.test ESMTP")
		for {
			line, err := tp.ReadLine()
			if err != nil {
				return
			}
			verb := strings.ToUpper(strings.Fields(line + " ")[0])
			reply, ok := replies[verb]
			if !ok {
				reply = "250 2.0.0 ok"
			}
			if verb == "DATA" {
				tp.PrintfLine("354 go on")
				if _, err := tp.ReadDotBytes(); err != nil {
					return
				}
				reply = replies["."]
			}
			tp.W.WriteString(reply + "\r\n")
			tp.W.Flush()
			if verb == "QUIT" {
				return
			}
		}
	}
}

func TestScriptedPeers(t *testing.T) {
	t.Run("HELO fallback when EHLO is refused (opportunistic)", func(t *testing.T) {
		addr := rawServer(t, script(map[string]string{"EHLO": "502 5.5.1 no", ".": "250 2.0.0 queued as 42"}))
		c := mustDial(t, target(addr, TLSOpportunistic))
		res, err := send(t, c, env("a@x.example"))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered())
		if res[0].Reply.Text != "queued as 42" || c.TLS() {
			t.Errorf("reply %q, TLS %v", res[0].Reply.Text, c.TLS())
		}
	})
	t.Run("plaintext injected after the 220 to STARTTLS is refused", func(t *testing.T) {
		addr := rawServer(t, script(map[string]string{
			"EHLO":     "250-raw.test\r\n250 STARTTLS",
			"STARTTLS": "220 2.0.0 go ahead\r\n250 2.0.0 injected",
		}))
		_, err := Dial(testCtx(t), &net.Dialer{}, target(addr, TLSOpportunistic), hello)
		r := checkReply(t, err, 451, "4.4.1", true)
		if !strings.Contains(r.Text, "STARTTLS") {
			t.Errorf("text %q", r.Text)
		}
	})
	t.Run("a refused STARTTLS defers instead of going on in plaintext", func(t *testing.T) {
		addr := rawServer(t, script(map[string]string{
			"EHLO":     "250-raw.test\r\n250 STARTTLS",
			"STARTTLS": "454 4.7.0 TLS not available",
		}))
		_, err := Dial(testCtx(t), &net.Dialer{}, target(addr, TLSOpportunistic), hello)
		checkReply(t, err, 454, "4.7.0", false)
	})
	t.Run("a dropped connection after the dot is a local 4.4.2", func(t *testing.T) {
		addr := rawServer(t, func(tp *textproto.Conn) {
			tp.PrintfLine("220 raw.test")
			for {
				line, err := tp.ReadLine()
				if err != nil {
					return
				}
				if strings.HasPrefix(line, "DATA") {
					tp.PrintfLine("354 go on")
					tp.ReadDotBytes()
					tp.Close() // no final reply
					return
				}
				tp.PrintfLine("250 ok")
			}
		})
		c := mustDial(t, target(addr, TLSNone))
		res, err := send(t, c, env("a@x.example"))
		checkReply(t, err, 451, "4.4.2", true)
		checkResults(t, res, want{451, "4.4.2", retry.StageBody, true})
	})
}

// peerTarget is a plaintext target for a smtptest.Peer.
func peerTarget(addr string) Target { return target(addr, TLSNone) }
