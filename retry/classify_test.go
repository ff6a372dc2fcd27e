package retry

import (
	"relayq/internal/smtpreply"
	"strings"
	"testing"
	"time"
)

// TestClassify walks the table of doc.go (docs/design.md "Reply classification")
// row by row.
func TestClassify(t *testing.T) {
	tests := []struct {
		name  string
		stage Stage
		reply string // parsed with smtpreply.ParseReply
		local bool
		want  Decision // without Note
		note  string   // a substring the Note must contain
	}{
		// 2xx
		{"250 after the body delivers", StageBody, "250 2.0.0 queued as 1234", false,
			Decision{Action: Deliver, Status: smtpreply.CodeOK}, ""},
		{"251 at RCPT goes on", StageRcpt, "251 user not local; will forward", false,
			Decision{Action: Deliver, Status: smtpreply.CodeOK}, ""},

		// 421 at any stage
		{"421 at greeting closes and tries next host", StageConnect, "421 mx.example closing", false,
			Decision{Action: Defer, Status: smtpreply.CodeTempGeneric, CloseConn: true, NextHost: true}, "421"},
		{"421 4.4.2 at MAIL defers", StageMail, "421 4.4.2 timeout", false,
			Decision{Action: Defer, Status: smtpreply.CodeConnDropped, CloseConn: true, NextHost: true}, "421"},
		{"421 4.3.2 lowers the cap and retries now", StageConnect,
			"421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTooManyConns, CloseConn: true, NextHost: true, LowerCap: true}, "too many connections"},
		{"421 4.3.2 without text retries now", StageHello, "421 4.3.2", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTooManyConns, CloseConn: true, NextHost: true, LowerCap: true}, ""},
		{"421 too many connections text without enhanced", StageConnect, "421 Too many connections from your IP", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTempGeneric, CloseConn: true, NextHost: true, LowerCap: true}, ""},
		{"421 maximum number of concurrent connections text", StageRcpt, "421 4.7.0 MAXIMUM NUMBER OF CONCURRENT CONNECTIONS reached", false,
			Decision{Action: RetryNow, Status: smtpreply.EnhancedCode{4, 7, 0}, CloseConn: true, NextHost: true, LowerCap: true}, ""},
		{"421 connection limit text", StageBody, "421 4.7.0 connection limit exceeded", false,
			Decision{Action: RetryNow, Status: smtpreply.EnhancedCode{4, 7, 0}, CloseConn: true, NextHost: true, LowerCap: true}, ""},
		{"421 5.3.2 mismatch still lowers the cap", StageConnect, "421 5.3.2 busy", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTooManyConns, CloseConn: true, NextHost: true, LowerCap: true}, "basic code decides"},

		// a rate of messages
		{"421 4.7.0 rate limited lowers the rate", StageMail, "421 4.7.0 mx.example: rate limited, try later", false,
			Decision{Action: RetryNow, Status: smtpreply.EnhancedCode{4, 7, 0}, CloseConn: true, LowerRate: true}, "rate"},
		{"450 4.7.1 sending rate at RCPT lowers the rate", StageRcpt, "450 4.7.1 <b@example.org>: sending rate exceeded", false,
			Decision{Action: RetryNow, Status: smtpreply.EnhancedCode{4, 7, 1}, LowerRate: true}, "rate"},
		{"Exchange 432 4.3.2 sender thread limit lowers the rate", StageBody, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTooManyConns, LowerRate: true}, "rate"},
		{"452 too many messages lowers the rate", StageMail, "452 4.3.1 Too many messages in the last hour", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTempResources, LowerRate: true}, ""},
		{"421 4.3.2 naming a rate still lowers the cap", StageConnect, "421 4.3.2 too many connections (rate limit)", false,
			Decision{Action: RetryNow, Status: smtpreply.CodeTooManyConns, CloseConn: true, NextHost: true, LowerCap: true}, ""},
		{"550 rate limit is permanent, not paced", StageMail, "550 5.7.1 rate limit exceeded permanently", false,
			Decision{Action: Bounce, Status: smtpreply.EnhancedCode{5, 7, 1}}, ""},
		{"450 4.7.1 greylisting keeps its backoff", StageRcpt, "450 4.7.1 Greylisted, please try again later", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 1}}, ""},

		// too many recipients at RCPT
		{"452 4.5.3 at RCPT splits", StageRcpt, "452 4.5.3 Too many recipients", false,
			Decision{Action: Split, Status: smtpreply.CodeTooManyRcpts}, "new"},
		{"452 too many recipients text at RCPT splits", StageRcpt, "452 Too many recipients", false,
			Decision{Action: Split, Status: smtpreply.CodeTooManyRcpts}, ""},
		{"451 4.5.3 at RCPT splits", StageRcpt, "451 4.5.3 slow down", false,
			Decision{Action: Split, Status: smtpreply.CodeTooManyRcpts}, ""},
		{"552 5.5.3 at RCPT splits (RFC 3463 X.5.3)", StageRcpt, "552 5.5.3 too many recipients", false,
			Decision{Action: Split, Status: smtpreply.CodeTooManyRcpts}, ""},
		{"550 5.5.3 at RCPT splits", StageRcpt, "550 5.5.3 Too many recipients", false,
			Decision{Action: Split, Status: smtpreply.CodeTooManyRcpts}, ""},
		{"452 4.5.3 after the body is a plain defer", StageBody, "452 4.5.3 Too many recipients", false,
			Decision{Action: Defer, Status: smtpreply.CodeTooManyRcpts}, ""},

		// other 4xx
		{"452 4.3.1 at RCPT defers (back pressure at the next hop)", StageRcpt, "452 4.3.1 Insufficient system resources", false,
			Decision{Action: Defer, Status: smtpreply.CodeTempResources}, ""},
		{"451 after the body defers", StageBody, "451 4.3.0 try again", false,
			Decision{Action: Defer, Status: smtpreply.CodeTempLocal}, ""},
		{"450 greylisting at RCPT defers", StageRcpt, "450 4.2.0 greylisted", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 2, 0}}, ""},
		{"454 TLS not available at hello defers", StageHello, "454 4.7.0 TLS not available", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 0}}, ""},
		{"remote 451 4.4.1 does not go to the next host", StageBody, "451 4.4.1 upstream down", false,
			Decision{Action: Defer, Status: smtpreply.CodeNoAnswer}, ""},

		// 552 at RCPT is temporary
		{"552 at RCPT defers (RFC 5321 4.5.3.1.10)", StageRcpt, "552 Requested mail action aborted: exceeded storage allocation", false,
			Decision{Action: Defer, Status: smtpreply.CodeTempGeneric}, "4.5.3.1.10"},
		{"552 5.2.2 at RCPT defers as 4.2.2", StageRcpt, "552 5.2.2 mailbox full", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 2, 2}}, "4.5.3.1.10"},

		// 552 size after the body
		{"552 5.3.4 after the body bounces (the next hop's size limit)", StageBody, "552 5.3.4 Message size exceeds fixed maximum message size", false,
			Decision{Action: Bounce, Status: smtpreply.CodeTooBig}, "size"},
		{"552 5.2.3 after the body bounces", StageBody, "552 5.2.3 message too big", false,
			Decision{Action: Bounce, Status: smtpreply.CodeMailboxFull}, "size"},
		{"552 4.3.1 size text after the body bounces as 5.3.4 (the next hop's size limit)", StageBody, "552 4.3.1 Message size exceeds fixed maximum message size", false,
			Decision{Action: Bounce, Status: smtpreply.CodeTooBig}, "basic code 552 and enhanced 4.3.1 disagree in class; basic code decides; the remote's message size limit"},
		{"552 size text without enhanced after the body bounces as 5.3.4", StageBody, "552 Message too large", false,
			Decision{Action: Bounce, Status: smtpreply.CodeTooBig}, "size"},
		{"552 size text at RCPT stays temporary", StageRcpt, "552 4.3.1 Message size exceeds fixed maximum message size", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 3, 1}}, "4.5.3.1.10"},
		{"552 5.3.4 at MAIL (SIZE) bounces", StageMail, "552 5.3.4 too big", false,
			Decision{Action: Bounce, Status: smtpreply.CodeTooBig}, ""},

		// other 5xx
		{"550 5.1.1 at RCPT bounces", StageRcpt, "550 5.1.1 no such user", false,
			Decision{Action: Bounce, Status: smtpreply.CodeBadMailbox}, ""},
		{"554 at greeting bounces", StageConnect, "554 go away", false,
			Decision{Action: Bounce, Status: smtpreply.CodePermGeneric}, ""},
		{"530 AUTH required at MAIL bounces", StageMail, "530 5.7.0 Authentication required", false,
			Decision{Action: Bounce, Status: smtpreply.EnhancedCode{5, 7, 0}}, ""},
		{"535 to AUTH (credentials, a refused OAuth2 token) defers", StageHello, "535 5.7.8 Username and Password not accepted", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 8}}, "credentials"},
		{"535 5.7.3 to AUTH (Microsoft 365) defers", StageHello, "535 5.7.3 Authentication unsuccessful", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 3}}, "credentials"},
		{"534 mechanism too weak at AUTH defers", StageHello, "534 5.7.9 Authentication mechanism is too weak", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 9}}, "credentials"},
		{"550 at EHLO still bounces", StageHello, "550 5.7.1 go away", false,
			Decision{Action: Bounce, Status: smtpreply.EnhancedCode{5, 7, 1}}, ""},
		{"554 5.4.6 loop after body bounces", StageBody, "554 5.4.6 too many hops", false,
			Decision{Action: Bounce, Status: smtpreply.CodeLoop}, ""},

		// class mismatch: basic decides
		{"552 4.3.1 after body bounces as 5.3.1", StageBody, "552 4.3.1 disk full", false,
			Decision{Action: Bounce, Status: smtpreply.EnhancedCode{5, 3, 1}}, "basic code 552 and enhanced 4.3.1 disagree in class; basic code decides"},
		{"451 5.7.1 defers as 4.7.1", StageRcpt, "451 5.7.1 try later", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 7, 1}}, "basic code decides"},

		// local verdicts
		{"local 4.4.1 connection refused: next host", StageConnect, "451 4.4.1 connection refused", true,
			Decision{Action: Defer, Status: smtpreply.CodeNoAnswer, NextHost: true}, "next host"},
		{"local 4.4.2 dropped: next host", StageBody, "451 4.4.2 connection closed by remote", true,
			Decision{Action: Defer, Status: smtpreply.CodeConnDropped, NextHost: true}, ""},
		{"local 4.4.3 DNS temporary: defer only", StageConnect, "451 4.4.3 DNS lookup failed", true,
			Decision{Action: Defer, Status: smtpreply.CodeDNSTemp}, ""},
		{"local 5.1.2 no such domain bounces", StageConnect, "550 5.1.2 domain not found", true,
			Decision{Action: Bounce, Status: smtpreply.CodeBadDomain}, ""},
		{"local 5.1.10 null MX bounces", StageConnect, "550 5.1.10 null MX", true,
			Decision{Action: Bounce, Status: smtpreply.CodeNullMX}, ""},

		// out of step
		{"354 at RCPT is out of step", StageRcpt, "354 go ahead", false,
			Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 5, 0}, CloseConn: true}, "unexpected reply code 354 at rcpt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := smtpreply.ParseReply(tt.reply)
			if err != nil {
				t.Fatal(err)
			}
			r.Local = tt.local
			got := Classify(tt.stage, r)
			note := got.Note
			got.Note = ""
			if got != tt.want {
				t.Errorf("Classify(%v, %q) = %+v, want %+v", tt.stage, tt.reply, got, tt.want)
			}
			if !strings.Contains(note, tt.note) {
				t.Errorf("Note = %q, want it to contain %q", note, tt.note)
			}
			if !r.ClassMismatch() && strings.Contains(note, "disagree") {
				t.Errorf("Note = %q speaks of a mismatch that is not there", note)
			}
		})
	}
}

func TestClassifyNilIsDeliver(t *testing.T) {
	if got := Classify(StageBody, nil); got != (Decision{Action: Deliver, Status: smtpreply.CodeOK}) {
		t.Errorf("Classify(nil) = %+v", got)
	}
}

func TestExpired(t *testing.T) {
	received := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const lifetime = 120 * time.Hour
	tests := []struct {
		name     string
		received time.Time
		now      time.Time
		lifetime time.Duration
		want     bool
	}{
		{"fresh", received, received.Add(time.Hour), lifetime, false},
		{"exactly at lifetime is not yet expired", received, received.Add(lifetime), lifetime, false},
		{"just past lifetime", received, received.Add(lifetime + time.Nanosecond), lifetime, true},
		{"clock before received", received, received.Add(-time.Hour), lifetime, false},
		{"zero lifetime never expires", received, received.Add(1000 * time.Hour), 0, false},
		{"negative lifetime never expires", received, received.Add(1000 * time.Hour), -time.Hour, false},
		{"zero received time is far past any lifetime", time.Time{}, received, lifetime, true},
		{"huge lifetime does not overflow", received, received.Add(time.Hour), time.Duration(1<<63 - 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Expired(tt.received, tt.now, tt.lifetime); got != tt.want {
				t.Errorf("Expired(%v, %v, %v) = %v, want %v", tt.received, tt.now, tt.lifetime, got, tt.want)
			}
		})
	}
}

func TestStageAndActionNames(t *testing.T) {
	stages := map[Stage]string{StageConnect: "connect", StageHello: "hello", StageMail: "mail",
		StageRcpt: "rcpt", StageData: "data", StageBody: "body", Stage(42): "stage(42)"}
	for s, want := range stages {
		if s.String() != want {
			t.Errorf("Stage(%d).String() = %q, want %q", int(s), s.String(), want)
		}
	}
	actions := map[Action]string{Deliver: "deliver", Defer: "defer", RetryNow: "retry-now",
		Split: "split", Bounce: "bounce", Action(9): "action(9)"}
	for a, want := range actions {
		if a.String() != want {
			t.Errorf("Action(%d).String() = %q, want %q", int(a), a.String(), want)
		}
	}
}

// TestTooManyRecipientsEndsOnlyOnASplitAtRCPT: the refusals after which
// the client sends no further RCPT are exactly Classify's Split at RCPT.
func TestTooManyRecipientsEndsOnlyOnASplitAtRCPT(t *testing.T) {
	for _, c := range []struct {
		reply string
		want  bool
	}{
		{"452 4.5.3 Too many recipients", true},
		{"452 Too many recipients", true}, // the text alone
		{"451 4.5.3 slow down", true},     // the code alone
		{"552 5.5.3 too many recipients", true},
		{"550 5.5.3 Too many recipients", true},
		{"452 4.3.1 Insufficient system resources", false},
		{"550 5.1.1 no such user", false},
		{"552 5.2.2 mailbox full", false},
		{"450 4.7.1 sending rate exceeded", false},
		// 421 closes the channel (RFC 5321 §3.8): never a split.
		{"421 4.5.3 too many recipients, closing", false},
		{"250 2.1.5 ok", false},
	} {
		r, err := smtpreply.ParseReply(c.reply)
		if err != nil {
			t.Fatalf("ParseReply(%q): %v", c.reply, err)
		}
		if got := TooManyRecipients(r); got != c.want {
			t.Errorf("TooManyRecipients(%q) = %v, want %v", c.reply, got, c.want)
		}
	}
}
