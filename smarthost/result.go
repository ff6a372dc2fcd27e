package smarthost

// Result is what became of one recipient in one attempt (Outcome.Result).
// Its String is the word the worker logs as the message of the recipient's
// line ("delivered", "deferred", "bounced", "expired"), the kind of the
// status page's events and the result label of the delivery metrics.
type Result uint8

const (
	ResultDelivered Result = iota + 1
	ResultDeferred
	ResultBounced
	ResultExpired
)

// Results lists every Result, for whoever needs the whole set (metric
// series made up front).
func Results() []Result {
	return []Result{ResultDelivered, ResultDeferred, ResultBounced, ResultExpired}
}

func (r Result) String() string {
	switch r {
	case ResultDelivered:
		return "delivered"
	case ResultDeferred:
		return "deferred"
	case ResultBounced:
		return "bounced"
	case ResultExpired:
		return "expired"
	}
	return "unknown"
}

// MarshalText writes the word, so JSON and other text encodings of an
// Outcome say "delivered", not a number.
func (r Result) MarshalText() ([]byte, error) { return []byte(r.String()), nil }
