package admin

import (
	"sync"
	"time"
)

// DefaultEvents is how many events the status page shows and a default
// Events keeps.
const DefaultEvents = 20

// Event kinds.
const (
	EventDeferred = "deferred"
	EventBounced  = "bounced"
	EventExpired  = "expired"
)

// Event is one deferral or bounce of one recipient, for the status page.
type Event struct {
	Time  time.Time `json:"time"`
	Kind  string    `json:"kind"` // deferred | bounced | expired
	ID    string    `json:"id"`
	Rcpt  string    `json:"rcpt"`
	Dest  string    `json:"dest,omitempty"` // the host that gave Reply
	Reply string    `json:"reply"`
	// MessageID and Subject are the message's header fields as queued.
	MessageID string `json:"message_id,omitempty"`
	Subject   string `json:"subject,omitempty"`
	// Explain and Hint are filled from Reply when left empty.
	Explain string `json:"explain,omitempty"`
	Hint    string `json:"hint,omitempty"`
}

// Events is a fixed-size ring of the latest events; safe for concurrent
// use. Memory is bounded by its capacity whatever the traffic.
type Events struct {
	mu struct {
		sync.Mutex
		buf  []Event
		next int // where the next event goes
		full bool
	}
}

// NewEvents returns a ring that keeps the last capacity events.
func NewEvents(capacity int) *Events {
	e := &Events{}
	e.mu.buf = make([]Event, max(capacity, 1))
	return e
}

// Add records e, explaining its reply if the caller did not.
func (e *Events) Add(ev Event) {
	if ev.Explain == "" && ev.Hint == "" {
		ev.Explain, ev.Hint = Explain(ev.Reply)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mu.buf[e.mu.next] = ev
	e.mu.next = (e.mu.next + 1) % len(e.mu.buf)
	if e.mu.next == 0 {
		e.mu.full = true
	}
}

// Recent returns up to n events, newest first.
func (e *Events) Recent(n int) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	size := e.mu.next
	if e.mu.full {
		size = len(e.mu.buf)
	}
	n = min(n, size)
	out := make([]Event, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, e.mu.buf[(e.mu.next-i+len(e.mu.buf))%len(e.mu.buf)])
	}
	return out
}
