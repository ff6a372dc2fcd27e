package queue

import (
	"bytes"
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

// DueAfter is Due from c on: the due messages whose schedule entry comes
// after c (all of them for the zero Cursor), and the cursor after the last
// one returned (c itself if none). A scheduler that keeps many messages in
// memory (and so skips them) walks them once, not at every call. An entry
// written since the last scan with an earlier due time than c's (a Put
// whose commit came after a later one's) is still found: the scan starts
// at the earliest such entry, as Due's does. What a cursor cannot see is a
// message left as it was before c (an attempt that wrote nothing): a scan
// from the zero Cursor now and then finds it.
func (s *Store) DueAfter(now time.Time, c Cursor, limit int, skip func(ID) bool) (ids []ID, next time.Time, cur Cursor, err error) {
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
	ids, next, last, firstLive, err := dueScan(it, start, now, limit, skip)
	if c.IsZero() {
		// Only a scan from the start knows where the first live entry is.
		s.scan.end(firstLive)
	}
	if last != nil {
		c = Cursor{key: last}
	}
	return ids, next, c, err
}

// dueScan walks the schedule from start (see Due). last is the key of the
// last entry returned, nil if none; firstLive the first key met
// (prefixEnd of the schedule if none).
func dueScan(it *pebble.Iterator, start []byte, now time.Time, limit int, skip func(ID) bool) (ids []ID, next time.Time, last, firstLive []byte, err error) {
	firstLive = prefixEnd(prefixSchedule) // if the scan meets nothing
	for ok, first := it.SeekGE(start), true; ok; ok, first = it.Next(), false {
		if first {
			firstLive = slices.Clone(it.Key())
		}
		due, id, err := parseScheduleKey(it.Key())
		if err != nil {
			return ids, next, last, firstLive, err
		}
		if skip != nil && skip(id) {
			continue
		}
		if due.After(now) {
			return ids, due, last, firstLive, it.Error()
		}
		if len(ids) == limit {
			return ids, now, last, firstLive, it.Error()
		}
		ids = append(ids, id)
		last = append(last[:0], it.Key()...)
	}
	return ids, time.Time{}, last, firstLive, it.Error()
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
