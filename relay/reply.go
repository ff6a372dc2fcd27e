package relay

import (
	"github.com/emersion/go-smtp"

	"relayq/retry"
)

// Replies relay sends. Text sent to the client is short and generic; the
// details go to the log (STYLE.md).
var (
	// RFC 1870 §6.2: a SIZE= or a body above the limit is refused with 552.
	replyTooBig = &retry.Reply{Code: 552, Enhanced: retry.CodeTooBig,
		Text: "Message size exceeds fixed maximum message size"}
	// RFC 5321 §6.3: a loop shows as too many Received headers.
	replyLoop = &retry.Reply{Code: 554, Enhanced: retry.CodeLoop,
		Text: "Too many hops, mail loop detected"}
	// RFC 5321 §4.5.3.1.10: too many recipients is 452, the client sends the
	// rest in another transaction.
	replyTooManyRcpts = &retry.Reply{Code: 452, Enhanced: retry.CodeTooManyRcpts,
		Text: "Too many recipients"}
	replyRelayDenied = &retry.Reply{Code: 550, Enhanced: retry.CodeRelayDenied,
		Text: "Relaying denied"}
	replyBadAddress = &retry.Reply{Code: 501, Enhanced: retry.CodeBadSyntax,
		Text: "Bad address syntax"}
	// The queue could not commit: temporary, the client keeps the message.
	replyStoreFailed = &retry.Reply{Code: 451, Enhanced: retry.CodeTempLocal,
		Text: "Local error in processing, try again later"}
	// The client stalled or went away in the middle of the body.
	replyStalled = &retry.Reply{Code: 451, Enhanced: retry.CodeConnDropped,
		Text: "Timeout or connection error while reading message data"}
	// RFC 5321 §4.5.3.1.6 limits a text line; go-smtp allows twice that.
	replyLineTooLong = &retry.Reply{Code: 554, Enhanced: retry.CodeSyntaxError,
		Text: "Line too long"}
	// RFC 3463 X.3.2 "system not accepting network messages" names an
	// imminent shutdown as its example.
	replyShuttingDown = &retry.Reply{Code: 421, Enhanced: retry.CodeTooManyConns,
		Text: "Service shutting down, try again later"}
	// RFC 5321 §4.1.4: MAIL inside a transaction is a bad sequence.
	replyNestedMail = &retry.Reply{Code: 503, Enhanced: codeBadSequence,
		Text: "Nested MAIL command"}
)

// codeBadSequence is RFC 3463 X.5.1, invalid command (sequence).
var codeBadSequence = retry.EnhancedCode{5, 5, 1}

// smtpError converts r to the error go-smtp turns into a reply. go-smtp
// type-asserts *smtp.SMTPError rather than using errors.As, so the result
// must be returned as is, never wrapped: a wrapped one reaches the client as
// "451 4.0.0" and a plain error from Data as a permanent "554 5.0.0"
// (DESIGN.md, go-smtp gotchas).
func smtpError(r *retry.Reply) *smtp.SMTPError {
	return &smtp.SMTPError{
		Code:         r.Code,
		EnhancedCode: smtp.EnhancedCode(r.Status()),
		Message:      r.Text,
	}
}
