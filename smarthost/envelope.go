package smarthost

import "relayq/queue"

// envelopeFor is the client Envelope for the recipients idx of m: their
// addresses and, for RFC 3461, each one's NOTIFY and ORCPT and the message's
// RET and ENVID, which Send passes on when the next hop offers DSN.
func envelopeFor(m *queue.Message, idx []int) Envelope {
	env := Envelope{
		From: m.From, Size: m.Size, Body8Bit: m.Body8Bit, SMTPUTF8: m.SMTPUTF8,
		Ret: m.Ret, EnvID: m.EnvID,
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
