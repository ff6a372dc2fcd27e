package queue

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"
)

// TestDueAfterResumesAtItsCursorAndSeesLateCommits: a scan from a cursor
// returns only what comes after it; an entry committed since with an
// earlier due time is still found (the later Put of an earlier Received);
// and the notes a cursor scan takes still count for the next full scan.
func TestDueAfterResumesAtItsCursorAndSeesLateCommits(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 20, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	put := func(at time.Time) ID {
		t.Helper()
		clock = at
		id := s.NewID()
		if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hi")); err != nil {
			t.Fatal(err)
		}
		return id
	}
	base := clock
	a, b, c := put(base), put(base.Add(time.Second)), put(base.Add(2*time.Second))
	now := base.Add(time.Minute)
	ids, _, cur, err := s.DueAfter(now, Cursor{}, 2, nil)
	if err != nil || len(ids) != 2 || ids[0].ID != a || ids[1].ID != b {
		t.Fatalf("first scan: %v, %v; want [%s %s]", ids, err, a, b)
	}
	ids, _, cur, err = s.DueAfter(now, cur, 10, nil)
	if err != nil || len(ids) != 1 || ids[0].ID != c {
		t.Fatalf("from the cursor: %v, %v; want [%s]", ids, err, c)
	}
	// Committed now, due before the cursor.
	late := put(base.Add(-time.Second))
	ids, _, cur, err = s.DueAfter(now, cur, 10, func(id ID) bool { return id == a || id == b || id == c })
	if err != nil || len(ids) != 1 || ids[0].ID != late || !ids[0].Due.Equal(base.Add(-time.Second)) {
		t.Fatalf("after a late commit: %v, %v; want [%s]", ids, err, late)
	}
	// A cursor scan that passes over a new entry (skip) took its note;
	// the next full scan still finds it.
	later := put(base.Add(-2 * time.Second))
	if ids, _, _, err = s.DueAfter(now, cur, 10, func(ID) bool { return true }); err != nil || len(ids) != 0 {
		t.Fatalf("cursor scan skipping the new entry: %v, %v", ids, err)
	}
	if all, _, err := s.Due(now, 10, nil); err != nil || len(all) != 5 || all[0] != later {
		t.Fatalf("full scan: %v, %v; want all 5, %s first", all, err, later)
	}
}

// TestRecheckShowsAnEntryPassedOver: a scan from a cursor passes over an
// entry before it (its message was in flight); the attempt writes
// nothing, so the next scan from the cursor does not see it, unless
// Recheck shows it. The same for an entry the attempt's commit wrote
// while a scan that took its note passed over it.
func TestRecheckShowsAnEntryPassedOver(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 20, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	var ids []ID
	for range 3 {
		clock = clock.Add(time.Second)
		id := s.NewID()
		if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hi")); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	now := clock.Add(time.Minute)
	inFlight := func(id ID) bool { return id == ids[0] }
	es, _, cur, err := s.DueAfter(now, Cursor{}, 10, inFlight)
	if err != nil || len(es) != 2 {
		t.Fatalf("first scan: %v, %v; want the 2 not in flight", es, err)
	}
	first, _, _, err := s.DueAfter(now, Cursor{}, 1, nil)
	if err != nil || len(first) != 1 || first[0].ID != ids[0] {
		t.Fatalf("entry of the message in flight: %v, %v", first, err)
	}
	if again, _, _, _ := s.DueAfter(now, cur, 10, nil); len(again) != 0 {
		t.Fatalf("from the cursor without a recheck: %v; want nothing (the test proves nothing otherwise)", again)
	}
	if err := s.Recheck(first[0].ID); err != nil {
		t.Fatal(err)
	}
	again, _, cur, err := s.DueAfter(now, cur, 10, func(id ID) bool { return id != ids[0] })
	if err != nil || len(again) != 1 || again[0].ID != ids[0] {
		t.Fatalf("from the cursor after Recheck: %v, %v; want [%s]", again, err, ids[0])
	}

	// Rescheduled while in flight, and a scan took the commit's note but
	// passed over the new entry (skipped): Recheck shows the new one.
	m, err := s.Get(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	m.NextAttempt = now.Add(-time.Millisecond)
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	known := func(ID) bool { return true } // ids[0] in flight, the others in lines
	if es, _, cur, err = s.DueAfter(now, cur, 10, known); err != nil || len(es) != 0 {
		t.Fatalf("scan while in flight: %v, %v", es, err)
	}
	if got := s.scan.minDue.Load(); got != math.MaxInt64 {
		t.Fatalf("a note left after the scan: %v", time.Unix(0, got))
	}
	if err := s.Recheck(ids[0]); err != nil {
		t.Fatal(err)
	}
	if es, _, _, err := s.DueAfter(now, cur, 10, func(id ID) bool { return id != ids[0] }); err != nil || len(es) != 1 || es[0].ID != ids[0] {
		t.Fatalf("from the cursor after Recheck of the rewritten entry: %v, %v; want [%s]", es, err, ids[0])
	}
}

// TestDueAfterLooksAheadOnlyASecond: past now, DueAfter looks for the next
// due time no further than lookAhead (a flush leaves a tombstone there for
// each message it made due, and walking them all at every scan cost a
// third of the CPU of a large drain); Due still answers exactly. An entry
// within the look-ahead is found.
func TestDueAfterLooksAheadOnlyASecond(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 20, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	now := clock
	far := now.Add(time.Hour)
	clock = far
	if err := s.Put(ctx, s.NewID(), envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	es, next, _, err := s.DueAfter(now, Cursor{}, 10, nil)
	if err != nil || len(es) != 0 || !next.Equal(now.Add(lookAhead)) {
		t.Fatalf("DueAfter = %v, next %v, %v; want nothing, next %v (look again then)", es, next, err, now.Add(lookAhead))
	}
	if _, next, err := s.Due(now, 10, nil); err != nil || !next.Equal(far) {
		t.Fatalf("Due's next = %v, %v; want %v", next, err, far)
	}
	// The bound left as the first live key must not hide an entry
	// written before it later.
	soon := now.Add(lookAhead / 2)
	clock = soon
	id := s.NewID()
	if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	if _, next, _, err := s.DueAfter(now, Cursor{}, 10, nil); err != nil || !next.Equal(soon) {
		t.Fatalf("DueAfter's next with an entry within the look-ahead = %v, %v; want %v", next, err, soon)
	}
	if es, _, _, err := s.DueAfter(soon, Cursor{}, 10, nil); err != nil || len(es) != 1 || es[0].ID != id {
		t.Fatalf("DueAfter at its due time = %v, %v; want [%s]", es, err, id)
	}
}
