package smarthost

import "time"

// DestState is a destination's state for operators (`relayq status`, the
// status page, the admin API's "state").
type DestState string

const (
	// DestOK: taking mail at its configured cap.
	DestOK DestState = "ok"
	// DestCapped: a 421 4.3.2 taught a cap below the configured maximum.
	DestCapped DestState = "capped"
	// DestFailing: one of its hosts failed within the last minute, after
	// the cap last changed.
	DestFailing DestState = "failing"
)

// failingFor is how long a failure keeps a destination DestFailing.
const failingFor = time.Minute

// State is the destination's state at now.
func (s DestinationStatus) State(now time.Time) DestState {
	switch {
	case s.LearnedCap > 0 && s.Cap < s.MaxCap:
		return DestCapped
	case !s.LastReplyAt.IsZero() && s.LastReplyAt.After(s.Updated) && now.Sub(s.LastReplyAt) < failingFor:
		return DestFailing
	}
	return DestOK
}
