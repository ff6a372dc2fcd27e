package queue

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// waitEntries counts the w/ index entries.
func waitEntries(t *testing.T, s *Store) int {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixWait), UpperBound: prefixEnd(prefixWait)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}

// TestReleaseDestMakesTheMailWaitingForADestinationDue: messages deferred
// because a destination failed (Update with WaitsFor, or PutWaiting) are made
// due by ReleaseDest, in batches; one deferred since for a reason of its
// own, or deleted, is not, and leaves no index entry behind.
func TestReleaseDestMakesTheMailWaitingForADestinationDue(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	later := clock.Add(time.Hour)
	deferFor := func(m *Message, dest string) {
		t.Helper()
		m.Recipients[0].Attempts++
		m.NextAttempt, m.WaitsFor = later, dest
		if err := s.Update(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	m1, m2, m4 := putOne(t, s), putOne(t, s), putOne(t, s)
	deferFor(m1, "smarthost:h:25")
	deferFor(m2, "smarthost:h:25")
	deferFor(m2, "")              // then deferred by a 452 4.2.2 of its own
	m3 := &Message{ID: s.NewID()} // put off at intake
	env := envelope("a@x.invalid", "b@y.invalid")
	env.NextAttempt = later
	if err := s.PutWaiting(ctx, m3.ID, env, strings.NewReader("hi"), "smarthost:h:25"); err != nil {
		t.Fatal(err)
	}
	deferFor(m4, "smarthost:h:25")
	if err := s.Delete(ctx, m4.ID); err != nil {
		t.Fatal(err)
	}
	if n := waitEntries(t, s); n != 2 {
		t.Fatalf("%d index entries, want 2 (m1, m3)", n)
	}
	if n, more, err := s.ReleaseDest(ctx, "smarthost:h:25", 1); n != 1 || !more || err != nil {
		t.Fatalf("first release: %d, more %v, %v; want 1 and more", n, more, err)
	}
	if n, more, err := s.ReleaseDest(ctx, "smarthost:h:25", 10); n != 1 || more || err != nil {
		t.Fatalf("second release: %d, more %v, %v; want 1 and no more", n, more, err)
	}
	due, _, err := s.Due(clock, 10, nil)
	if err != nil || len(due) != 2 || !(due[0] == m1.ID && due[1] == m3.ID || due[0] == m3.ID && due[1] == m1.ID) {
		t.Fatalf("due after the release: %v, %v; want m1 and m3", due, err)
	}
	if n := waitEntries(t, s); n != 0 {
		t.Fatalf("%d index entries left after the release", n)
	}
	if got, _ := s.Get(m2.ID); !got.NextAttempt.Equal(later) || got.Released != 0 {
		t.Fatalf("m2, deferred for a reason of its own, due at %s (released at %d attempts), want %s and never released", got.NextAttempt, got.Released, later)
	}
	// The released message's backoff starts again from where it was
	// released: its attempts so far, which it keeps.
	if got, _ := s.Get(m1.ID); got.Released != 1 || got.Recipients[0].Attempts != 1 {
		t.Fatalf("m1 released at %d attempts with %d attempts; want 1 and 1", got.Released, got.Recipients[0].Attempts)
	}
}
