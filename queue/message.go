package queue

import (
	"time"

	"relayq/queued"
)

// The envelope and its parts live in package queued, so that intake can
// name them without depending on the queue's storage; the queue's API
// names them as its own.
type (
	ID         = queued.ID
	RcptState  = queued.RcptState
	Recipient  = queued.Recipient
	Envelope   = queued.Envelope
	QueueState = queued.QueueState
)

// The recipient states and operator states, as in package queued.
const (
	Pending   = queued.Pending
	Delivered = queued.Delivered
	Bounced   = queued.Bounced
	Deleted   = queued.Deleted

	StateActive   = queued.StateActive
	StateDeferred = queued.StateDeferred
	StateHeld     = queued.StateHeld
)

// Message is a stored envelope with its ID.
type Message struct {
	ID ID
	Envelope
	// Scheduled is the NextAttempt the stored record had when Get read
	// it; it is not stored. Update compares it with the record's current
	// one to tell an operator's rescheduling since (which wins) from its
	// own. Zero: Update writes NextAttempt as is.
	Scheduled time.Time
	// WaitsFor, when set, names the destination whose failure deferred
	// the message; it is not stored in the record. Update indexes the
	// message under it (key w/), so that Store.ReleaseDest makes it due
	// as soon as that destination takes mail again.
	WaitsFor string
}

// NewMessage is a message to enqueue as part of another change, such as an
// NDR committed in the same batch as the failure that caused it. Its body is
// small and held in memory.
type NewMessage struct {
	ID       ID
	Envelope Envelope
	Body     []byte
}
