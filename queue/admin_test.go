package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// adminFixture is a store on a settable clock.
type adminFixture struct {
	s   *Store
	now time.Time
}

func newAdminFixture(t *testing.T) *adminFixture {
	f := &adminFixture{now: time.Unix(1_800_000_000, 0)}
	f.s = openTest(t, Options{Now: func() time.Time { return f.now }})
	return f
}

// put queues a message from from to rcpts, due after delay, and returns its ID.
func (f *adminFixture) put(t *testing.T, from string, delay time.Duration, body string, rcpts ...string) ID {
	t.Helper()
	id := f.s.NewID()
	env := envelope(from, rcpts...)
	env.NextAttempt = f.now.Add(delay)
	if err := f.s.Put(context.Background(), id, env, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(time.Second) // distinct Received times
	return id
}

func (f *adminFixture) due(t *testing.T) map[ID]bool {
	t.Helper()
	ids, _, err := f.s.Due(f.now, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	set := map[ID]bool{}
	for _, id := range ids {
		set[id] = true
	}
	return set
}

func ids(ms []Message) []ID {
	var out []ID
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestListFiltersByDomainSenderStateAndAge(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()
	old := f.put(t, "app@shop.invalid", 5*time.Hour, "x", "a@dest.invalid")
	f.now = f.now.Add(2 * time.Hour)
	deferred := f.put(t, "cron@ops.invalid", 10*time.Minute, "x", "b@other.invalid", "c@DEST.invalid")
	active := f.put(t, "app@shop.invalid", -time.Second, "x", "d@other.invalid")
	bounce := f.put(t, "", 0, "x", "app@shop.invalid")
	held := f.put(t, "cron@ops.invalid", 0, "x", "e@dest.invalid")
	if err := f.s.Hold(ctx, held); err != nil {
		t.Fatal(err)
	}
	// A delivered recipient no longer makes its message match its domain.
	m, _ := f.s.Get(deferred)
	m.Recipients[1].State = Delivered
	if err := f.s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		f    Filter
		want []ID
	}{
		{"all", Filter{}, []ID{old, deferred, active, bounce, held}},
		{"domain, any case, pending recipients only", Filter{Domain: "Dest.Invalid."}, []ID{old, held}},
		{"sender address", Filter{Sender: "APP@shop.invalid"}, []ID{old, active}},
		{"sender domain", Filter{Sender: "@ops.invalid"}, []ID{deferred, held}},
		{"null sender", Filter{Sender: "<>"}, []ID{bounce}},
		{"active", Filter{State: StateActive}, []ID{active, bounce}},
		{"deferred", Filter{State: StateDeferred}, []ID{old, deferred}},
		{"held", Filter{State: StateHeld}, []ID{held}},
		{"older than an hour", Filter{OlderThan: time.Hour}, []ID{old}},
		{"combined", Filter{Domain: "other.invalid", State: StateActive}, []ID{active}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.s.List(tc.f, "", 100)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(ids(got)) != fmt.Sprint(tc.want) {
				t.Fatalf("List = %v, want %v", ids(got), tc.want)
			}
		})
	}
}

func TestListPagesByIDInAgeOrder(t *testing.T) {
	f := newAdminFixture(t)
	var all []ID
	for i := 0; i < 25; i++ {
		rcpt := "r@even.invalid"
		if i%2 == 1 {
			rcpt = "r@odd.invalid"
		}
		all = append(all, f.put(t, "a@x.invalid", 0, "x", rcpt))
	}
	var got []ID
	after := ID("")
	for pages := 0; pages < 10; pages++ {
		page, err := f.s.List(Filter{Domain: "odd.invalid"}, after, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 5 {
			t.Fatalf("page of %d > limit 5", len(page))
		}
		got = append(got, ids(page)...)
		if len(page) < 5 {
			break
		}
		after = page[len(page)-1].ID
	}
	var want []ID
	for i := 1; i < len(all); i += 2 {
		want = append(want, all[i])
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("paged = %v\nwant    %v", got, want)
	}
	if _, err := f.s.List(Filter{}, "not-an-id", 5); err == nil {
		t.Fatal("List after an invalid ID succeeded")
	}
	if _, err := f.s.List(Filter{}, "", 0); err == nil {
		t.Fatal("List with limit 0 succeeded")
	}
}

func TestHoldKeepsMessageOutOfScheduleAcrossReopenUntilRelease(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	s, err := Open(dir, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := s.NewID()
	env := envelope("a@x.invalid", "b@y.invalid")
	env.NextAttempt = now.Add(time.Hour)
	if err := s.Put(ctx, id, env, strings.NewReader("body")); err != nil {
		t.Fatal(err)
	}
	if err := s.Hold(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := s.Hold(ctx, id); err != nil {
		t.Fatalf("holding a held message: %v", err)
	}
	if err := s.Flush(ctx, id); !errors.Is(err, ErrHeld) {
		t.Fatalf("Flush of a held message = %v, want ErrHeld", err)
	}
	s.Close()
	if s, err = Open(dir, Options{Now: clock}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if due, _, _ := s.Due(now.Add(48*time.Hour), 10, nil); len(due) != 0 {
		t.Fatalf("held message due after reopen: %v", due)
	}
	m, err := s.Get(id)
	if err != nil || !m.Held || m.QueueState(now) != StateHeld {
		t.Fatalf("after reopen: %+v, %v", m, err)
	}
	// An attempt that was in flight when the hold came commits: still held.
	m.Recipients[0].Attempts++
	m.NextAttempt = now
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	if due, _, _ := s.Due(now.Add(48*time.Hour), 10, nil); len(due) != 0 {
		t.Fatalf("held message due after an Update: %v", due)
	}
	now = now.Add(time.Minute)
	if err := s.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	due, _, _ := s.Due(now, 10, nil)
	if len(due) != 1 || due[0] != id {
		t.Fatalf("due after release = %v, want [%s]", due, id)
	}
	if m, _ := s.Get(id); m.Held || !m.NextAttempt.Equal(now) {
		t.Fatalf("after release: held=%v next=%v", m.Held, m.NextAttempt)
	}
	if err := s.Release(ctx, id); err != nil {
		t.Fatalf("releasing a released message: %v", err)
	}
}

func TestFlushMakesDueNowDespiteBackoffAndWakes(t *testing.T) {
	f := newAdminFixture(t)
	id := f.put(t, "a@x.invalid", 10*time.Minute, "x", "b@y.invalid")
	if f.due(t)[id] {
		t.Fatal("due before the flush")
	}
	select { // drain the Put's signal
	case <-f.s.Wake():
	default:
	}
	if err := f.s.Flush(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if !f.due(t)[id] {
		t.Fatal("not due after the flush")
	}
	select {
	case <-f.s.Wake():
	default:
		t.Fatal("Flush did not wake the scheduler")
	}
	ids, _, _ := f.s.Due(f.now.Add(time.Hour), 10, nil)
	if len(ids) != 1 {
		t.Fatalf("schedule has %d entries for one message", len(ids))
	}
}

func TestDeleteRemovesMessageBodyScheduleAndCounts(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()
	keep := f.put(t, "a@x.invalid", 0, "12345", "b@y.invalid")
	gone := f.put(t, "a@x.invalid", 0, "1234567890", "b@y.invalid", "c@y.invalid")
	heldGone := f.put(t, "a@x.invalid", 0, "123", "b@y.invalid")
	if err := f.s.Hold(ctx, heldGone); err != nil {
		t.Fatal(err)
	}
	for _, id := range []ID{gone, heldGone} {
		if err := f.s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after Delete: %v", err)
		}
		checkNoBody(t, f.s, id)
	}
	if due := f.due(t); len(due) != 1 || !due[keep] {
		t.Fatalf("due after delete = %v", due)
	}
	if f.s.Messages() != 1 || f.s.Bytes() != 5 {
		t.Fatalf("counters after delete: %d messages, %d bytes; want 1, 5", f.s.Messages(), f.s.Bytes())
	}
	if err := f.s.Delete(ctx, gone); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	// The worker's commit of an attempt that was in flight records nothing.
	m := &Message{ID: gone, Envelope: *envelope("a@x.invalid", "b@y.invalid")}
	if err := f.s.Update(ctx, m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update after Delete = %v, want ErrNotFound", err)
	}
	if f.s.Messages() != 1 {
		t.Fatalf("Messages() = %d after a late Update", f.s.Messages())
	}
}

func TestBounceMarksReleasesAndSchedulesNow(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()
	id := f.put(t, "a@x.invalid", time.Hour, "x", "b@y.invalid")
	if err := f.s.Hold(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Bounce(ctx, id); err != nil {
		t.Fatal(err)
	}
	m, err := f.s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if !m.BounceRequested || m.Held || m.QueueState(f.now) != StateActive {
		t.Fatalf("after Bounce: requested=%v held=%v state=%s", m.BounceRequested, m.Held, m.QueueState(f.now))
	}
	if !f.due(t)[id] {
		t.Fatal("a message to bounce is not due now")
	}
}

func TestOperatorActionsRejectUnknownAndInvalidIDs(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()
	unknown := f.s.NewID()
	for name, op := range map[string]func(context.Context, ID) error{
		"hold": f.s.Hold, "release": f.s.Release, "flush": f.s.Flush, "bounce": f.s.Bounce, "delete": f.s.Delete,
	} {
		for _, id := range []ID{unknown, "../../m/x", "", ID(strings.Repeat("g", 24))} {
			if err := op(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s(%q) = %v, want ErrNotFound", name, id, err)
			}
		}
	}
	if f.s.Messages() != 0 {
		t.Fatalf("Messages() = %d", f.s.Messages())
	}
}

func TestParseQueueState(t *testing.T) {
	for in, want := range map[string]QueueState{"": "", "Held": StateHeld, " active ": StateActive, "deferred": StateDeferred} {
		if got, err := ParseQueueState(in); err != nil || got != want {
			t.Errorf("ParseQueueState(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseQueueState("stuck"); err == nil {
		t.Error(`ParseQueueState("stuck") succeeded`)
	}
}

func TestListFiltersByMessageIDWithOrWithoutBrackets(t *testing.T) {
	s := newAdminFixture(t).s
	put := func(mid, subject string) ID {
		id := s.NewID()
		env := envelope("a@x.invalid", "b@y.invalid")
		env.MessageID, env.Subject = mid, subject
		if err := s.Put(context.Background(), id, env, strings.NewReader("body\r\n")); err != nil {
			t.Fatal(err)
		}
		return id
	}
	want := put("<Abc.1@app.example>", "Report")
	put("<abc.1@app.example>", "other case")
	put("<Abc.1@app.example.org>", "longer")
	put("", "none")
	for _, q := range []string{"<Abc.1@app.example>", "Abc.1@app.example", " <Abc.1@app.example> "} {
		got, err := s.List(Filter{MessageID: q}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].ID != want || got[0].Subject != "Report" || got[0].MessageID != "<Abc.1@app.example>" {
			t.Fatalf("Filter{MessageID: %q} selects %+v, want only %s", q, got, want)
		}
	}
	for _, q := range []string{"Abc.1", "<>", "<Abc.1@app.example"} {
		if got, err := s.List(Filter{MessageID: q}, "", 10); err != nil || len(got) != 0 {
			t.Fatalf("Filter{MessageID: %q} selects %v, %v", q, ids(got), err)
		}
	}
}
