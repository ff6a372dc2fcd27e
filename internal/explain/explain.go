package explain

import (
	"fmt"
	"strings"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// info is what the table knows of one subject.detail pair.
type info struct {
	name   string   // the registered name, e.g. "Bad destination mailbox address"
	means  string   // what it means, in our words, lower case, no final period
	hint   string   // one sentence for NDRs: what the sender can do
	causes []string // likely causes, most common first
	fixes  []string // what the sender or an operator can do
}

// subjectInfo describes an RFC 3463 §3 subject (X.n.XXX).
type subjectInfo struct {
	name  string // "Addressing status"
	means string
	hint  string // fallback hint for codes the table does not know
}

var subjects = map[int]subjectInfo{
	0: {"Other or undefined status", "the server gave no category for the problem",
		"The receiving server gave no further detail; the reply text may say more."},
	1: {"Addressing status", "a problem with the recipient's or the sender's address",
		"There is a problem with an address; check the recipient's address for typos."},
	2: {"Mailbox status", "a problem with the recipient's mailbox, which does exist",
		"There is a problem with the recipient's mailbox; the recipient may need to fix it."},
	3: {"Mail system status", "a problem with the receiving mail system as a whole",
		"The receiving mail system has a problem; its operators need to fix it."},
	4: {"Network and routing status", "a problem on the way to the destination: network, DNS or routing",
		"There is a network or routing problem between the mail servers."},
	5: {"Mail delivery protocol status", "the SMTP dialogue between the mail servers went wrong",
		"The mail servers did not understand each other (an SMTP protocol problem)."},
	6: {"Message content or media status", "a problem with the content or the encoding of the message",
		"There is a problem with the content or encoding of the message."},
	7: {"Security or policy status", "the message was refused for security or policy reasons",
		"The message was refused by policy; ask the receiving side's postmaster."},
}

// details is the whole table, merged from the per-subject files.
var details = mergeCodes(addressCodes, systemCodes, protocolCodes)

func mergeCodes(parts ...map[[2]int]info) map[[2]int]info {
	all := map[[2]int]info{}
	for _, p := range parts {
		for k, v := range p {
			if _, dup := all[k]; dup {
				panic(fmt.Sprintf("explain: status code X.%d.%d defined twice", k[0], k[1]))
			}
			all[k] = v
		}
	}
	return all
}

var classNames = map[int]string{
	2: "success",
	4: "persistent transient failure: temporary, the sending server tries again",
	5: "permanent failure: the message is not retried as it is",
}

// Explanation is what the knowledge base says about one enhanced code.
type Explanation struct {
	Code smtpreply.EnhancedCode
	// Summary is one line: the code, its name and what it means, e.g.
	// "5.1.1 Bad destination mailbox address: the recipient does not exist
	// at the destination". NDRs carry it; `relayq explain` prints it first.
	Summary string
	Class   string // "permanent failure: …"
	Subject string // "Addressing status: …"
	Hint    string // one sentence for NDRs: what the sender can do
	Causes  []string
	Fixes   []string
	// Known is false for a code the table does not list: Summary, Subject
	// and Hint then come from its class and subject.
	Known bool
}

// Lookup looks code up. It never fails: an unknown detail falls back to
// its subject, an unknown subject to its class.
func Lookup(code smtpreply.EnhancedCode) Explanation {
	e := Explanation{Code: code, Class: classNames[code.Class()]}
	sub, subOK := subjects[code[1]]
	if subOK {
		e.Subject = sub.name + ": " + sub.means
	}
	in, ok := details[[2]int{code[1], code[2]}]
	switch {
	case ok && code.Class() == 2:
		e.Summary = fmt.Sprintf("%s Success: %s", code, strings.ToLower(in.name[:1])+in.name[1:])
		e.Known = true
	case ok:
		e.Summary = fmt.Sprintf("%s %s: %s", code, in.name, in.means)
		e.Hint, e.Causes, e.Fixes, e.Known = in.hint, in.causes, in.fixes, true
	case subOK:
		e.Summary = fmt.Sprintf("%s Unregistered %s code: %s", code, strings.ToLower(sub.name), sub.means)
		e.Hint = sub.hint
		if code.Class() == 2 {
			e.Hint = ""
		}
	default:
		e.Summary = fmt.Sprintf("%s Unregistered status code: class %d, %s", code, code.Class(), e.Class)
	}
	return e
}

// Summary is Lookup(code).Summary, "" for the zero code.
func Summary(code smtpreply.EnhancedCode) string {
	if code.IsZero() {
		return ""
	}
	return Lookup(code).Summary
}

// Hint returns a one-sentence "what you can do" for an NDR, "" when there is
// nothing useful to say (the zero code, success).
func Hint(code smtpreply.EnhancedCode) string {
	if code.IsZero() || code.Class() == 2 {
		return ""
	}
	return Lookup(code).Hint
}

// Codes lists every subject.detail pair the table knows, in order.
func Codes() [][2]int {
	var out [][2]int
	for s := 0; s <= 7; s++ {
		for d := 0; d < 100; d++ {
			if _, ok := details[[2]int{s, d}]; ok {
				out = append(out, [2]int{s, d})
			}
		}
	}
	return out
}

// basicCodes names the basic reply codes (RFC 5321 §4.2.2 and §4.2.3,
// RFC 4954 §6, RFC 7504, RFC 3030) for `relayq explain "421 …"`.
var basicCodes = map[int]string{
	211: "system status", 214: "help message",
	220: "service ready", 221: "service closing the channel",
	235: "authentication succeeded", 250: "requested action completed",
	251: "user not local; will forward", 252: "cannot verify the user, but will try delivery",
	334: "authentication challenge", 354: "start mail input",
	421: "service not available, closing the channel",
	450: "mailbox unavailable (busy, or blocked for now)",
	451: "local error in processing",
	452: "insufficient system storage",
	454: "temporary authentication failure",
	455: "server unable to accommodate parameters",
	500: "syntax error, command unrecognised",
	501: "syntax error in parameters or arguments",
	502: "command not implemented",
	503: "bad sequence of commands",
	504: "command parameter not implemented",
	521: "host does not accept mail",
	530: "authentication required",
	534: "authentication mechanism is too weak",
	535: "authentication credentials invalid",
	550: "mailbox unavailable (not found, no access, or refused by policy)",
	551: "user not local",
	552: "exceeded storage allocation",
	553: "mailbox name not allowed",
	554: "transaction failed",
	555: "MAIL FROM/RCPT TO parameters not recognised or not implemented",
	556: "domain does not accept mail",
}

// treatment says what relayq does with a reply of code r.Code, in one line
// (docs/design.md "Reply classification"; the table in doc.go).
func treatment(r *smtpreply.Reply) string {
	st := r.Status()
	switch {
	case r.Code >= 200 && r.Code < 300:
		return "the recipient counts as delivered once this is the reply to the final \".\""
	case retry.Classify(retry.StageConnect, r).LowerCap: // a 421 saying "too many connections"
		return "closes the connection; with other connections to the destination open, lowers its connection cap and sends again as soon as a slot frees (no attempt counted, no backoff), else tries the next host or retries later"
	case retry.Classify(retry.StageMail, r).LowerRate: // a 4xx saying "rate limited", "too many messages"
		return "lowers the destination's message rate (learned, raised again slowly) and sends the message again when that rate allows (no attempt counted, no backoff)"
	case r.Code == 421:
		return "closes the connection without QUIT and tries the destination's next host, else retries later with backoff"
	case st[1] == 5 && st[2] == 3:
		return "at RCPT: not a failure, the remaining recipients go in a new transaction; elsewhere as any other " + fmt.Sprint(r.Code/100) + "xx"
	case r.Temporary():
		return "defers and retries with backoff (retry.min_backoff … retry.max_backoff) until retry.max_queue_lifetime, then bounces with 4.4.7"
	case r.Code == 552:
		return "at RCPT: temporary, retried (RFC 5321 §4.5.3.1.10); after the message data: bounced at once with an NDR"
	case r.Permanent() && retry.Classify(retry.StageHello, r).Action == retry.Defer:
		// A 530, 534, 535 or 538 (or x.7.8) to AUTH refuses the relay's
		// own credentials or OAuth2 token (retry.Unreached; the README:
		// "A failing token defers the mail with the server's reply").
		return "to AUTH (the smart host refused the relay's credentials or OAuth2 token): defers the mail through that smart host or route, recorded as " +
			retry.Unreached(r).Status.String() + ", until the operators fix them; never bounced. At MAIL or RCPT: bounces the recipient"
	case r.Permanent():
		return "bounces the recipient at once and sends an NDR to the sender (none for a <> sender or NOTIFY=NEVER)"
	}
	return "out of step: closes the connection and retries later"
}

// Text is the text of `relayq explain ARG`: ARG is an enhanced code
// ("4.3.2"), a basic and an enhanced code ("421 4.3.2") or a whole reply
// line ("452 4.3.1 Insufficient system resources"). The first line is the
// Summary; then the class, the reply and what relayq does with it (when a
// basic code was given), the likely causes and what to do. A reply without
// an enhanced code is explained by the generic code of its class.
func Text(arg string) (string, error) {
	arg = strings.TrimSpace(arg)
	r, err := smtpreply.ParseReply(arg)
	if err != nil {
		return "", fmt.Errorf("%q: want an enhanced status code (4.4.7), a reply code and one (421 4.3.2) or a reply line", arg)
	}
	_, bareErr := smtpreply.ParseEnhanced(strings.Fields(arg)[0]) // arg parsed, so not blank
	bare := bareErr == nil
	code, why := r.Status(), ""
	if bare {
		code = r.Enhanced
	} else if d := retry.Classify(retry.StageBody, r); d.Action == retry.Bounce && d.Status != code {
		// "552 4.3.1 Message size exceeds …": what the worker reports.
		code, why = d.Status, fmt.Sprintf("the text says the message is too big, so relayq reports %s", d.Status)
	}
	e := Lookup(code)

	var b strings.Builder
	b.WriteString(e.Summary + "\n")
	line := func(label, value string) {
		if value != "" {
			fmt.Fprintf(&b, "%-9s %s\n", label+":", value)
		}
	}
	line("Class", fmt.Sprintf("%d.x.x, %s", code.Class(), e.Class))
	line("Subject", fmt.Sprintf("x.%d.x, %s", code[1], e.Subject))
	if !bare {
		line("Reply", smtpreply.Sanitize(r.Error()))
		if name := basicCodes[r.Code]; name != "" {
			line("Code", fmt.Sprintf("%d: %s", r.Code, name))
		}
		if r.ClassMismatch() {
			line("Note", fmt.Sprintf("basic code %d and enhanced code %s disagree in class; the basic code decides, so this is %s",
				r.Code, r.Enhanced, r.Status()))
		}
		line("Note", why)
		line("relayq", treatment(r))
	}
	list := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		b.WriteString("\n" + title + ":\n")
		for _, it := range items {
			b.WriteString("  - " + it + "\n")
		}
	}
	list("Likely causes", e.Causes)
	fixes := e.Fixes
	if len(fixes) == 0 && e.Hint != "" {
		fixes = []string{e.Hint}
	}
	list("What you can do", fixes)
	if !e.Known {
		fmt.Fprintf(&b, "\n%s is not in relayq's table; the text above comes from its class and subject (RFC 3463).\n", code)
	}
	return b.String(), nil
}
