package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// ParseQueueState parses "active", "deferred" or "held"; "" is the zero
// state, which a Filter takes as "any".
func ParseQueueState(s string) (QueueState, error) {
	switch st := QueueState(strings.ToLower(strings.TrimSpace(s))); st {
	case "", StateActive, StateDeferred, StateHeld:
		return st, nil
	}
	return "", fmt.Errorf("state %q is not one of active, deferred, held", s)
}

// Filter selects messages for List and for operator actions on many
// messages. The zero Filter selects every message; each set field narrows.
type Filter struct {
	// Domain selects messages with a pending recipient in this domain
	// (case-insensitive; a recipient already delivered does not count).
	Domain string
	// Sender selects by envelope sender, case-insensitive: a full address,
	// "@domain" for every sender of that domain, or "<>" for bounces.
	Sender string
	// State selects active, deferred or held messages.
	State QueueState
	// OlderThan selects messages received more than this long ago.
	OlderThan time.Duration
	// MessageID selects the messages whose Message-ID header field is
	// this one, exactly (case-sensitive), with or without its angle
	// brackets.
	MessageID string
}

// IsZero reports whether f selects every message.
func (f Filter) IsZero() bool { return f == Filter{} }

// Match reports whether m is selected by f at now.
func (f Filter) Match(m *Message, now time.Time) bool {
	if f.State != "" && m.QueueState(now) != f.State {
		return false
	}
	if f.OlderThan > 0 && now.Sub(m.Received) <= f.OlderThan {
		return false
	}
	if f.Sender != "" && !matchSender(f.Sender, m.From) {
		return false
	}
	if f.MessageID != "" && !sameMessageID(f.MessageID, m.MessageID) {
		return false
	}
	if f.Domain != "" {
		want := strings.TrimSuffix(strings.ToLower(f.Domain), ".")
		for _, i := range m.Pending() {
			if Domain(m.Recipients[i].Addr) == want {
				return true
			}
		}
		return false
	}
	return true
}

// sameMessageID compares two Message-IDs, either of them with or without
// its angle brackets.
func sameMessageID(a, b string) bool {
	bare := func(s string) string {
		s = strings.TrimSpace(s)
		if len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>' {
			return s[1 : len(s)-1]
		}
		return s
	}
	return b != "" && bare(a) == bare(b)
}

func matchSender(pattern, from string) bool {
	switch {
	case pattern == "<>":
		return from == ""
	case strings.HasPrefix(pattern, "@"):
		return from != "" && strings.EqualFold("@"+Domain(from), pattern)
	}
	return strings.EqualFold(strings.Trim(pattern, "<>"), from)
}

// Domain is the domain of a mailbox address, lower-cased and without a
// trailing root dot ("b@Example.ORG." → "example.org"); "" for an address
// without one (the null sender). Filters and delivery group recipients by
// it.
func Domain(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.TrimSuffix(strings.ToLower(addr[i+1:]), ".")
	}
	return ""
}

// ErrHeld is returned by Flush for a message an operator holds: release it
// first (holding is the stronger operator decision).
var ErrHeld = errors.New("queue: message is held")

// List returns up to limit messages selected by f whose ID sorts after
// after ("" starts at the oldest), in ID order, which is age order. To page,
// pass the last returned ID as after. List streams the m/ keys: memory is
// bounded by limit, not by the queue length (a filter that matches little
// reads further, but keeps nothing it does not return).
func (s *Store) List(f Filter, after ID, limit int) ([]Message, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("queue: list: limit must be > 0")
	}
	lower := []byte(prefixMeta)
	if after != "" {
		if !after.Valid() {
			return nil, fmt.Errorf("queue: list: invalid id %q", after)
		}
		lower = append(metaKey(after), 0) // strictly after
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefixMeta)})
	if err != nil {
		return nil, fmt.Errorf("queue: list: %w", err)
	}
	defer it.Close()
	now := s.now()
	var out []Message
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		r, err := decodeRecord(it.Value())
		if err != nil {
			s.log.Error().Err(err).Str("key", string(it.Key())).Msg("queue: unreadable record")
			continue
		}
		m := Message{ID: ID(it.Key()[len(prefixMeta):]), Envelope: r.Envelope}
		if f.Match(&m, now) {
			out = append(out, m)
		}
	}
	return out, it.Error()
}

// Hold keeps id from delivery until Release: it sets Held and removes the
// schedule entry, in one synced batch. Holding a held message does nothing.
// An attempt already in flight finishes; its result is recorded and the
// message stays held (Update keeps Held).
func (s *Store) Hold(ctx context.Context, id ID) error {
	return s.modify(ctx, id, func(r *record, _ time.Time) error {
		r.Held = true
		return nil
	})
}

// Release undoes Hold: the message is due at once. Releasing a message that
// is not held does nothing.
func (s *Store) Release(ctx context.Context, id ID) error {
	return s.modify(ctx, id, func(r *record, now time.Time) error {
		if r.Held {
			r.Held, r.NextAttempt = false, now
		}
		return nil
	})
}

// Flush makes id due now, whatever its backoff (postqueue -i). A held
// message stays held and Flush returns ErrHeld.
func (s *Store) Flush(ctx context.Context, id ID) error {
	return s.modify(ctx, id, func(r *record, now time.Time) error {
		if r.Held {
			return ErrHeld
		}
		r.NextAttempt = now
		return nil
	})
}

// Bounce asks for every pending recipient of id to be bounced with an NDR:
// it sets BounceRequested and makes the message due now (releasing it if
// held). The delivery worker makes the NDR at its next attempt: composing
// it is a delivery decision, not the store's.
func (s *Store) Bounce(ctx context.Context, id ID) error {
	return s.modify(ctx, id, func(r *record, now time.Time) error {
		r.BounceRequested, r.Held, r.NextAttempt = true, false, now
		return nil
	})
}

// modify applies fn to the stored record of id and commits the result (the
// record and its schedule entry) in one batch with pebble.Sync, under the
// message's lock, as Update does. ErrNotFound for an unknown or invalid id;
// an error from fn aborts without writing.
func (s *Store) modify(ctx context.Context, id ID, fn func(r *record, now time.Time) error) error {
	old, unlock, err := s.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	r := *old
	if err := fn(&r, s.now()); err != nil {
		return err
	}
	if r.Held == old.Held && r.NextAttempt.Equal(old.NextAttempt) && !r.BounceRequested {
		return nil // nothing changed: no write, no fsync
	}
	b := s.newBatch()
	defer b.Close()
	if err := s.rewriteLocked(b, id, old, &r); err != nil {
		return err
	}
	err = s.commit(b, synced)
	if r.Held != old.Held || r.BounceRequested != old.BounceRequested {
		s.changes.Add(1) // even if it failed: it may have been applied
	}
	if err != nil {
		return fmt.Errorf("queue: commit %s: %w", id, err)
	}
	if !r.Held {
		s.signal()
	}
	return nil
}

// Delete removes id, its body and its schedule entry in one synced batch,
// without an NDR (postsuper -d): every pending recipient ends Deleted
// (docs/design.md "Invariants" 3), which is logged one line per recipient. An
// attempt in flight finds the message gone when it commits and records
// nothing (Update returns ErrNotFound).
func (s *Store) Delete(ctx context.Context, id ID) error {
	r, unlock, err := s.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	b := s.newBatch()
	defer b.Close()
	if err := s.deleteLocked(b, id, r); err != nil {
		return err
	}
	err = s.commit(b, synced)
	s.changes.Add(1) // even if it failed: it may have been applied
	if err != nil {
		return fmt.Errorf("queue: commit delete %s: %w", id, err)
	}
	s.messages.Add(-1)
	s.bytes.Add(-r.Size)
	for _, i := range r.Pending() {
		s.log.Info().Str("id", string(id)).Str("from", r.From).Str("rcpt", r.Recipients[i].Addr).
			Int("attempt", r.Recipients[i].Attempts).Msg("deleted by operator")
	}
	return nil
}
