package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// fromPebble reads id's record and body past the recent cache.
func fromPebble(t *testing.T, s *Store, id ID) (*Message, []byte) {
	t.Helper()
	s.recent.drop(id)
	m, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get %s from Pebble: %v", id, err)
	}
	return m, readAll(t, s, id)
}

// cached reports whether id's record is served from the recent cache.
func cached(s *Store, id ID) bool {
	var r record
	ok, _ := s.recent.record(id, &r)
	return ok
}

func TestRecentServesWhatPebbleHolds(t *testing.T) {
	s := openTest(t, Options{ChunkSize: 1000})
	ctx := context.Background()
	for _, size := range []int{0, 1, 999, 1000, 1001, 2000, 2500, recentBytes / 32, recentBytes/16 + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := bytes.Repeat([]byte("x"), size)
			id := s.NewID()
			env := envelope("a@example.org", "b@example.net", "c@example.net")
			env.Recipients[1].Notify = "NEVER"
			env.EnvID, env.Client = "env-1", "[127.0.0.1] helo"
			if err := s.Put(ctx, id, env, bytes.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			if want := size <= recentBytes/16; cached(s, id) != want {
				t.Fatalf("cached = %v after a Put of %d bytes with 1000-byte chunks, want %v", !want, size, want)
			}
			got, err := s.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			gotBody := readAll(t, s, id)
			want, wantBody := fromPebble(t, s, id)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Get served\n%+v\nPebble holds\n%+v", got, want)
			}
			if !bytes.Equal(gotBody, wantBody) || !bytes.Equal(gotBody, body) {
				t.Errorf("Body served %d bytes, Pebble holds %d, %d were put", len(gotBody), len(wantBody), len(body))
			}
		})
	}
}

// Every change to a message after its Put must be seen by the next read:
// the cache forgets a message whose record is rewritten or deleted.
func TestRecentForgetsChangedMessages(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	put := func() ID {
		id := s.NewID()
		if err := s.Put(ctx, id, envelope("a@example.org", "b@example.net", "c@example.net"), bytes.NewReader([]byte("hi\r\n"))); err != nil {
			t.Fatal(err)
		}
		if !cached(s, id) {
			t.Fatal("a new small message is not in the recent cache")
		}
		return id
	}

	id := put()
	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	m.Recipients[0].State = Delivered
	m.Recipients[0].Attempts = 1
	m.Recipients[1].LastReply = "451 4.4.1 later"
	m.NextAttempt = time.Now().Add(time.Hour)
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Recipients[0].State != Delivered || got.Recipients[1].LastReply != "451 4.4.1 later" || !got.NextAttempt.Equal(m.NextAttempt) {
		t.Errorf("after Update, Get gives %+v", got.Envelope)
	}
	if ids, _, _ := s.Due(time.Now(), 10, nil); len(ids) != 0 {
		t.Errorf("Due after a reschedule an hour ahead = %v", ids)
	}

	// The worker's copy must not be the cache's: changing it changes nothing stored.
	id2 := put()
	m2, _ := s.Get(id2)
	m2.Recipients[0].State = Bounced
	again, _ := s.Get(id2)
	if again.Recipients[0].State != Pending {
		t.Error("a change to Get's result showed in the next Get")
	}

	if err := s.Hold(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Get(id2); !h.Held {
		t.Error("Get after Hold does not show the hold")
	}

	id3 := put()
	if err := s.Delete(ctx, id3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(id3); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	checkNoBody(t, s, id3)

	id4 := put()
	m4, _ := s.Get(id4)
	for i := range m4.Recipients {
		m4.Recipients[i].State = Delivered
	}
	if err := s.Update(ctx, m4); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(id4); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after the final Update: %v, want ErrNotFound", err)
	}
}

func TestRecentPendingEntriesAreInvisible(t *testing.T) {
	c := newRecent()
	r := &record{Envelope: *envelope("a@example.org", "b@example.net"), Chunks: 1}
	enc, err := appendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	c.add("x", enc, []byte("body"))
	var got record
	if ok, _ := c.record("x", &got); ok || c.body("x") != nil {
		t.Fatal("a pending entry (its Put not committed) was served")
	}
	c.committed("x")
	if ok, err := c.record("x", &got); !ok || err != nil || got.Recipients[0].Addr != "b@example.net" {
		t.Fatalf("committed entry: ok=%v err=%v %+v", ok, err, got)
	}
	c.add("y", enc, []byte("body"))
	c.drop("y") // rewritten before its Put's commit returned
	c.committed("y")
	if ok, _ := c.record("y", &got); ok {
		t.Fatal("an entry dropped while pending came back when its Put committed")
	}
}

func TestRecentIsBounded(t *testing.T) {
	c := newRecent()
	enc, err := appendRecord(nil, &record{Envelope: *envelope("a@example.org", "b@example.net")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * recentEntries {
		id := ID(fmt.Sprint(i))
		c.add(id, enc, nil)
		c.committed(id)
		if i%3 == 0 {
			c.drop(id) // dropped entries leave stale slots in the ring
		}
	}
	if len(c.entries) > recentEntries || c.n > recentEntries {
		t.Errorf("%d entries, %d ring slots used; the bound is %d", len(c.entries), c.n, recentEntries)
	}
	if ok, _ := c.record(ID(fmt.Sprint(3*recentEntries-1)), new(record)); !ok {
		t.Error("the newest entry was evicted")
	}
	if ok, _ := c.record("1", new(record)); ok {
		t.Error("the oldest entry is still there")
	}

	big := bytes.Repeat([]byte("b"), recentBytes/16)
	for i := range 100 {
		c.add(ID(fmt.Sprint("big", i)), enc, big)
	}
	if c.bytes > recentBytes {
		t.Errorf("%d body bytes held; the bound is %d", c.bytes, recentBytes)
	}
	c.add("huge", enc, make([]byte, recentBytes/16+1))
	if _, ok := c.entries["huge"]; ok {
		t.Error("a body over a sixteenth of the bound was kept")
	}
}
