package queue

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"relayq/internal/diskspace"
)

// Reclaiming the space of deleted mail.
//
// Deleting a message writes tombstones; the space its body takes on disk
// comes back only once Pebble has flushed the memtable holding them (so
// that the WAL that logged the body can go) and compacted the tables that
// hold the body. Pebble does both when writes make it: a flush when a
// memtable fills, a compaction when a level grows. A queue whose volume is
// nearly full has back pressure refusing intake; delivery alone writes
// little (a record rewrite or a few tombstones per message), and so the
// space of the delivered mail never comes back, the volume stays nearly
// full and intake stays refused: a deadlock that only a restart (which
// flushes) or new writes would break.
//
// So the queue reclaims by itself. When mail is deleted while free space
// on the volume is below Options.ReclaimBelow, it compacts the key ranges
// of the deleted messages (Pebble flushes the memtables that overlap them
// first), and Pebble removes the tables and logs that became obsolete.
// The deleted IDs are gathered until reclaimQuiet passes without a
// deletion (at most reclaimMaxWait), so that a drain is reclaimed once,
// at its end, and not message by message while the delivery goes on; and
// the next reclaim waits at least reclaimSpacing times the duration of
// the last: a compaction rewrites what is still queued in the range too,
// and on a large queue that must not take more than a fraction of the
// disk's time.
// Deletions made while free space is above the threshold are forgotten:
// space is not short, and the writes that go on make Pebble compact them
// away in time (keeping them would only widen the next reclaim's range).

const (
	// reclaimQuiet without a deletion ends a drain: reclaim then.
	reclaimQuiet = time.Second
	// reclaimMaxWait bounds the gathering during a long drain.
	reclaimMaxWait = 10 * time.Second
	// reclaimSpacing: the wait after a reclaim, in multiples of its
	// duration (at most 1/reclaimSpacing of the time compacting).
	reclaimSpacing = 5
)

// reclaimer is the Store's reclaiming goroutine and what it needs.
type reclaimer struct {
	below atomic.Int64 // free space under which deletions are reclaimed; <= 0: never
	poke  chan struct{}
	stop  context.CancelFunc
	done  chan struct{}

	mu struct {
		sync.Mutex
		lo, hi ID    // the smallest and largest ID deleted since the last reclaim; "" if none
		bytes  int64 // the body bytes deleted since the last reclaim
	}
}

// startReclaim starts the reclaiming goroutine, reclaiming below free
// bytes (SetReclaimBelow); Close stops it. A queue without a reserve
// reclaims nothing.
func (s *Store) startReclaim(below int64) {
	r := &s.reclaim
	r.poke = make(chan struct{}, 1)
	r.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	if s.reserve <= 0 {
		close(r.done)
		return
	}
	s.SetReclaimBelow(below)
	go s.reclaimLoop(ctx)
}

// SetReclaimBelow changes Options.ReclaimBelow (a configuration reload):
// the free space under which the space of deleted mail is reclaimed at
// once; 0 means 4 × the reserve. A queue without a reserve ignores it.
func (s *Store) SetReclaimBelow(below int64) {
	if s.reserve <= 0 {
		return
	}
	if below <= 0 {
		below = defaultReclaimBelow * s.reserve
	}
	s.reclaim.below.Store(below)
}

// stopReclaim stops the goroutine and waits for it (a compaction in
// progress is cancelled).
func (s *Store) stopReclaim() {
	s.reclaim.stop()
	<-s.reclaim.done
}

// deleted notes that the message id, whose body took size bytes, is being
// deleted.
func (r *reclaimer) deleted(id ID, size int64) {
	if r.below.Load() <= 0 {
		return
	}
	r.mu.Lock()
	if r.mu.lo == "" || id < r.mu.lo {
		r.mu.lo = id
	}
	if id > r.mu.hi {
		r.mu.hi = id
	}
	r.mu.bytes += size
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// take returns the deleted range gathered so far and starts a new one.
func (r *reclaimer) take() (lo, hi ID, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lo, hi, bytes = r.mu.lo, r.mu.hi, r.mu.bytes
	r.mu.lo, r.mu.hi, r.mu.bytes = "", "", 0
	return lo, hi, bytes
}

func (s *Store) reclaimLoop(ctx context.Context) {
	r := &s.reclaim
	defer close(r.done)
	var next time.Time // no reclaim before
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.poke:
		}
		if !r.gather(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		if free, ok := diskspace.Free(s.dir); !ok || free >= r.below.Load() {
			r.take() // space is not short: forget them
			continue
		}
		began := time.Now()
		s.reclaimDeleted(ctx)
		next = time.Now().Add(reclaimSpacing * time.Since(began))
	}
}

// gather waits for the deletions of a drain: until reclaimQuiet passes
// without one, or reclaimMaxWait in all. It returns false if ctx ended.
func (r *reclaimer) gather(ctx context.Context) bool {
	limit := time.NewTimer(reclaimMaxWait)
	defer limit.Stop()
	quiet := time.NewTimer(reclaimQuiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-limit.C:
			return true
		case <-quiet.C:
			return true
		case <-r.poke:
			quiet.Reset(reclaimQuiet) // Go 1.23 timers: no stale value to drain
		}
	}
}

// reclaimDeleted compacts the body and record ranges of the messages
// deleted since the last reclaim.
func (s *Store) reclaimDeleted(ctx context.Context) {
	lo, hi, bytes := s.reclaim.take()
	if lo == "" {
		return
	}
	freeBefore, _ := diskspace.Free(s.dir)
	began := time.Now()
	bodyLo, _ := bodyBounds(lo)
	_, bodyHi := bodyBounds(hi)
	err := s.db.Compact(ctx, bodyLo, bodyHi, false)
	if err == nil {
		err = s.db.Compact(ctx, metaKey(lo), append(metaKey(hi), 0), false)
	}
	freeAfter, _ := diskspace.Free(s.dir)
	ev := s.log.Debug()
	if err != nil {
		ev = s.log.Warn().Err(err)
	}
	ev.Int64("deleted_bytes", bytes).Int64("free_before", freeBefore).Int64("free_after", freeAfter).
		Dur("took", time.Since(began)).Msg("queue: reclaimed the disk space of delivered mail")
}

// defaultReclaimBelow is Options.ReclaimBelow when it is 0, in multiples
// of the reserve.
const defaultReclaimBelow = 4
