package queue

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Cursor is a position in the schedule (s/ keys): just after the last
// entry a DueAfter returned. The zero Cursor is the start.
type Cursor struct{ key []byte }

// IsZero reports whether c is the start of the schedule.
func (c Cursor) IsZero() bool { return c.key == nil }

// Entry is a message's schedule entry: its ID and when it is due.
type Entry struct {
	ID  ID
	Due time.Time
}

// DueAfter is Due from c on: the due messages whose schedule entry comes
// after c (all of them for the zero Cursor), and the cursor after the last
// one returned (c itself if none). A scheduler that keeps many messages in
// memory (and so skips them) walks them once, not at every call. An entry
// written since the last scan with an earlier due time than c's (a Put
// whose commit came after a later one's) is still found: the scan starts
// at the earliest such entry, as Due's does. What a cursor cannot see by
// itself is an entry it passed over (skipped: its message was in flight),
// left in place by an attempt that wrote nothing or written while the
// message was still in flight: Recheck shows it to the next scan.
//
// DueAfter looks no further than lookAhead past now for when the next
// message is due: next is at most now+lookAhead while entries remain (then
// it may be a time with nothing due, to look again at).
func (s *Store) DueAfter(now time.Time, c Cursor, limit int, skip func(ID) bool) (es []Entry, next time.Time, cur Cursor, err error) {
	return s.dueAfter(now, c, limit, skip, lookAhead)
}

// lookAhead bounds the part of the schedule after now that DueAfter walks
// to find when the next message is due. Past now lie the deferred
// messages; a flush of many (or a release of a destination's waiting
// mail) leaves a tombstone in front of them for each one it made due, and
// an unbounded look for the next live entry walked them all at every scan
// (a third of relayq's CPU while 100,000 of a million queued drained:
// README, Performance, the large queue). Within lookAhead it walks a
// second's worth.
const lookAhead = time.Second

// dueAfter is DueAfter looking ahead at most ahead for the next due time
// (0: as far as it takes, for Due's exact next).
func (s *Store) dueAfter(now time.Time, c Cursor, limit int, skip func(ID) bool, ahead time.Duration) (es []Entry, next time.Time, cur Cursor, err error) {
	var (
		it    *pebble.Iterator
		start []byte
	)
	if c.IsZero() {
		it, start, err = s.scan.begin(s.db)
	} else {
		it, start, err = s.scan.beginAfter(s.db, append(slices.Clone(c.key), 0)) // just after c
	}
	if err != nil {
		return nil, time.Time{}, c, fmt.Errorf("queue: due: %w", err)
	}
	defer it.Close()
	es, next, last, firstLive, err := dueScan(it, start, now, limit, skip, ahead)
	if c.IsZero() {
		// Only a scan from the start knows where the first live entry is.
		s.scan.end(firstLive)
	}
	if last != nil {
		c = Cursor{key: last}
	}
	return es, next, c, err
}

// Recheck makes the next scan (Due, DueAfter from any cursor) start no
// later than id's schedule entry, wherever it is now: a scheduler calls it
// for a message it had in flight when its attempt ends. A scan meanwhile
// passed over the message's entries (skip), the one it was due at and any
// written since (the attempt's own commit, an operator's flush) whose note
// that scan took; from its cursor the next scan would not come back to
// them. A message that is gone or held has no entry: nothing is noted.
func (s *Store) Recheck(id ID) error {
	r, err := s.getRecord(id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("queue: recheck: %w", err)
	case r.Held:
		return nil
	}
	s.scan.note(max(r.NextAttempt.UnixNano(), 0))
	return nil
}

// dueScan walks the schedule from start (see Due), up to now+ahead when
// ahead > 0 (then next is that time if nothing live came before it).
// last is the key of the last entry returned, nil if none; firstLive the
// first key met (prefixEnd of the schedule if none, the bound if the walk
// stopped there: nothing live comes before it).
func dueScan(it *pebble.Iterator, start []byte, now time.Time, limit int, skip func(ID) bool, ahead time.Duration) (es []Entry, next time.Time, last, firstLive []byte, err error) {
	firstLive = prefixEnd(prefixSchedule) // if the scan meets nothing
	var bound []byte                      // nil: no bound
	if ahead > 0 {
		bound = scheduleKey(now.Add(ahead), "")
	}
	first := true
	st := it.SeekGEWithLimit(start, bound)
	for ; st == pebble.IterValid; st, first = it.NextWithLimit(bound), false {
		if first {
			firstLive = slices.Clone(it.Key())
		}
		due, id, err := parseScheduleKey(it.Key())
		if err != nil {
			return es, next, last, firstLive, err
		}
		if skip != nil && skip(id) {
			continue
		}
		if due.After(now) {
			return es, due, last, firstLive, it.Error()
		}
		if len(es) == limit {
			return es, now, last, firstLive, it.Error()
		}
		es = append(es, Entry{ID: id, Due: due})
		last = append(last[:0], it.Key()...)
	}
	if st == pebble.IterAtLimit {
		if first {
			firstLive = bound
		}
		return es, now.Add(ahead), last, firstLive, it.Error()
	}
	return es, time.Time{}, last, firstLive, it.Error()
}

// beginAfter is begin for a scan from after: it takes the notes and opens
// an iterator that sees every noted entry, and returns the earlier of
// after and the earliest entry written since. The notes it takes still
// count for the next scan from the start (begin): the first live key it
// remembers moves back to them.
func (h *scanHint) beginAfter(db *pebble.DB, after []byte) (*pebble.Iterator, []byte, error) {
	it, minDue, err := h.take(db)
	if err != nil {
		return nil, nil, err
	}
	if minDue == math.MaxInt64 {
		return it, after, nil
	}
	noted := scheduleKey(time.Unix(0, minDue), "")
	h.fromMu.Lock()
	if h.from != nil && bytes.Compare(noted, h.from) < 0 { // nil: the start already
		h.from = noted
	}
	h.fromMu.Unlock()
	if bytes.Compare(noted, after) < 0 {
		return it, noted, nil
	}
	return it, after, nil
}
