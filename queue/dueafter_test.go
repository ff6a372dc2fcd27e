package queue

import (
	"context"
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
	if err != nil || len(ids) != 2 || ids[0] != a || ids[1] != b {
		t.Fatalf("first scan: %v, %v; want [%s %s]", ids, err, a, b)
	}
	ids, _, cur, err = s.DueAfter(now, cur, 10, nil)
	if err != nil || len(ids) != 1 || ids[0] != c {
		t.Fatalf("from the cursor: %v, %v; want [%s]", ids, err, c)
	}
	// Committed now, due before the cursor.
	late := put(base.Add(-time.Second))
	ids, _, cur, err = s.DueAfter(now, cur, 10, func(id ID) bool { return id == a || id == b || id == c })
	if err != nil || len(ids) != 1 || ids[0] != late {
		t.Fatalf("after a late commit: %v, %v; want [%s]", ids, err, late)
	}
	// A cursor scan that passes over a new entry (skip) took its note;
	// the next full scan still finds it.
	later := put(base.Add(-2 * time.Second))
	if ids, _, _, err = s.DueAfter(now, cur, 10, func(ID) bool { return true }); err != nil || len(ids) != 0 {
		t.Fatalf("cursor scan skipping the new entry: %v, %v", ids, err)
	}
	if ids, _, err = s.Due(now, 10, nil); err != nil || len(ids) != 5 || ids[0] != later {
		t.Fatalf("full scan: %v, %v; want all 5, %s first", ids, err, later)
	}
}
