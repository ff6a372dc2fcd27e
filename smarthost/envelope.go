package smarthost

import (
	"relayq/queue"
	"relayq/retry"
)

// envelopeFor is the client Envelope for the recipients idx of m on a
// route that rewrites as rw: the sender (rw.Sender instead of a sender
// that is not null), their addresses and, for RFC 3461, each one's NOTIFY
// and ORCPT and the message's RET and ENVID, which Send passes on when
// the next hop offers DSN. Which RCPT refusal ends a transaction's
// recipients is retry's decision (retry.TooManyRecipients): the client
// stops there, and transactions sends the rest in the next one.
func envelopeFor(m *queue.Message, idx []int, rw Rewrite) Envelope {
	from := m.From
	if from != "" && rw.Sender != "" {
		from = rw.Sender
	}
	env := Envelope{
		From: from, Size: m.Size, Body8Bit: m.Body8Bit, SMTPUTF8: m.SMTPUTF8,
		Ret: m.Ret, EnvID: m.EnvID, EndsRcpts: retry.TooManyRecipients,
		Rcpts: make([]string, 0, len(idx)),
		DSN:   make([]RcptDSN, 0, len(idx)),
	}
	for _, i := range idx {
		r := &m.Recipients[i]
		env.Rcpts = append(env.Rcpts, r.Addr)
		env.DSN = append(env.DSN, RcptDSN{Notify: r.Notify, ORCPT: r.ORCPT})
	}
	return env
}
