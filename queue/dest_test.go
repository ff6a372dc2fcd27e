package queue

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestDestStateSurvivesReopenAndStaysApartFromMessages(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.SetDest(ctx, "mx:mx1.example,mx2.example", []byte(`{"cap":4}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDest(ctx, "smarthost:smtp.isp.example:587", []byte(`{"cap":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDest(ctx, "mx:mx1.example,mx2.example", []byte(`{"cap":3}`)); err != nil {
		t.Fatal(err)
	}
	id := s.NewID()
	if err := s.Put(ctx, id, envelope("a@example.org", "b@example.net"), strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.Counted()
	if n := s.Messages(); n != 1 {
		t.Errorf("%d messages counted after reopen, want 1: d/ keys are no messages", n)
	}
	all, err := s.Dests()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"mx:mx1.example,mx2.example": `{"cap":3}`, "smarthost:smtp.isp.example:587": `{"cap":1}`}
	if len(all) != len(want) {
		t.Fatalf("Dests() = %q, want %q", all, want)
	}
	for k, v := range want {
		if string(all[k]) != v {
			t.Errorf("Dests()[%q] = %q, want %q", k, all[k], v)
		}
	}
	v, err := s.Dest("smarthost:smtp.isp.example:587")
	if err != nil || string(v) != `{"cap":1}` {
		t.Errorf("Dest = %q, %v", v, err)
	}
	if err := s.DeleteDest(ctx, "smarthost:smtp.isp.example:587"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Dest("smarthost:smtp.isp.example:587"); !errors.Is(err, ErrNoDest) {
		t.Errorf("Dest after DeleteDest: %v, want ErrNoDest", err)
	}
	if due, _, err := s.Due(s.now(), 10, nil); err != nil || len(due) != 1 || due[0] != id {
		t.Errorf("Due = %v, %v: destination state must not show up as due mail", due, err)
	}
}

func TestSetDestRefusesEmptyNameAndDoneContext(t *testing.T) {
	s := openTest(t, Options{})
	if err := s.SetDest(context.Background(), "", []byte("x")); err == nil {
		t.Error("SetDest with an empty name succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.SetDest(ctx, "mx:a", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("SetDest with a cancelled ctx: %v", err)
	}
	if _, err := s.Dest("mx:a"); !errors.Is(err, ErrNoDest) {
		t.Errorf("Dest of a never-set destination: %v, want ErrNoDest", err)
	}
}
