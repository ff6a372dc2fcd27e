package smarthost

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/explain"
	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/internal/smtptest"
	"relayq/internal/testlog"
	"relayq/queue"
	"relayq/retry"
)

// peerRouter routes every domain to the peer, except those in fail, whose
// Route returns that error (a fake of the project's own Router).
type peerRouter struct {
	targets []Target
	fail    map[string]error
}

func (r *peerRouter) Route(_ context.Context, _, domain string) (*Route, error) {
	if err := r.fail[domain]; err != nil {
		return nil, err
	}
	return &Route{Destination: "peer", Targets: r.targets}, nil
}

func (r *peerRouter) SenderClass(string) string { return "" }

func peerTarget(addr string) Target {
	return Target{Addr: addr, TLS: TLSNone, Timeout: 5 * time.Second}
}

// logBuffer is the test's view of the log.
type logBuffer = testlog.Buffer

// captureLog makes w log into the returned buffer as well as the test log.
func captureLog(t *testing.T, w *Worker) *logBuffer {
	lb := &logBuffer{}
	w.Log = zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), lb))
	return lb
}

// waitAttempted waits until every recipient of id has a reply recorded and
// returns the message; it fails if the message left the queue.
func (h *harness) waitAttempted(id queue.ID) *queue.Message {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := h.store.Get(id)
		if err != nil {
			h.t.Fatalf("message %s: %v (it should still be queued)", id, err)
		}
		done := true
		for _, r := range m.Recipients {
			done = done && r.LastReply != ""
		}
		if done {
			return m
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("message %s not attempted within 10 s: %+v", id, m.Recipients)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ndrFor finds the report about id among msgs (by its X-Relayq-Queue-ID).
func ndrFor(t *testing.T, msgs []sink.Message, id queue.ID) (sink.Message, ndrReport) {
	t.Helper()
	for _, m := range msgs {
		if m.From == "" && bytes.Contains(m.Data, []byte("X-Relayq-Queue-ID: "+string(id))) {
			return m, parseNDR(t, m.Data)
		}
	}
	t.Fatalf("no report about %s among %d messages", id, len(msgs))
	return sink.Message{}, ndrReport{}
}

// humanPart returns the text/plain part of a report, lines unwrapped.
func humanPart(t *testing.T, data []byte) string {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	p, err := multipart.NewReader(msg.Body, params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(p)
	return strings.Join(strings.Fields(string(b)), " ")
}

// TestReplyTableEndToEnd walks the reply table of docs/design.md row by row
// against a scripted next hop: each row's reply at its stage, what the
// queue records after the first attempt, and the NDR if one is due. The
// backoff is an hour (no jitter) so that a deferral stays put to be looked
// at. The 421 4.3.2 rows (lowering the destination's cap) are in
// caps_test.go, the MX and DNS rows in mx_test.go.
func TestReplyTableEndToEnd(t *testing.T) {
	const sender = "sender@src.invalid"
	notNDR := func(tu smtptest.Turn) bool { return tu.From != "" }
	at := func(verb, reply string) func(smtptest.Turn) string {
		return func(tu smtptest.Turn) string {
			if tu.Conn == 1 && tu.Verb == verb {
				return reply
			}
			return ""
		}
	}
	tests := []struct {
		name   string
		script func(smtptest.Turn) string
		rcpts  []string
		target func(p *smtptest.Peer) Target // nil: the peer, plaintext
		fail   map[string]error              // domains the router fails
		// After the first attempt, for each of rcpts: "" delivered,
		// "defer <reply prefix>" or "bounce <NDR status>".
		want    []string
		no421   bool // the row has no 421 to check
		ndrRcpt int  // recipient blocks in the NDR, if one
	}{
		{name: "421 at the greeting closes and defers", script: at("GREETING", "421 4.3.0 peer.test shutting down"),
			want: []string{"defer 421 4.3.0"}},
		{name: "421 to EHLO closes and defers", script: at("EHLO", "421 4.4.5 too busy"),
			want: []string{"defer 421 4.4.5"}},
		{name: "421 to MAIL closes and defers", script: at("MAIL", "421 4.7.0 try again later"),
			want: []string{"defer 421 4.7.0"}},
		{name: "421 to RCPT closes and defers", script: at("RCPT", "421 4.3.0 closing"),
			want: []string{"defer 421 4.3.0"}},
		{name: "421 to DATA closes and defers", script: at("DATA", "421 4.3.0 closing"),
			want: []string{"defer 421 4.3.0"}},
		{name: "421 after the final dot closes and defers", script: at(".", "421 4.4.2 timeout"),
			rcpts: []string{"a@dst.invalid", "b@dst.invalid"},
			want:  []string{"defer 421 4.4.2", "defer 421 4.4.2"}},
		{name: "5xx greeting defers: it is about the host, not the message", script: at("GREETING", "554 5.7.1 no service for you"),
			want: []string{"defer 554 5.7.1"}, no421: true},

		{name: "452 4.5.3 splits the recipients into more transactions", no421: true,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "RCPT" && tu.Rcpts >= 2 {
					return "452 4.5.3 Too many recipients"
				}
				return ""
			},
			rcpts: []string{"r1@dst.invalid", "r2@dst.invalid", "r3@dst.invalid", "r4@dst.invalid", "r5@dst.invalid"},
			want:  []string{"", "", "", "", ""}},
		{name: "552 at RCPT is temporary", no421: true,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "RCPT" {
					return "552 5.2.2 mailbox full"
				}
				return ""
			},
			want: []string{"defer 552 5.2.2"}},
		{name: "552 5.3.4 after the data bounces at once", no421: true, ndrRcpt: 1,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "." && notNDR(tu) {
					return "552 5.3.4 Message size exceeds fixed maximum message size"
				}
				return ""
			},
			want: []string{"bounce 5.3.4"}},
		{name: "552 5.2.3 after the data bounces at once", no421: true, ndrRcpt: 1,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "." && notNDR(tu) {
					return "552 5.2.3 message exceeds the recipient's limit"
				}
				return ""
			},
			want: []string{"bounce 5.2.3"}},
		{name: "552 4.3.1 with a size text after the data bounces as 5.3.4", no421: true, ndrRcpt: 1,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "." && notNDR(tu) {
					return "552 4.3.1 Message size exceeds fixed maximum message"
				}
				return ""
			},
			want: []string{"bounce 5.3.4"}},
		{name: "451 at RCPT defers with backoff", no421: true,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "RCPT" {
					return "451 4.3.0 try again later"
				}
				return ""
			},
			want: []string{"defer 451 4.3.0"}},
		{name: "450 after the data defers with backoff", no421: true,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "." {
					return "450 4.2.0 greylisted, come back later"
				}
				return ""
			},
			want: []string{"defer 450 4.2.0"}},
		{name: "550 5.1.1 at RCPT bounces that recipient only", no421: true, ndrRcpt: 1,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "RCPT" && strings.Contains(tu.Line, "<gone@") {
					return "550 5.1.1 <gone@dst.invalid>: Recipient address rejected: User unknown"
				}
				return ""
			},
			rcpts: []string{"gone@dst.invalid", "here@dst.invalid"},
			want:  []string{"bounce 5.1.1", ""}},
		{name: "554 5.7.1 at MAIL bounces every recipient in one NDR", no421: true, ndrRcpt: 2,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "MAIL" && !strings.Contains(tu.Line, "<>") {
					return "554 5.7.1 sender blocked"
				}
				return ""
			},
			rcpts: []string{"a@dst.invalid", "b@dst.invalid"},
			want:  []string{"bounce 5.7.1", "bounce 5.7.1"}},
		{name: "554 to DATA bounces", no421: true, ndrRcpt: 1,
			script: func(tu smtptest.Turn) string {
				if tu.Verb == "DATA" && notNDR(tu) {
					return "554 5.6.0 content rejected"
				}
				return ""
			},
			want: []string{"bounce 5.6.0"}},
		{name: "a dropped connection defers with 4.4.2", no421: true,
			script: func(tu smtptest.Turn) string {
				if tu.Conn == 1 && tu.Verb == "RCPT" {
					return "DROP"
				}
				return ""
			},
			want: []string{"defer 451 4.4.2"}},
		{name: "connection refused defers with 4.4.1", no421: true,
			target: func(*smtptest.Peer) Target { return peerTarget(smtptest.ClosedAddr(t)) },
			want:   []string{"defer 451 4.4.1"}},
		{name: "TLS required but STARTTLS not offered defers with 4.4.1", no421: true,
			target: func(p *smtptest.Peer) Target { tg := peerTarget(p.Addr); tg.TLS = TLSStartTLS; return tg },
			want:   []string{"defer 451 4.4.1"}},
		{name: "a temporary DNS failure defers with 4.4.3", no421: true,
			fail: map[string]error{"dst.invalid": &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeDNSTemp, Text: "DNS lookup failed: SERVFAIL", Local: true}},
			want: []string{"defer 451 4.4.3"}},
		{name: "a domain that does not exist bounces with 5.1.2", no421: true, ndrRcpt: 1,
			fail: map[string]error{"dst.invalid": &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeBadDomain, Text: "domain not found: dst.invalid", Local: true}},
			want: []string{"bounce 5.1.2"}},
		{name: "a null MX bounces with 5.1.10", no421: true, ndrRcpt: 1,
			fail: map[string]error{"dst.invalid": &smtpreply.Reply{Code: 556, Enhanced: smtpreply.CodeNullMX, Text: "dst.invalid accepts no mail (null MX)", Local: true}},
			want: []string{"bounce 5.1.10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := smtptest.StartPeer(t, []string{"8BITMIME"}, tt.script)
			target := peerTarget(p.Addr)
			if tt.target != nil {
				target = tt.target(p)
			}
			h := startHarness(t, nil, &peerRouter{targets: []Target{target}, fail: tt.fail}, func(w *Worker) {
				w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour}
			})
			rcpts := tt.rcpts
			if rcpts == nil {
				rcpts = []string{"rcpt@dst.invalid"}
			}
			id := h.put(sender, rcpts...)

			deferred, bounced, delivered := 0, 0, 0
			for _, w := range tt.want {
				switch {
				case w == "":
					delivered++
				case strings.HasPrefix(w, "defer "):
					deferred++
				default:
					bounced++
				}
			}
			if deferred > 0 {
				m := h.waitAttempted(id)
				for k, w := range tt.want {
					r := m.Recipients[k]
					prefix, isDefer := strings.CutPrefix(w, "defer ")
					switch {
					case isDefer && (r.State != queue.Pending || !strings.HasPrefix(r.LastReply, prefix) || r.Attempts != 1):
						t.Errorf("%s: %s after %d attempts with %q, want pending after 1 with %q…", r.Addr, r.State, r.Attempts, r.LastReply, prefix)
					case !isDefer && r.State == queue.Pending:
						t.Errorf("%s still pending with %q", r.Addr, r.LastReply)
					}
				}
				// Backoff: Min = Max = 1h, no jitter.
				if got := m.NextAttempt.Sub(m.LastAttempt); got != time.Hour {
					t.Errorf("next attempt %v after the last, want the backoff's 1h", got)
				}
			} else {
				h.waitGone(id)
			}
			if !tt.no421 {
				p.ClosedWithoutQuit(1)
			}

			var msgs []sink.Message
			var got []string
			p.WaitUntil(func(ms []sink.Message) bool {
				msgs, got = ms, nil
				ndr := false
				for _, m := range ms {
					if m.From == sender {
						got = append(got, m.To...)
					}
					ndr = ndr || m.From == ""
				}
				return len(got) >= delivered && (bounced == 0 || ndr)
			})
			if len(got) != delivered {
				t.Errorf("delivered to %v, want %d recipients", got, delivered)
			}
			if bounced == 0 {
				if n := h.ndrs(id); n != 0 {
					t.Errorf("%d NDRs, want none", n)
				}
				return
			}
			_, rep := ndrFor(t, msgs, id)
			if len(rep.recipients) != tt.ndrRcpt {
				t.Fatalf("NDR names %d recipients, want %d", len(rep.recipients), tt.ndrRcpt)
			}
			k := 0
			for i, w := range tt.want {
				status, ok := strings.CutPrefix(w, "bounce ")
				if !ok {
					continue
				}
				r := rep.recipients[k]
				k++
				if r.Get("Action") != "failed" || r.Get("Status") != status || r.Get("Final-Recipient") != "rfc822;"+rcpts[i] {
					t.Errorf("NDR block %d: Action %q Status %q Final-Recipient %q, want failed %s rfc822;%s",
						k, r.Get("Action"), r.Get("Status"), r.Get("Final-Recipient"), status, rcpts[i])
				}
			}
		})
	}
}

func Test421AtTheGreetingTriesTheNextHost(t *testing.T) {
	first := smtptest.StartPeer(t, nil, func(tu smtptest.Turn) string {
		if tu.Verb == "GREETING" {
			return "421 4.3.0 first.test going down"
		}
		return ""
	})
	second := smtptest.StartPeer(t, nil, nil)
	h := startHarness(t, nil, &peerRouter{targets: []Target{peerTarget(first.Addr), peerTarget(second.Addr)}}, func(w *Worker) {
		w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour}
	})
	id := h.put("a@src.invalid", "b@dst.invalid")
	msgs := second.Wait(1) // at once, not after the hour's backoff
	h.waitGone(id)
	first.ClosedWithoutQuit(1)
	if msgs[0].To[0] != "b@dst.invalid" {
		t.Errorf("second host got %v", msgs[0].To)
	}
}

// TestClassMismatchBasicCodeDecidesAndTheLogSaysSo: "552 4.3.1" after the
// data is permanent (the basic code decides), reported as 5.3.1, and the
// worker's log line says why.
func TestClassMismatchBasicCodeDecidesAndTheLogSaysSo(t *testing.T) {
	p := smtptest.StartPeer(t, nil, func(tu smtptest.Turn) string {
		if tu.Verb == "." && tu.From != "" {
			return "552 4.3.1 Insufficient system resources"
		}
		return ""
	})
	var logs *logBuffer
	h := startHarness(t, nil, &peerRouter{targets: []Target{peerTarget(p.Addr)}}, func(w *Worker) { logs = captureLog(t, w) })
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	_, rep := ndrFor(t, p.Wait(1), id)
	if got := rep.recipients[0].Get("Status"); got != "5.3.1" {
		t.Errorf("NDR Status %q, want 5.3.1 (basic class, enhanced subject and detail)", got)
	}
	want := "basic code 552 and enhanced 4.3.1 disagree in class; basic code decides"
	evs := logs.Events(want)
	if len(evs) != 1 {
		t.Fatalf("%d log lines %q", len(evs), want)
	}
	if evs[0]["id"] != string(id) || evs[0]["reply"] != "552 4.3.1 Insufficient system resources" || evs[0]["rcpt"] != "b@dst.invalid" {
		t.Errorf("log line %v", evs[0])
	}
	bounced := logs.Events("bounced")
	if len(bounced) != 1 || bounced[0]["enhanced"] != "5.3.1" || bounced[0]["level"] != "error" {
		t.Errorf("bounce log lines %v", bounced)
	}
}

// TestExpiryNDRSaysHowLongHowOftenAndTheLastReply: 451 forever with a short
// lifetime bounces with 4.4.7 (Action failed), and the NDR says how often
// and over how long delivery was tried, and what the peer last said.
func TestExpiryNDRSaysHowLongHowOftenAndTheLastReply(t *testing.T) {
	var mu sync.Mutex
	tries := 0
	p := smtptest.StartPeer(t, nil, func(tu smtptest.Turn) string {
		if tu.Verb == "RCPT" && tu.From != "" {
			mu.Lock()
			defer mu.Unlock()
			tries++
			return fmt.Sprintf("451 4.2.1 mailbox busy (try %d)", tries)
		}
		return ""
	})
	h := startHarness(t, nil, &peerRouter{targets: []Target{peerTarget(p.Addr)}}, func(w *Worker) {
		w.Lifetime = 400 * time.Millisecond
		w.Backoff = retry.Backoff{Min: 30 * time.Millisecond, Max: 30 * time.Millisecond}
	})
	id := h.put("sender@src.invalid", "slow@dst.invalid")
	h.waitGone(id)
	ndr, rep := ndrFor(t, p.Wait(1), id)
	r := rep.recipients[0]
	mu.Lock()
	n := tries
	mu.Unlock()
	if r.Get("Action") != "failed" || r.Get("Status") != "4.4.7" {
		t.Errorf("Action %q Status %q, want failed 4.4.7", r.Get("Action"), r.Get("Status"))
	}
	last := fmt.Sprintf("451 4.2.1 mailbox busy (try %d)", n)
	if got := r.Get("Diagnostic-Code"); got != "smtp; "+last {
		t.Errorf("Diagnostic-Code %q, want the last reply %q", got, last)
	}
	human := humanPart(t, ndr.Data)
	for _, want := range []string{
		"Status: " + explain.Summary(smtpreply.CodeExpired),
		fmt.Sprintf("Tried: %d times", n),
		"Reply: " + last,
		"What to do: " + explain.Hint(smtpreply.CodeExpired),
	} {
		if !strings.Contains(human, want) {
			t.Errorf("human part lacks %q:\n%s", want, human)
		}
	}
	if n < 2 {
		t.Errorf("only %d attempts before expiry", n)
	}
}
