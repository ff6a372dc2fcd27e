package retry

import "relayq/internal/smtpreply"

// The decisions below are those the delivery side takes without a reply
// of its own to classify for the recipient: they are made here, next to
// Classify, so that what happens to a recipient is decided in one package.

// Unreached decides for recipients no transaction reached: every host of
// the destination failed before MAIL (connect, greeting, TLS, AUTH), last
// being the last failure. Whatever last says, it is never a bounce or a
// prompt retry, only a deferral; its status and the hints of
// Classify(StageConnect, last) are kept for the record.
func Unreached(last *smtpreply.Reply) Decision {
	d := Classify(StageConnect, last)
	d.Action = Defer
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
