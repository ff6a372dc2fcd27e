package queue

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDueFindsEntriesWrittenBeforeTheLastScanStart: Due starts where the
// previous scan met its first live entry; an entry written since with an
// earlier due time must still be found.
func TestDueFindsEntriesWrittenBeforeTheLastScanStart(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := openTest(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	later := envelope("a@x.invalid", "b@y.invalid")
	later.NextAttempt = now.Add(time.Hour)
	if err := s.Put(ctx, s.NewID(), later, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if ids, _, _ := s.Due(now, 10, nil); len(ids) != 0 {
		t.Fatalf("due = %v, want none", ids)
	}
	early := s.NewID()
	env := envelope("a@x.invalid", "b@y.invalid")
	env.NextAttempt = now.Add(-time.Minute)
	if err := s.Put(ctx, early, env, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if ids, _, _ := s.Due(now, 10, nil); len(ids) != 1 || ids[0] != early {
		t.Fatalf("due = %v, want [%s]", ids, early)
	}
}

// TestDueNeverLosesConcurrentWrites runs writers against a scheduler loop
// that takes what is due and completes it; every message written must be
// handed out, whatever the interleaving.
func TestDueNeverLosesConcurrentWrites(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	const writers, each = 4, 150
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := s.Put(ctx, s.NewID(), envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("x")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[ID]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < writers*each && time.Now().Before(deadline) {
		ids, _, err := s.Due(time.Now().Add(time.Hour), 7, func(id ID) bool { return seen[id] })
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			seen[id] = true
			m, err := s.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			m.Recipients[0].State = Delivered
			if err := s.Update(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if len(seen) != writers*each {
		t.Fatalf("Due handed out %d of %d messages", len(seen), writers*each)
	}
	if n := s.Messages(); n != 0 {
		t.Fatalf("%d messages left", n)
	}
}
