package retry

import "relayq/internal/smtpreply"

// The decisions below are those the delivery side takes without a reply
// of its own to classify for the recipient: they are made here, next to
// Classify, so that what happens to a recipient is decided in one package.

// Unreached decides for recipients no transaction reached: every host of
// the destination failed before MAIL (connect, greeting, TLS, AUTH), last
// being the last failure. Whatever last says, it is never a bounce or a
// prompt retry, only a deferral; the hints of Classify(StageConnect, last)
// are kept for the record, and its status with the transient class.
//
// A deferral is recorded with a 4.x.x status even when last is a 5xx
// (RFC 3463 §3.1: 4.X.X is the persistent transient failure, and a
// "delayed" recipient of a DSN carries one): the queue record, `relayq
// status`, a delay notice and `relayq explain` then agree with what relayq
// does, while the recipient's last reply keeps the next hop's own words.
// The case that matters is the README's "A failing token defers the mail
// with the server's reply" (OAuth2 to the smart host): a smart host's
// "535 5.7.8 Username and Password not accepted" to AUTH defers every
// message with status 4.7.8, as Classify(StageHello, …) says, and as
// Postfix's soft_bounce reports it, never 5.7.8, which reads as a bounce.
func Unreached(last *smtpreply.Reply) Decision {
	d := Classify(StageConnect, last)
	if authRefused(last) {
		// Only AUTH answers 530, 534, 535 or 538 before MAIL (RFC 4954
		// §6): say so in the note, as the hello stage would.
		d = Classify(StageHello, last)
	}
	d.Action = Defer
	if d.Status.Class() == 5 {
		d.Status[0] = 4
	}
	return d
}

// Unsplit decides for a recipient refused with "too many recipients" in a
// transaction where the peer took no recipient at all: sending it again in
// a new transaction would loop, so it is deferred with the reply r.
func Unsplit(r *smtpreply.Reply) Decision {
	return Decision{Action: Defer, Status: r.Status()}
}

// OperatorBounce is the decision and the reply for a recipient the relay's
// operator returned to its sender (`relayq queue bounce`): a bounce like
// any other (an NDR to the sender), with a local 550 5.0.0.
func OperatorBounce() (Decision, *smtpreply.Reply) {
	r := &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodePermGeneric, Local: true,
		Text: "returned to the sender by the relay's operator"}
	return Decision{Action: Bounce, Status: r.Status()}, r
}
