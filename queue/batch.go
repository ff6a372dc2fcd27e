package queue

import (
	"bytes"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// writeBatch is a Pebble batch that remembers the earliest schedule entry
// it writes, so that Due can start its scan at the right place.
type writeBatch struct {
	*pebble.Batch
	minDue int64 // Unix ns; math.MaxInt64 when it schedules nothing
	spill  bool  // made by spillBatch: its buffer is kept across Resets
}

func (s *Store) newBatch() *writeBatch {
	return &writeBatch{Batch: s.db.NewBatch(), minDue: math.MaxInt64}
}

// spillBatch returns the batch the rest of a large body is written
// through once b, just committed, has been spilled: b itself, reset, if it
// is already a spill batch, else (closing b) a new one with room for a
// whole spill. A batch's buffer grows by doubling from 1 KiB, and Pebble
// drops on Reset a buffer larger than 1 MiB, so resetting the first batch
// would grow a fresh buffer to 2 MiB at every spill: ~4 MiB of garbage per
// MiB of body, which the garbage collector lets the heap, and so RSS, grow
// by. One buffer of fixed size per large body makes no garbage beyond it.
func (s *Store) spillBatch(b *writeBatch) *writeBatch {
	if b.spill {
		b.Reset()
		b.minDue = math.MaxInt64
		return b
	}
	b.Close()
	// A spill is at most spillBytes plus one chunk and its key; the final
	// batch adds the record and the schedule entry.
	n := spillBytes + s.chunkSize + 16<<10
	return &writeBatch{
		Batch:  s.db.NewBatch(pebble.WithInitialSizeBytes(n), pebble.WithMaxRetainedSizeBytes(n)),
		minDue: math.MaxInt64,
		spill:  true,
	}
}

// schedule adds the schedule entry of id at due. Every s/ key is written
// through here.
func (b *writeBatch) schedule(due time.Time, id ID) error {
	b.minDue = min(b.minDue, max(due.UnixNano(), 0))
	return b.Set(scheduleKey(due, id), nil, nil)
}

// apply commits b with opts; its schedule entries are noted for the next
// Due scan. The note and the commit happen under the shared side of
// scan.mu, so a Due that takes the notes (exclusive side) sees their
// entries too. Writers call commit (syncshare.go), which says when b is
// durable.
func (s *Store) apply(b *writeBatch, opts *pebble.WriteOptions) error {
	s.scan.mu.RLock()
	defer s.scan.mu.RUnlock()
	s.scan.noteLocked(b.minDue)
	if err := b.Commit(opts); err != nil {
		return err
	}
	s.written.Add(int64(b.Len()))
	return nil
}

// Written returns the bytes of every batch the queue committed since
// Open: bodies, records, schedule entries, tombstones, as they go to
// Pebble's log. Back pressure subtracts what was written since its last
// reading of free space, so that it sees a burst before the next reading
// (pressure.Config.Written).
func (s *Store) Written() int64 { return s.written.Load() }

// scanHint is where the schedule scan of Due may start.
type scanHint struct {
	mu     sync.RWMutex
	minDue atomic.Int64 // earliest due written since the last begin (Unix ns)
	from   []byte       // first live key the last scan met; nil = start of the index
	fromMu sync.Mutex
}

// note records that an entry due at due (Unix ns) is to be seen by the
// next scan.
func (h *scanHint) note(due int64) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	h.noteLocked(due)
}

// noteLocked is note for a caller holding h.mu's shared side.
func (h *scanHint) noteLocked(due int64) {
	for {
		cur := h.minDue.Load()
		if due >= cur || h.minDue.CompareAndSwap(cur, due) {
			return
		}
	}
}

// take takes the notes (the earliest due written since, MaxInt64 if none)
// and opens an iterator over the schedule that sees every noted entry: both
// under h.mu, which writers hold (read-locked) across their note and commit.
func (h *scanHint) take(db *pebble.DB) (*pebble.Iterator, int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	minDue := h.minDue.Swap(math.MaxInt64)
	it, err := db.NewIter(&pebble.IterOptions{
		LowerBound: []byte(prefixSchedule),
		UpperBound: prefixEnd(prefixSchedule),
	})
	return it, minDue, err
}

// begin takes the notes and opens an iterator that sees every noted entry;
// it returns where to start: the earlier of the last scan's first live key
// and the earliest entry written since.
func (h *scanHint) begin(db *pebble.DB) (*pebble.Iterator, []byte, error) {
	it, minDue, err := h.take(db)
	if err != nil {
		return nil, nil, err
	}
	h.fromMu.Lock()
	start := h.from
	h.fromMu.Unlock()
	if minDue < math.MaxInt64 {
		if k := scheduleKey(time.Unix(0, minDue), ""); start == nil || bytes.Compare(k, start) < 0 {
			start = k
		}
	}
	if start == nil {
		start = []byte(prefixSchedule)
	}
	return it, start, nil
}

// end records where the scan met its first live entry.
func (h *scanHint) end(firstLive []byte) {
	h.fromMu.Lock()
	h.from = firstLive
	h.fromMu.Unlock()
}
