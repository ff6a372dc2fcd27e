package queue

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// crashImage reopens what a crash right now would leave of fs: every byte
// not synced is lost.
func crashImage(t *testing.T, fs *vfs.MemFS) *Store {
	t.Helper()
	s, err := Open("q", Options{FS: fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})})
	if err != nil {
		t.Fatalf("reopening crash image: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openCrashable opens a queue on a memory file system that can be
// crashed (crashImage).
func openCrashable(t *testing.T) (*Store, *vfs.MemFS) {
	t.Helper()
	fs := vfs.NewCrashableMem()
	s, err := Open("q", Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, fs
}

func putOne(t *testing.T, s *Store) *Message {
	t.Helper()
	id := s.NewID()
	if err := s.Put(context.Background(), id, envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// With no other writer, a shared commit syncs the WAL itself: what Update
// returned for survives a crash that loses every unsynced byte.
func TestSharedUpdateIsDurableAlone(t *testing.T) {
	s, fs := openCrashable(t)
	m := putOne(t, s)
	m.Recipients[0].State = Delivered
	if err := s.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if _, err := crashImage(t, fs).Get(m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delivered message after a crash: %v, want ErrNotFound (its deletion was lost)", err)
	}
}

// A shared commit waits for the next synced commit, not for its own sync,
// and is durable when it returns.
func TestSharedUpdateRidesOnTheNextPut(t *testing.T) {
	s, fs := openCrashable(t)
	s.shareWait = time.Hour // it must not sync by itself
	m := putOne(t, s)
	m.Recipients[0].State = Delivered
	done := make(chan error, 1)
	go func() { done <- s.Update(context.Background(), m) }()
	for i := 0; s.share.written.Load() == 0; i++ {
		if i == 5000 {
			t.Fatal("the update was not written within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Update returned (%v) before any sync covered it", err)
	default:
	}
	if got, err := crashImage(t, fs).Get(m.ID); err != nil || got.Recipients[0].State != Pending {
		t.Fatalf("before its sync, a crash must leave the message pending: %v, %v", got, err)
	}
	other := putOne(t, s) // a synced commit: it covers the update
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Update still waiting after the next synced Put returned")
	}
	img := crashImage(t, fs)
	if _, err := img.Get(m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delivered message after a crash: %v, want ErrNotFound", err)
	}
	if _, err := img.Get(other.ID); err != nil {
		t.Fatalf("the other message after a crash: %v", err)
	}
}

// Writers put messages and deliver their two recipients one Update at a
// time, while crash images are taken. Each message's progress is read
// before and after an image is taken, and the image must hold it at a
// stage between the two, or one further (an Update in flight may be in
// the image already): every acknowledged Put is there, whole, unless a
// returned or in-flight Update deleted it; every returned Update is there.
func TestCrashKeepsEveryReturnedUpdate(t *testing.T) {
	s, fs := openCrashable(t)
	const body = "hi"
	var (
		mu    sync.Mutex
		stage = map[ID]int{}
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// The writers stop before the store closes (t.Cleanup), also when the
	// test fails.
	defer func() { cancel(); wg.Wait() }()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300 && ctx.Err() == nil; i++ {
				id := s.NewID()
				if s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid", "c@y.invalid"), strings.NewReader(body)) != nil {
					return
				}
				mu.Lock()
				stage[id] = stagePut
				mu.Unlock()
				for r, st := range []int{stageFirstDone, stageDeleted} {
					m, err := s.Get(id)
					if err != nil {
						return
					}
					m.Recipients[r].State = Delivered
					if s.Update(ctx, m) != nil {
						return
					}
					mu.Lock()
					stage[id] = st
					mu.Unlock()
				}
			}
		}()
	}
	snapshot := func() map[ID]int {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[ID]int, len(stage))
		for id, st := range stage {
			out[id] = st
		}
		return out
	}
	rng := rand.New(rand.NewPCG(7, 7))
	var checked int
	for c := 0; c < 6; c++ {
		time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond) // spacing only; nothing waits on it
		before := snapshot()
		img := crashImage(t, fs)
		after := snapshot()
		for id, lo := range before {
			got := imageStage(t, img, id, body)
			if hi := after[id] + 1; got < lo || got > hi {
				t.Fatalf("image %d: %s is at stage %s, want %s to %s", c, id, stageName(got), stageName(lo), stageName(min(hi, stageDeleted)))
			}
		}
		checked += len(before)
		t.Logf("image %d: %d acknowledged messages checked", c, len(before))
	}
	if checked == 0 {
		t.Fatal("no message was acknowledged before an image was taken: the test proves nothing")
	}
}

// The stages of a message in TestCrashKeepsEveryReturnedUpdate.
const (
	stagePut       = 1 // Put returned
	stageFirstDone = 2 // the Update that delivered the first recipient returned
	stageDeleted   = 3 // the Update that delivered the second (final) returned
)

func stageName(st int) string {
	return [...]string{"never put", "put", "first recipient delivered", "deleted"}[st]
}

// imageStage is the stage id is at in img: deleted if its record is gone;
// a record there must have its body whole.
func imageStage(t *testing.T, img *Store, id ID, body string) int {
	t.Helper()
	m, err := img.Get(id)
	switch {
	case errors.Is(err, ErrNotFound):
		return stageDeleted
	case err != nil:
		t.Fatalf("reading %s from a crash image: %v", id, err)
	}
	if got := readAll(t, img, id); string(got) != body {
		t.Fatalf("%s in a crash image has the body %q, want %q", id, got, body)
	}
	if m.Recipients[1].State == Delivered {
		t.Fatalf("%s in a crash image has its second recipient delivered but is not deleted", id)
	}
	if m.Recipients[0].State == Delivered {
		return stageFirstDone
	}
	return stagePut
}
