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
