package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// prefixWait is the index of messages deferred because their destination
// failed (doc.go, "Key layout"): w/<destination> 0x00 <id>, empty value.
// The message's schedule entry then holds the destination's name as its
// value, so that whatever rewrites or deletes the entry removes the index
// entry in the same batch.
const prefixWait = "w/"

func waitKey(dest string, id ID) []byte {
	k := make([]byte, 0, len(prefixWait)+len(dest)+1+len(id))
	k = append(append(append(k, prefixWait...), dest...), 0)
	return append(k, id...)
}

// waitBounds returns [lower, upper) covering every index entry of dest.
func waitBounds(dest string) (lower, upper []byte) {
	lower = append(append([]byte(prefixWait), dest...), 0)
	upper = append(append([]byte(prefixWait), dest...), 1)
	return lower, upper
}

// indexWait adds to b the index of id, whose schedule entry is at due, as
// waiting for dest. Names too long for a key are not indexed: the message
// then waits for its next attempt, as before.
func (s *Store) indexWait(b *writeBatch, id ID, due time.Time, dest string) error {
	if checkDestName(dest) != nil {
		return nil
	}
	s.mayWait.Store(true) // before the entry is committed, for unindexWait
	if err := b.Set(scheduleKey(due, id), []byte(dest), nil); err != nil {
		return err
	}
	return b.Set(waitKey(dest, id), nil, nil)
}

// unindexWait adds to b the removal of the index entry of id, whose
// record is r, if its schedule entry has one. Every change that moves or
// deletes a schedule entry calls it first.
func (s *Store) unindexWait(b *writeBatch, id ID, r *record) error {
	if r.Held || !s.mayWait.Load() {
		return nil // no schedule entry, or no index entry in the queue
	}
	dest, err := s.waitsFor(id, r.NextAttempt)
	if err != nil || dest == "" {
		return err
	}
	return b.Delete(waitKey(dest, id), nil)
}

// anyWaiting reports whether the queue holds an index entry (Open: until
// one is written, unindexWait reads no schedule entry, and a delivery's
// commit costs no extra read).
func (s *Store) anyWaiting() (bool, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixWait), UpperBound: prefixEnd(prefixWait)})
	if err != nil {
		return false, err
	}
	found := it.First()
	return found, errors.Join(it.Error(), it.Close())
}

// waitsFor returns the destination the schedule entry of id at due is
// indexed under, "" if none.
func (s *Store) waitsFor(id ID, due time.Time) (string, error) {
	v, closer, err := s.db.Get(scheduleKey(due, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("queue: schedule entry of %s: %w", id, err)
	}
	defer closer.Close()
	return string(v), nil
}

// PutWaiting is Put for a message deferred before it was first tried
// (at intake, while every host of its destination cools down): in the same
// batch it indexes the message as waiting for dest (see ReleaseDest), so
// that it is due as soon as dest takes mail again. dest "" is Put.
func (s *Store) PutWaiting(ctx context.Context, id ID, env *Envelope, body io.Reader, dest string) error {
	return s.put(ctx, id, env, body, dest)
}

// ReleaseDest makes up to limit messages indexed as waiting for dest due
// now, as a flush would, and removes them from the index: dest has taken
// mail again. It returns how many it released and whether more may be
// indexed. Index entries whose message is gone or no longer waits for
// dest are removed. Each message is its own batch, not synced of its own
// (a release lost in a crash leaves the messages to their backoff), so a
// release of many never holds up other writers for long.
func (s *Store) ReleaseDest(ctx context.Context, dest string, limit int) (released int, more bool, err error) {
	if err := checkDestName(dest); err != nil {
		return 0, false, err
	}
	lo, hi := waitBounds(dest)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, false, fmt.Errorf("queue: release %q: %w", dest, err)
	}
	var ids []ID
	for ok := it.First(); ok && len(ids) <= limit; ok = it.Next() {
		ids = append(ids, ID(it.Key()[len(lo):]))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return 0, false, fmt.Errorf("queue: release %q: %w", dest, err)
	}
	if more = len(ids) > limit; more {
		ids = ids[:limit]
	}
	for _, id := range ids {
		ok, err := s.release(ctx, id, dest)
		if err != nil {
			return released, true, err
		}
		if ok {
			released++
		}
	}
	if released > 0 {
		s.signal()
	}
	return released, more, nil
}

// release makes id due now if it still waits for dest, and removes its
// index entry either way. It reports whether id was made due.
func (s *Store) release(ctx context.Context, id ID, dest string) (bool, error) {
	b := s.newBatch()
	defer b.Close()
	r, unlock, err := s.locked(ctx, id)
	if errors.Is(err, ErrNotFound) {
		if err := b.Delete(waitKey(dest, id), nil); err != nil {
			return false, err
		}
		return false, s.commit(b, unsynced)
	}
	if err != nil {
		return false, err
	}
	defer unlock()
	waits := ""
	if !r.Held {
		if waits, err = s.waitsFor(id, r.NextAttempt); err != nil {
			return false, err
		}
	}
	if waits != dest {
		if err := b.Delete(waitKey(dest, id), nil); err != nil {
			return false, err
		}
		return false, s.commit(b, unsynced)
	}
	nr := *r
	nr.NextAttempt = s.now()
	for _, i := range nr.Pending() { // its backoff starts again (Released)
		nr.Released = max(nr.Released, nr.Recipients[i].Attempts)
	}
	if err := s.rewriteLocked(b, id, r, &nr); err != nil { // removes the index entry
		return false, err
	}
	return true, s.commit(b, unsynced)
}
