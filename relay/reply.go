package relay

import (
	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
	"relayq/pressure"
)

// Replies relay sends. Text sent to the client is short and generic; the
// details go to the log (STYLE.md).
var (
	// RFC 1870 §6.2: a SIZE= or a body above the limit is refused with 552.
	replyTooBig = &smtpreply.Reply{Code: 552, Enhanced: smtpreply.CodeTooBig,
		Text: "Message size exceeds fixed maximum message size"}
	// RFC 5321 §6.3: a loop shows as too many Received headers.
	replyLoop = &smtpreply.Reply{Code: 554, Enhanced: smtpreply.CodeLoop,
		Text: "Too many hops, mail loop detected"}
	// RFC 5321 §4.5.3.1.10: too many recipients is 452, the client sends the
	// rest in another transaction.
	replyTooManyRcpts = &smtpreply.Reply{Code: 452, Enhanced: smtpreply.CodeTooManyRcpts,
		Text: "Too many recipients"}
	replyRelayDenied = &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeRelayDenied,
		Text: "Relaying denied"}
	replyBadAddress = &smtpreply.Reply{Code: 501, Enhanced: smtpreply.CodeBadSyntax,
		Text: "Bad address syntax"}
	// The queue could not commit: temporary, the client keeps the message.
	replyStoreFailed = &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempLocal,
		Text: "Local error in processing, try again later"}
	// The client stalled or went away in the middle of the body.
	replyStalled = &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeConnDropped,
		Text: "Timeout or connection error while reading message data"}
	// The client ended a BDAT transfer with RSET or EHLO (RFC 3030 §3):
	// nothing is queued, go-smtp drops this reply and the session goes on.
	replyDataReset = &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempLocal,
		Text: "Message transfer aborted by the client"}
	// RFC 5321 §4.5.3.1.6 limits a text line; go-smtp allows twice that.
	replyLineTooLong = &smtpreply.Reply{Code: 554, Enhanced: smtpreply.CodeSyntaxError,
		Text: "Line too long"}
	// RFC 3463 X.3.2 "system not accepting network messages" names an
	// imminent shutdown as its example.
	replyShuttingDown = &smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns,
		Text: "Service shutting down, try again later"}
	// RFC 5321 §4.1.4: MAIL inside a transaction is a bad sequence.
	replyNestedMail = &smtpreply.Reply{Code: 503, Enhanced: codeBadSequence,
		Text: "Nested MAIL command"}
	// Routing in the local part (% hack, bang path, an @ inside quotes) is
	// refused from everyone: what is queued is what gets delivered, and no
	// next hop may read it as a route elsewhere (RFC 5321 §3.6.1, §2.3.11).
	replyRouting = &smtpreply.Reply{Code: 501, Enhanced: smtpreply.CodeBadSyntax,
		Text: "Routing characters (% ! @) in the local part are not accepted"}
	// RFC 5321 §2.3.8: lines end in CRLF only ([limits] bare_line_endings
	// = "reject"). RFC 3463 X.5.2 is a syntax error.
	replyBareLineEnding = &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeSyntaxError,
		Text: "Bare CR or LF in message data, use CRLF line endings"}

	// Connection caps, in place of the greeting (RFC 5321 §3.1; a per-source limit).
	replyTooManyConns = &smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns,
		Text: "Too many connections, try again later"}
	replyTooManyConnsFrom = &smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns,
		Text: "Too many connections from your address, try again later"}

	// AUTH (RFC 4954 §4, §6).
	replyAuthRequired = &smtpreply.Reply{Code: 530, Enhanced: codeAuthRequired,
		Text: "Authentication required"}
	replyAuthInvalid = &smtpreply.Reply{Code: 535, Enhanced: codeAuthInvalid,
		Text: "Authentication credentials invalid"}
	replyAuthTooMany = &smtpreply.Reply{Code: 421, Enhanced: codeAuthTemp,
		Text: "Too many failed authentication attempts, closing connection"}
	replyAuthLimited = &smtpreply.Reply{Code: 454, Enhanced: codeAuthTemp,
		Text: "Too many failed authentication attempts, try again later"}
	replyAuthTemp = &smtpreply.Reply{Code: 454, Enhanced: codeAuthTemp,
		Text: "Temporary authentication failure"}
	replyAuthMalformed = &smtpreply.Reply{Code: 501, Enhanced: smtpreply.CodeSyntaxError,
		Text: "Malformed authentication response"}
	replyAuthUnknownMech = &smtpreply.Reply{Code: 504, Enhanced: codeBadParam,
		Text: "Unrecognized authentication type"}
	replyAuthInTxn = &smtpreply.Reply{Code: 503, Enhanced: codeBadSequence,
		Text: "AUTH not permitted during a mail transaction"}
	replyAuthNeedsTLS = &smtpreply.Reply{Code: 523, Enhanced: codeEncryptionNeeded,
		Text: "TLS is required"}
)

// Enhanced codes of RFC 3463 and RFC 4954 that retry has no name for.
var (
	codeBadSequence      = smtpreply.EnhancedCode{5, 5, 1}  // invalid command (sequence)
	codeBadParam         = smtpreply.EnhancedCode{5, 5, 4}  // invalid command arguments
	codeAuthRequired     = smtpreply.EnhancedCode{5, 7, 0}  // RFC 4954 §6: 530 5.7.0
	codeAuthInvalid      = smtpreply.EnhancedCode{5, 7, 8}  // RFC 4954 §6: 535 5.7.8
	codeAuthTemp         = smtpreply.EnhancedCode{4, 7, 0}  // RFC 4954 §6: 454 4.7.0
	codeEncryptionNeeded = smtpreply.EnhancedCode{5, 7, 10} // RFC 5248: 523 5.7.10, as go-smtp
)

// replyPressure is the back-pressure refusal at MAIL: Exchange's words,
// naming the resource so that whoever reads the reply in a telnet session
// has the clue the operator of an Exchange hub that refused mail lacked. 452 is temporary:
// the client keeps the message and retries (RFC 5321 §4.2.2).
func replyPressure(r pressure.Resource) *smtpreply.Reply {
	return &smtpreply.Reply{Code: 452, Enhanced: smtpreply.CodeTempResources,
		Text: "Insufficient system resources (" + r.Describe() + ")"}
}

// smtpError converts r to the error go-smtp turns into a reply. go-smtp
// type-asserts *smtp.SMTPError rather than using errors.As, so the result
// must be returned as is, never wrapped: a wrapped one reaches the client as
// "451 4.0.0" and a plain error from Data as a permanent "554 5.0.0"
// (docs/design.md "What the code relies on").
func smtpError(r *smtpreply.Reply) *smtp.SMTPError {
	return &smtp.SMTPError{
		Code:         r.Code,
		EnhancedCode: smtp.EnhancedCode(r.Status()),
		Message:      r.Text,
	}
}
