package smarthost

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/explain"
	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/internal/smtptest"
	"relayq/queue"
	"relayq/retry"
)

// putEnv queues body with env and returns its ID.
func (h *harness) putEnv(env *queue.Envelope, body string) queue.ID {
	h.t.Helper()
	id := h.store.NewID()
	if err := h.store.Put(context.Background(), id, env, strings.NewReader(body)); err != nil {
		h.t.Fatal(err)
	}
	return id
}

// reportsAbout returns the reports (from <>) about id among msgs.
func reportsAbout(msgs []sink.Message, id queue.ID) []sink.Message {
	var out []sink.Message
	for _, m := range msgs {
		if m.From == "" && strings.Contains(string(m.Data), "X-Relayq-Queue-ID: "+string(id)) {
			out = append(out, m)
		}
	}
	return out
}

var errNoSuchUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}

// TestSizePrecheckBouncesAtOnceAndSendsNothing: the next hop advertises a
// SIZE below the message's: no MAIL for it, an NDR 5.3.4 naming both sizes.
func TestSizePrecheckBouncesAtOnceAndSendsNothing(t *testing.T) {
	var mails atomic.Int32
	h := newHarness(t, sink.Options{MaxSize: 8000, OnMail: func(from string) error {
		if from != "" {
			mails.Add(1)
		}
		return nil
	}}, nil)
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 1200)
	id := h.putEnv(&queue.Envelope{From: "sender@src.invalid", Recipients: []queue.Recipient{{Addr: "b@dst.invalid"}}}, body)
	h.waitGone(id)
	msgs := h.waitSink(1)
	if n := mails.Load(); n != 0 || len(msgs) != 1 {
		t.Fatalf("the next hop saw %d MAIL commands for the message and holds %d messages; want none and only the NDR", n, len(msgs))
	}
	ndr, rep := ndrFor(t, msgs, id)
	size := fmt.Sprint(len(body))
	r := rep.recipients[0]
	if r.Get("Status") != "5.3.4" || r.Get("Action") != "failed" {
		t.Errorf("Status %q Action %q, want 5.3.4 failed", r.Get("Status"), r.Get("Action"))
	}
	if d := r.Get("Diagnostic-Code"); !strings.Contains(d, size) || !strings.Contains(d, "8000") {
		t.Errorf("Diagnostic-Code %q does not state both sizes (%s and 8000)", d, size)
	}
	human := humanPart(t, ndr.Data)
	for _, want := range []string{"message size " + size + " exceeds the next hop's limit of 8000 bytes",
		"Size: " + size + " bytes", explain.Summary(smtpreply.CodeTooBig), explain.Hint(smtpreply.CodeTooBig)} {
		if !strings.Contains(human, want) {
			t.Errorf("human part lacks %q:\n%s", want, human)
		}
	}
}

// TestDSNParametersPassedOnWhenTheNextHopOffersDSN: RET, ENVID (xtext),
// NOTIFY and ORCPT go on the wire as received (RFC 3461 §4); malformed
// values are dropped without breaking the session; a next hop with DSN
// answers for NOTIFY=SUCCESS itself, so relayq sends no report.
func TestDSNParametersPassedOnWhenTheNextHopOffersDSN(t *testing.T) {
	p := smtptest.StartPeer(t, []string{"DSN", "8BITMIME"}, nil)
	h := startHarness(t, nil, &peerRouter{targets: []Target{peerTarget(p.Addr)}}, nil)
	good := h.putEnv(&queue.Envelope{From: "sender@src.invalid", Ret: "FULL", EnvID: "env+1=2",
		Recipients: []queue.Recipient{
			{Addr: "a@dst.invalid", Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;Orig+tag@Example.org"},
			{Addr: "b@dst.invalid", Notify: "NEVER"},
			{Addr: "c@dst.invalid"},
		}}, "Subject: x\r\n\r\nx\r\n")
	h.waitGone(good)
	bad := h.putEnv(&queue.Envelope{From: "sender@src.invalid", Ret: "BOGUS", EnvID: "caf\u00e9\r\n",
		Recipients: []queue.Recipient{
			{Addr: "d@dst.invalid", Notify: "NEVER,SUCCESS", ORCPT: "x400;c=de"},
			{Addr: "e@dst.invalid", Notify: "SOMETIMES", ORCPT: "rfc822;a@b\r\nX-Injected: yes"},
		}}, "Subject: y\r\n\r\ny\r\n")
	h.waitGone(bad)
	p.Wait(2)

	var mailLines, rcptLines []string
	for n := 1; n <= p.Conns(); n++ {
		for _, l := range p.Conn(n).Lines {
			switch {
			case strings.HasPrefix(l, "MAIL"):
				mailLines = append(mailLines, l)
			case strings.HasPrefix(l, "RCPT"):
				rcptLines = append(rcptLines, l)
			}
		}
	}
	want := []string{
		"MAIL FROM:<sender@src.invalid> BODY=8BITMIME RET=FULL ENVID=env+2B1+3D2",
		"MAIL FROM:<sender@src.invalid> BODY=8BITMIME",
	}
	if strings.Join(mailLines, "\n") != strings.Join(want, "\n") {
		t.Errorf("MAIL lines:\n%s\nwant:\n%s", strings.Join(mailLines, "\n"), strings.Join(want, "\n"))
	}
	want = []string{
		"RCPT TO:<a@dst.invalid> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;Orig+2Btag@Example.org",
		"RCPT TO:<b@dst.invalid> NOTIFY=NEVER",
		"RCPT TO:<c@dst.invalid>",
		"RCPT TO:<d@dst.invalid>",
		"RCPT TO:<e@dst.invalid>",
	}
	if strings.Join(rcptLines, "\n") != strings.Join(want, "\n") {
		t.Errorf("RCPT lines:\n%s\nwant:\n%s", strings.Join(rcptLines, "\n"), strings.Join(want, "\n"))
	}
	if n := h.ndrs(good) + h.ndrs(bad); n != 0 {
		t.Errorf("%d reports, want none: the next hop offers DSN and answers for NOTIFY=SUCCESS", n)
	}
}

// TestRelayedDSNWhenTheNextHopLacksDSN: NOTIFY=SUCCESS delivered to a next
// hop without DSN gets a "relayed" DSN (RFC 3461 §5.2.2), for the
// recipients that asked only, with ORCPT and ENVID; the parameters are not
// sent to that next hop.
func TestRelayedDSNWhenTheNextHopLacksDSN(t *testing.T) {
	p := smtptest.StartPeer(t, nil, nil)
	h := startHarness(t, nil, &peerRouter{targets: []Target{peerTarget(p.Addr)}}, nil)
	id := h.putEnv(&queue.Envelope{From: "sender@src.invalid", EnvID: "QQ42",
		Recipients: []queue.Recipient{
			{Addr: "a@dst.invalid", Notify: "SUCCESS", ORCPT: "rfc822;A@dst.invalid"},
			{Addr: "b@dst.invalid"},
			{Addr: "c@dst.invalid", Notify: "FAILURE,DELAY"},
		}}, "Subject: hello\r\n\r\nx\r\n")
	h.waitGone(id)
	msgs := p.Wait(2)
	for _, l := range p.Conn(1).Lines {
		if strings.Contains(l, "NOTIFY=") || strings.Contains(l, "ENVID=") {
			t.Errorf("DSN parameters sent to a next hop without DSN: %q", l)
		}
	}
	if got := reportsAbout(msgs, id); len(got) != 1 || h.ndrs(id) != 1 {
		t.Fatalf("%d reports at the peer, %d queued; want one", len(got), h.ndrs(id))
	}
	dsn, rep := ndrFor(t, msgs, id)
	if dsn.To[0] != "sender@src.invalid" || len(rep.recipients) != 1 {
		t.Fatalf("report to %v with %d recipient blocks", dsn.To, len(rep.recipients))
	}
	r := rep.recipients[0]
	for k, want := range map[string]string{
		"Action": "relayed", "Status": "2.0.0",
		"Final-Recipient": "rfc822;a@dst.invalid", "Original-Recipient": "rfc822;A@dst.invalid",
		"Remote-Mta": "dns; 127.0.0.1", "Diagnostic-Code": "smtp; 250 2.0.0 queued",
	} {
		if got := r.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := rep.perMessage.Get("Original-Envelope-Id"); got != "QQ42" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if got := rep.header.Get("Subject"); got != "Successful Mail Delivery Report" {
		t.Errorf("Subject = %q", got)
	}
}

// TestReturnFullAndHeaders: RET=FULL returns the whole message when it fits
// ReturnFullMax, else its headers and a sentence saying so; RET=HDRS and no
// RET return the headers.
func TestReturnFullAndHeaders(t *testing.T) {
	body := "Subject: returned\r\nX-Marker: yes\r\n\r\nthe body line\r\n"
	tests := []struct {
		name    string
		ret     string
		max     int64
		part    string // Content-Type of the third part
		hasBody bool
		note    bool
	}{
		{"RET=FULL within the cap", "FULL", 0, "message/rfc822", true, false},
		{"RET=FULL above the cap", "FULL", 20, "text/rfc822-headers", false, true},
		{"RET=FULL with returns turned off", "FULL", -1, "text/rfc822-headers", false, false},
		{"RET=HDRS", "HDRS", 0, "text/rfc822-headers", false, false},
		{"no RET", "", 0, "text/rfc822-headers", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
				if strings.HasPrefix(to, "gone@") {
					return errNoSuchUser
				}
				return nil
			}}, func(w *Worker) { w.ReturnFullMax = tt.max })
			id := h.putEnv(&queue.Envelope{From: "sender@src.invalid", Ret: tt.ret,
				Recipients: []queue.Recipient{{Addr: "gone@dst.invalid"}}}, body)
			h.waitGone(id)
			ndr, _ := ndrFor(t, h.waitSink(1), id)
			data := string(ndr.Data)
			if !strings.Contains(data, "Content-Type: "+tt.part+"\r\n") {
				t.Errorf("no %s part:\n%s", tt.part, data)
			}
			if got := strings.Contains(data, "\r\nthe body line\r\n"); got != tt.hasBody {
				t.Errorf("body returned: %v, want %v", got, tt.hasBody)
			}
			if !strings.Contains(data, "X-Marker: yes") {
				t.Error("the original's headers are not in the NDR")
			}
			human := humanPart(t, ndr.Data)
			if got := strings.Contains(human, "only its headers are attached"); got != tt.note {
				t.Errorf("note about the cap: %v, want %v:\n%s", got, tt.note, human)
			}
		})
	}
}

// TestDelayWarningSentOnce: after DelayWarning one "delayed" DSN goes to
// the sender, naming only the recipients whose NOTIFY allows DELAY (or who
// gave none), with Will-Retry-Until = Received + lifetime; later attempts
// send no more, and DelayWarned is stored. A <> sender gets none.
func TestDelayWarningSentOnce(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if strings.HasSuffix(to, "@busy.invalid") {
			return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system resources"}
		}
		return nil
	}}, func(w *Worker) {
		w.DelayWarning = 150 * time.Millisecond
		w.Lifetime = time.Hour
		w.Backoff = retry.Backoff{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond}
	})
	id := h.putEnv(&queue.Envelope{From: "sender@src.invalid", Recipients: []queue.Recipient{
		{Addr: "plain@busy.invalid"},
		{Addr: "failonly@busy.invalid", Notify: "FAILURE"},
		{Addr: "delay@busy.invalid", Notify: "DELAY", ORCPT: "rfc822;Delay@busy.invalid"},
		{Addr: "never@busy.invalid", Notify: "NEVER"},
	}}, "Subject: slow\r\n\r\nx\r\n")
	null := h.putEnv(&queue.Envelope{From: "", Recipients: []queue.Recipient{{Addr: "bounce@busy.invalid"}}}, "Subject: a bounce\r\n\r\nx\r\n")

	h.waitSink(1)
	m, err := h.store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	// Several attempts more: still one warning.
	attempts := m.Recipients[0].Attempts
	deadline := time.Now().Add(10 * time.Second)
	for m.Recipients[0].Attempts < attempts+4 {
		if time.Now().After(deadline) {
			t.Fatalf("no further attempts after the warning: %+v", m.Recipients[0])
		}
		time.Sleep(5 * time.Millisecond)
		if m, err = h.store.Get(id); err != nil {
			t.Fatal(err)
		}
	}
	msgs := h.sink.Messages()
	if got := reportsAbout(msgs, id); len(got) != 1 || h.ndrs(id) != 1 {
		t.Fatalf("%d delay warnings at the sink, %d queued; want exactly one", len(got), h.ndrs(id))
	}
	if !m.DelayWarned {
		t.Error("DelayWarned is not stored")
	}
	nm, err := h.store.Get(null)
	if err != nil {
		t.Fatal(err)
	}
	if h.ndrs(null) != 0 || len(msgs) != 1 {
		t.Errorf("a <> sender got a report (%d queued, %d at the sink)", h.ndrs(null), len(msgs))
	}
	if nm.Recipients[0].Attempts < 2 {
		t.Errorf("the <> message was tried %d times", nm.Recipients[0].Attempts)
	}

	dsn, rep := ndrFor(t, msgs, id)
	if dsn.To[0] != "sender@src.invalid" || rep.header.Get("Subject") != "Delayed Mail (still being retried)" {
		t.Errorf("warning to %v, Subject %q", dsn.To, rep.header.Get("Subject"))
	}
	var finals []string
	until := m.Received.Add(time.Hour).Format(time.RFC1123Z)
	for _, r := range rep.recipients {
		finals = append(finals, r.Get("Final-Recipient"))
		if r.Get("Action") != "delayed" || r.Get("Status") != "4.3.1" || r.Get("Will-Retry-Until") != until {
			t.Errorf("block %v: want Action delayed, Status 4.3.1, Will-Retry-Until %s", r, until)
		}
	}
	if got := strings.Join(finals, " "); got != "rfc822;plain@busy.invalid rfc822;delay@busy.invalid" {
		t.Errorf("warned about %s; want plain (no NOTIFY) and delay (NOTIFY=DELAY) only", got)
	}
	if got := rep.recipients[1].Get("Original-Recipient"); got != "rfc822;Delay@busy.invalid" {
		t.Errorf("Original-Recipient = %q", got)
	}
	human := humanPart(t, dsn.Data)
	for _, want := range []string{"delivery delayed, still trying", explain.Summary(smtpreply.CodeTempResources), "Retry until:"} {
		if !strings.Contains(human, want) {
			t.Errorf("human part lacks %q:\n%s", want, human)
		}
	}
}

func TestDelayWarningOffWithZero(t *testing.T) {
	var tries atomic.Int32
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if to != "sender@src.invalid" {
			tries.Add(1)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}
		}
		return nil
	}}, func(w *Worker) {
		w.DelayWarning = 0
		w.Lifetime = time.Hour
		w.Backoff = retry.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}
	})
	id := h.put("sender@src.invalid", "x@busy.invalid")
	deadline := time.Now().Add(10 * time.Second)
	for tries.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatal("fewer than 5 attempts in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.ndrs(id); n != 0 {
		t.Errorf("%d reports with delay warnings off", n)
	}
}

// TestUndeliverableNDRIsCountedAndDropped: an NDR whose own delivery fails
// for good is logged, counted and dropped, never bounced (invariant 4).
func TestUndeliverableNDRIsCountedAndDropped(t *testing.T) {
	var mu sync.Mutex
	var froms []string
	var logs *logBuffer
	h := newHarness(t, sink.Options{OnRcpt: func(string) error { return errNoSuchUser },
		OnMail: func(from string) error {
			mu.Lock()
			froms = append(froms, from)
			mu.Unlock()
			return nil
		}}, func(w *Worker) { logs = captureLog(t, w) })
	id := h.put("sender@src.invalid", "gone@dst.invalid")
	deadline := time.Now().Add(10 * time.Second)
	for h.worker.DoubleBounces() < 1 || h.store.Messages() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("double bounces %d, %d messages queued", h.worker.DoubleBounces(), h.store.Messages())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.worker.DoubleBounces(); n != 1 {
		t.Errorf("DoubleBounces() = %d, want 1", n)
	}
	if h.ndrs(id) != 1 {
		t.Errorf("%d NDRs for the message, want 1", h.ndrs(id))
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(froms, ",") != "sender@src.invalid," {
		t.Errorf("MAIL FROMs %q: want the message, then its NDR from <>, and nothing more", froms)
	}
	evs := logs.Events("double bounce: a report from <> could not be delivered; dropped")
	if len(evs) != 1 || evs[0]["rcpt"] != "sender@src.invalid" || evs[0]["level"] != "error" {
		t.Errorf("double-bounce log lines: %v", evs)
	}
}

// TestNDRHeaderInjectionEndToEnd: an original whose Subject decodes to CRLF
// and whose ENVID and ORCPT hold CRLF (values straight from the queue) gives
// an NDR with no injected header and intact structure.
func TestNDRHeaderInjectionEndToEnd(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if strings.HasPrefix(to, "gone@") {
			return errNoSuchUser
		}
		return nil
	}}, nil)
	body := "Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.net?=\r\n" +
		"X-Long: " + strings.Repeat("y", 3000) + "\r\n\r\nbody\r\n"
	id := h.putEnv(&queue.Envelope{From: "sender@src.invalid", EnvID: "e1\r\nBcc: victim@example.net",
		Recipients: []queue.Recipient{{Addr: "gone@dst.invalid", ORCPT: "rfc822;gone@dst.invalid\r\nX-Injected: yes"}}}, body)
	h.waitGone(id)
	ndr, rep := ndrFor(t, h.waitSink(1), id)
	for _, k := range []string{"Bcc", "X-Injected"} {
		if _, ok := rep.header[k]; ok {
			t.Errorf("NDR header %s injected", k)
		}
		if _, ok := rep.perMessage[k]; ok {
			t.Errorf("per-message field %s injected", k)
		}
	}
	if len(rep.recipients) != 1 {
		t.Fatalf("%d recipient blocks", len(rep.recipients))
	}
	if got := rep.recipients[0].Get("Original-Recipient"); got != "rfc822;gone@dst.invalid X-Injected: yes" {
		t.Errorf("Original-Recipient = %q", got)
	}
	if !strings.Contains(humanPart(t, ndr.Data), "Subject: hi Bcc: victim@example.net") {
		t.Errorf("human part:\n%s", humanPart(t, ndr.Data))
	}
	for i, l := range strings.Split(string(ndr.Data), "\r\n") {
		if len(l) > 998 {
			t.Errorf("line %d is %d octets", i+1, len(l))
		}
	}
}
