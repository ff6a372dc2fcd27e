package retry

import (
	"fmt"
	"relayq/internal/smtpreply"
	"strings"
	"time"
)

// Stage is where in the SMTP conversation a reply was received.
type Stage int

const (
	StageConnect Stage = iota // dialing and the 220 greeting
	StageHello                // EHLO/HELO, STARTTLS, AUTH
	StageMail                 // MAIL FROM
	StageRcpt                 // RCPT TO
	StageData                 // the DATA command itself (354 expected)
	StageBody                 // the reply after the final "."
)

func (s Stage) String() string {
	switch s {
	case StageConnect:
		return "connect"
	case StageHello:
		return "hello"
	case StageMail:
		return "mail"
	case StageRcpt:
		return "rcpt"
	case StageData:
		return "data"
	case StageBody:
		return "body"
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// Action is what to do with a recipient after a reply.
type Action int

const (
	Deliver  Action = iota // 2xx: recipient delivered (before StageBody: go on)
	Defer                  // temporary: retry later with backoff
	RetryNow               // 421 4.3.2 / "too many connections": lower the destination cap, retry as soon as a slot frees, no attempt counted
	Split                  // 452/4.5.3 "too many recipients" at RCPT: not a failure, send the rest in a new transaction
	Bounce                 // permanent for this recipient: NDR
)

func (a Action) String() string {
	switch a {
	case Deliver:
		return "deliver"
	case Defer:
		return "defer"
	case RetryNow:
		return "retry-now"
	case Split:
		return "split"
	case Bounce:
		return "bounce"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Decision is the outcome of one reply.
//
// A Split returned for the first RCPT of a transaction cannot be acted on
// (there is nothing to split off); the caller treats it as Defer.
type Decision struct {
	Action    Action
	Status    smtpreply.EnhancedCode // the code to record and report (the reply's own if consistent, else derived)
	NextHost  bool                   // try the destination's next host before settling (421 at any stage, connection failures)
	CloseConn bool                   // 421: close the connection without QUIT
	LowerCap  bool                   // 421 4.3.2 or text saying too many connections
	LowerRate bool                   // a 4xx whose text says too many messages or a sending rate: lower the destination's rate
	Note      string                 // why, for the log, e.g. "basic code 552 and enhanced 4.3.1 disagree in class; basic code decides"
}

// Phrases that mark a 421 as a per-source connection limit (as an Exchange
// server that allows 20 connections per source sends it), matched
// case-insensitively. Exchange says "The maximum number of concurrent
// connections has exceeded a limit"; Postfix "too many connections from ...".
var tooManyConnsPhrases = []string{
	"too many connections",
	"too many concurrent connections",
	"maximum number of concurrent connections",
	"connection limit",
}

// Phrases that mark a temporary reply as a limit on the rate of messages
// (per minute, per hour) from us, matched case-insensitively: Postfix
// policy servers and ISPs ("421 4.7.0 … rate limited", "450 4.7.1 …
// sending rate exceeded"), Exchange Online ("432 4.3.2
// STOREDRV.ClientSubmit; sender thread limit exceeded"). A greylisting
// 450 4.7.1 says none of them.
var ratePhrases = []string{
	"rate limit",
	"rate-limit",
	"ratelimit",
	"sending rate",
	"message rate",
	"rate exceeded",
	"exceeded the rate",
	"too many messages",
	"sender thread limit",
}

// Phrases that mark a 552 after the data as a size refusal whatever its
// enhanced code (the next hop's size limit; Exchange, Postfix and Sendmail
// wordings).
var sizePhrases = []string{
	"message size exceeds",
	"size exceeds",
	"message too big",
	"message too large",
	"message is too big",
	"message is too large",
	"exceeds size limit",
	"exceeded the maximum size",
}

func containsAny(text string, phrases ...string) bool {
	text = strings.ToLower(text)
	for _, p := range phrases {
		if strings.Contains(text, p) {
			return true
		}
	}
	return false
}

// Classify decides what a reply received at stage means for the recipients it
// concerns; see the table in the package documentation. A nil reply (no
// error) is Deliver.
func Classify(stage Stage, r *smtpreply.Reply) Decision {
	if r == nil {
		return Decision{Action: Deliver, Status: smtpreply.CodeOK}
	}
	d := classify(stage, r)
	if r.ClassMismatch() {
		d.Note = joinNote(fmt.Sprintf("basic code %d and enhanced %s disagree in class; basic code decides",
			r.Code, r.Enhanced), d.Note)
	}
	return d
}

// TooManyRecipients reports whether r, the refusal of a RCPT, says that
// the transaction takes no more recipients: Classify's Split at StageRcpt
// (x.5.3 or "too many recipients", 4xx or 5xx, not 421; RFC 5321
// §4.5.3.1.10). The delivery side hands it to the SMTP client
// (smtpclient.Envelope.EndsRcpts), which then sends no further RCPT in
// the transaction; the recipients refused with r and those not sent go in
// a new one.
func TooManyRecipients(r *smtpreply.Reply) bool {
	return Classify(StageRcpt, r).Action == Split
}

func classify(stage Stage, r *smtpreply.Reply) Decision {
	st := r.Status()
	// Subject and detail, class ignored: X.5.3 is "too many recipients"
	// whatever class the peer put in front (RFC 3463 §3.6).
	tooManyRcpts := stage == StageRcpt &&
		(st[1] == 5 && st[2] == 3 || containsAny(r.Text, "too many recipients"))

	switch {
	case r.Code >= 200 && r.Code < 300:
		return Decision{Action: Deliver, Status: st}

	case r.Code == 421:
		// RFC 5321 §3.8: the server is closing the channel; QUIT would go
		// nowhere. Another host of the destination may take the message.
		d := Decision{Action: Defer, Status: st, CloseConn: true, NextHost: true,
			Note: "421: service closing the channel"}
		switch {
		case st == smtpreply.CodeTooManyConns || containsAny(r.Text, tooManyConnsPhrases...):
			d.Action, d.LowerCap = RetryNow, true
			d.Note = "421: too many connections; lower the destination cap and retry when a slot frees"
		case containsAny(r.Text, ratePhrases...):
			d = rateLimited(st)
			d.CloseConn = true
		}
		return d

	case tooManyRcpts && (r.Temporary() || r.Permanent()):
		// RFC 5321 §4.5.3.1.10 and RFC 3463 X.5.3: the recipients so far
		// stand, the rest go in a new transaction. This is no failure.
		return Decision{Action: Split, Status: smtpreply.EnhancedCode{4, 5, 3},
			Note: "too many recipients in one transaction; send the rest in a new one"}

	case r.Temporary() && containsAny(r.Text, ratePhrases...):
		return rateLimited(st)

	case r.Temporary():
		d := Decision{Action: Defer, Status: st}
		if r.Local && (st == smtpreply.CodeNoAnswer || st == smtpreply.CodeConnDropped) {
			d.NextHost = true
			d.Note = "connection failure; try the next host"
		}
		return d

	case stage == StageHello && authRefused(r):
		// RFC 4954 §6: AUTH refused the relay's own credentials (a wrong
		// password, an expired or revoked OAuth2 token). No message is at
		// fault: all wait for the operator's fix rather than bounce.
		return Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, st[1], st[2]},
			Note: "the next hop refused the relay's credentials; the mail waits for them to be fixed"}

	case r.Code == 552 && stage == StageRcpt:
		// RFC 5321 §4.5.3.1.10: old servers used 552 for "too many
		// recipients"; at RCPT it is to be treated as temporary.
		return Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, st[1], st[2]},
			Note: "552 at RCPT is temporary (RFC 5321 §4.5.3.1.10)"}

	case r.Code == 552 && stage == StageBody && (st == smtpreply.CodeTooBig || st == smtpreply.CodeMailboxFull):
		return Decision{Action: Bounce, Status: st,
			Note: "the remote's message size limit is exceeded"}

	case r.Code == 552 && stage == StageBody && containsAny(r.Text, sizePhrases...):
		// Seed 000: "552 4.3.1 Message size exceeds fixed maximum message
		// size". The basic code makes it permanent; the text, not the
		// mismatched enhanced code, says what it is about.
		return Decision{Action: Bounce, Status: smtpreply.CodeTooBig,
			Note: "the remote's message size limit is exceeded (said in the text; reported as 5.3.4)"}

	case r.Permanent():
		return Decision{Action: Bounce, Status: st}
	}
	// 1xx, 3xx or garbage where a final reply was due: the dialogue is out
	// of step, so nothing more can be said on this connection.
	return Decision{Action: Defer, Status: smtpreply.EnhancedCode{4, 5, 0}, CloseConn: true,
		Note: fmt.Sprintf("unexpected reply code %d at %s", r.Code, stage)}
}

// rateLimited is the decision for a reply saying we send too many
// messages: the destination's rate is lowered and the message waits for it
// in the destination's line; no attempt is counted, no backoff is taken,
// and no other host is tried (the rate is the destination's).
func rateLimited(st smtpreply.EnhancedCode) Decision {
	return Decision{Action: RetryNow, Status: st, LowerRate: true,
		Note: "too many messages: lower the destination's rate and send when it allows"}
}

// authRefused reports whether r is a permanent refusal of AUTH (RFC 4954
// §6: 530, 534, 535, 538, or an x.7.8 "credentials invalid").
func authRefused(r *smtpreply.Reply) bool {
	switch {
	case !r.Permanent():
		return false
	case r.Code == 530, r.Code == 534, r.Code == 535, r.Code == 538:
		return true
	}
	return r.Enhanced[1] == 7 && r.Enhanced[2] == 8
}

func joinNote(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

// Expired reports whether a message received at received has outlived
// lifetime at now (then: bounce 4.4.7, Action failed). A lifetime <= 0 never
// expires: a zero from a config typo must not bounce the whole queue.
func Expired(received, now time.Time, lifetime time.Duration) bool {
	// Sub saturates instead of overflowing, unlike received.Add(lifetime).
	return lifetime > 0 && now.Sub(received) > lifetime
}
