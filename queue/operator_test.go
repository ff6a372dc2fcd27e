package queue

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// TestOperatorRescheduleDuringAnAttemptWins: a flush, bounce or release
// while an attempt is in flight (between its Get and its Update) is not
// undone by the attempt's Update, which carries the worker's copy of
// NextAttempt; without one the worker's time is written, also when the
// same message is updated twice.
func TestOperatorRescheduleDuringAnAttemptWins(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	later := clock.Add(time.Hour)
	cases := []struct {
		name     string
		operator func(ID) error
		want     time.Time // the stored NextAttempt after the attempt's Update
	}{
		{"none", func(ID) error { return nil }, later},
		{"flush", func(id ID) error { return s.Flush(ctx, id) }, clock.Add(time.Minute)},
		{"bounce", func(id ID) error { return s.Bounce(ctx, id) }, clock.Add(time.Minute)},
		{"hold and release", func(id ID) error {
			if err := s.Hold(ctx, id); err != nil {
				return err
			}
			return s.Release(ctx, id)
		}, clock.Add(time.Minute)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := putOne(t, s) // due at clock
			clock = clock.Add(time.Minute)
			if err := c.operator(m.ID); err != nil {
				t.Fatal(err)
			}
			m.Recipients[0].Attempts++
			m.NextAttempt = later
			if err := s.Update(ctx, m); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !got.NextAttempt.Equal(c.want) || !m.NextAttempt.Equal(c.want) {
				t.Fatalf("stored NextAttempt %s, the worker's copy %s; want %s", got.NextAttempt, m.NextAttempt, c.want)
			}
			if got.Recipients[0].Attempts != 1 {
				t.Fatalf("the attempt's verdict was not written: %d attempts", got.Recipients[0].Attempts)
			}
			// The same m updated again writes its own time.
			m.NextAttempt = later.Add(time.Hour)
			if err := s.Update(ctx, m); err != nil {
				t.Fatal(err)
			}
			if got, _ = s.Get(m.ID); !got.NextAttempt.Equal(later.Add(time.Hour)) {
				t.Fatalf("second update: stored NextAttempt %s, want %s", got.NextAttempt, later.Add(time.Hour))
			}
			clock = clock.Add(-time.Minute)
		})
	}
}

// checkNoBody fails unless id has neither a record nor a first body chunk
// (Body finds a chunk 0 even without a record).
func checkNoBody(t *testing.T, s *Store, id ID) {
	t.Helper()
	rc, err := s.Body(id)
	if err == nil {
		b, _ := io.ReadAll(rc)
		rc.Close()
		t.Fatalf("body of %s left behind: %d bytes", id, len(b))
	}
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Body(%s): %v, want ErrNotFound", id, err)
	}
}

// TestChangesCountsOperatorStateChanges: a hold, the release of a held
// message, a bounce and a delete bump Changes, so a reader of a message
// can tell its copy still has the stored operator state; Put, Update, a
// flush and ReleaseDest do not (Update reconciles what they change), nor a
// change that changes nothing.
func TestChangesCountsOperatorStateChanges(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	m := putOne(t, s)
	step := func(name string, bumps bool, change func() error) {
		t.Helper()
		before := s.Changes()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := s.Changes() != before; got != bumps {
			t.Fatalf("%s: Changes bumped %v, want %v", name, got, bumps)
		}
	}
	step("put", false, func() error { putOne(t, s); return nil })
	step("update", false, func() error {
		m.NextAttempt, m.WaitsFor = clock.Add(time.Hour), "smarthost:h:25"
		return s.Update(ctx, m)
	})
	step("release of waiting mail", false, func() error { _, _, err := s.ReleaseDest(ctx, "smarthost:h:25", 10); return err })
	step("hold", true, func() error { return s.Hold(ctx, m.ID) })
	step("hold again (no change)", false, func() error { return s.Hold(ctx, m.ID) })
	step("release", true, func() error { return s.Release(ctx, m.ID) })
	step("flush", false, func() error { clock = clock.Add(time.Minute); return s.Flush(ctx, m.ID) })
	step("bounce", true, func() error { return s.Bounce(ctx, m.ID) })
	step("delete", true, func() error { return s.Delete(ctx, m.ID) })
}

// TestUpdateKeepsAReleaseSinceGet: a copy read before its destination's
// return released it (ReleaseDest sets Released) does not take Released
// back when it is updated.
func TestUpdateKeepsAReleaseSinceGet(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openTest(t, Options{Now: func() time.Time { return clock }})
	m := putOne(t, s)
	m.Recipients[0].Attempts = 3
	m.NextAttempt, m.WaitsFor = clock.Add(time.Hour), "smarthost:h:25"
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	stale, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if n, _, err := s.ReleaseDest(ctx, "smarthost:h:25", 10); n != 1 || err != nil {
		t.Fatalf("released %d, %v; want 1", n, err)
	}
	stale.Recipients[0].Attempts++
	stale.NextAttempt = clock.Add(2 * time.Hour)
	if err := s.Update(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(m.ID); got.Released != 3 || got.Recipients[0].Attempts != 4 {
		t.Fatalf("after the stale copy's update: released at %d, %d attempts; want 3 and 4", got.Released, got.Recipients[0].Attempts)
	}
}
