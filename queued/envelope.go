package queued

import (
	"encoding/hex"
	"time"
)

// ID identifies a queued message. It is 24 lowercase hex digits: 8 bytes of
// the enqueue time in nanoseconds and 4 random bytes, so IDs sort by age.
type ID string

// RcptState is where one recipient stands. Every recipient ends in exactly
// one of Delivered, Bounced or Deleted (docs/design.md "Invariants" 3).
type RcptState uint8

const (
	Pending   RcptState = iota // still to be delivered
	Delivered                  // the next hop said 2xx; never sent again
	Bounced                    // failed for good; an NDR was queued unless suppressed
	Deleted                    // removed by an operator
)

func (s RcptState) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Bounced:
		return "bounced"
	case Deleted:
		return "deleted"
	}
	return "unknown"
}

// Final reports whether the recipient needs no more work.
func (s RcptState) Final() bool { return s != Pending }

// Recipient is one envelope recipient and its delivery state.
//
// The queue's record codec (queue/record.go) encodes every field of
// Recipient and Envelope: a field added here needs a place there (the
// queue's round-trip test fails until it has one). The JSON tags are the version 1 record format,
// still read from queues written by older relayq: never change them.
type Recipient struct {
	Addr  string    `json:"a"`
	State RcptState `json:"s,omitempty"`
	// Notify is the RFC 3461 NOTIFY parameter as given ("SUCCESS,FAILURE",
	// "NEVER"), empty when the client gave none.
	Notify string `json:"n,omitempty"`
	// ORCPT is the RFC 3461 original recipient, "rfc822;user@example.org".
	ORCPT string `json:"o,omitempty"`
	// Attempts counts delivery attempts that reached a verdict for this
	// recipient (a 421 4.3.2 "too many connections" retry does not count).
	Attempts int `json:"t,omitempty"`
	// LastReply is the last reply for this recipient, local or remote, as a
	// reply line ("451 4.4.1 connection refused").
	LastReply string `json:"r,omitempty"`
	// LastHost is the host that gave LastReply, if a remote one.
	LastHost string `json:"h,omitempty"`
	// Status is the enhanced status code the worker settled on for
	// LastReply ("5.3.4"). It can differ from the one the reply carries: a
	// 552 at RCPT is temporary (4.x.x), a "552 4.3.1 Message size exceeds
	// …" after the data is 5.3.4. DSNs report it.
	Status string `json:"st,omitempty"`
	// Done is when the recipient reached a final state.
	Done time.Time `json:"d,omitzero"`
}

// Envelope is everything about a message except its body.
type Envelope struct {
	// From is the reverse path without brackets; "" is the null sender <>
	// of bounces, which are never bounced again.
	From       string      `json:"f"`
	Recipients []Recipient `json:"r"`
	// Received is when the message was committed to the queue.
	Received time.Time `json:"c"`
	// Size is the body size in bytes, as stored (with our Received header).
	Size int64 `json:"z"`
	// RFC 3461 and RFC 6152/6531 parameters of MAIL FROM.
	EnvID    string `json:"e,omitempty"`
	Ret      string `json:"ret,omitempty"` // "FULL" or "HDRS"
	Body8Bit bool   `json:"8,omitempty"`
	SMTPUTF8 bool   `json:"u,omitempty"`
	// Client names who handed the message in: "[127.0.0.1] helo.name", or
	// "local" for NDRs made here.
	Client string `json:"cl,omitempty"`
	// NextAttempt is when the message is due; it is the key of its schedule
	// entry. Zero on a message being put means "now".
	NextAttempt time.Time `json:"n"`
	// LastAttempt is when delivery was last tried.
	LastAttempt time.Time `json:"l,omitzero"`
	// DelayWarned is set once a delay DSN went out.
	DelayWarned bool `json:"w,omitempty"`
	// Held is set while an operator holds the message.
	Held bool `json:"hd,omitempty"`
	// BounceRequested is set by an operator (Store.Bounce): the delivery
	// worker is to bounce every pending recipient at its next attempt, with
	// an NDR, instead of trying to deliver.
	BounceRequested bool `json:"br,omitempty"`
	// MessageID is the message's Message-ID header field as its client
	// sent it ("<id@host>"), "" when it had none. Subject is its Subject,
	// decoded (RFC 2047) for display, without control characters and cut
	// to 200 bytes. Both are read from the header section at intake, for
	// operators and logs; delivery never uses them. Records written
	// before version 3 have neither.
	MessageID string `json:"mid,omitempty"`
	Subject   string `json:"sj,omitempty"`
	// Released is how many attempts its most-tried pending recipient had
	// when its destination's return made it due again (ReleaseDest). The
	// backoff counts only the attempts after that, so it starts again from
	// its minimum; Attempts, which NDRs report, go on counting.
	Released int `json:"rl,omitempty"`
}

// Pending returns the indexes of the recipients still to be delivered.
func (e *Envelope) Pending() []int {
	var idx []int
	for i := range e.Recipients {
		if !e.Recipients[i].State.Final() {
			idx = append(idx, i)
		}
	}
	return idx
}

// Final reports whether no recipient is pending.
func (e *Envelope) Final() bool {
	for i := range e.Recipients {
		if !e.Recipients[i].State.Final() {
			return false
		}
	}
	return true
}

// IDLen is the length of an ID in hex digits.
const IDLen = 24

// Valid reports whether id has the form of a queue ID, so that admin input
// can never address a key outside the message's own.
func (id ID) Valid() bool {
	if len(id) != IDLen {
		return false
	}
	_, err := hex.DecodeString(string(id))
	return err == nil
}

// QueueState is where a message stands from an operator's point of view.
type QueueState string

const (
	// StateActive: due now, which includes a message whose attempt is in
	// flight (its schedule entry stays at the due time until the attempt's
	// Update commits). The store cannot tell "in flight" from "about to be
	// picked up", and an operator need not either: both are being worked on.
	StateActive QueueState = "active"
	// StateDeferred: waiting for its next attempt, after a failed one or a
	// backoff.
	StateDeferred QueueState = "deferred"
	// StateHeld: held by an operator; it has no schedule entry and is never
	// tried until released.
	StateHeld QueueState = "held"
)

// QueueState returns the operator's view of the message at now.
func (e *Envelope) QueueState(now time.Time) QueueState {
	switch {
	case e.Held:
		return StateHeld
	case e.NextAttempt.After(now):
		return StateDeferred
	}
	return StateActive
}
