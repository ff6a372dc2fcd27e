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
// time, while crash images are taken: every Update that had returned is in
// the image.
func TestCrashKeepsEveryReturnedUpdate(t *testing.T) {
	s, fs := openCrashable(t)
	const (
		put       = 1 // Put returned
		firstDone = 2 // the Update that delivered the first recipient returned
		deleted   = 3 // the Update that delivered the second (final) returned
	)
	var (
		mu    sync.Mutex
		stage = map[ID]int{}
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300 && ctx.Err() == nil; i++ {
				id := s.NewID()
				if s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid", "c@y.invalid"), strings.NewReader("hi")) != nil {
					return
				}
				mu.Lock()
				stage[id] = put
				mu.Unlock()
				for r, st := range []int{firstDone, deleted} {
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
	rng := rand.New(rand.NewPCG(7, 7))
	for c := 0; c < 6; c++ {
		time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond) // spacing only; nothing waits on it
		mu.Lock()
		snapshot := make(map[ID]int, len(stage))
		for id, st := range stage {
			snapshot[id] = st
		}
		mu.Unlock()
		img := crashImage(t, fs)
		var checked int
		for id, st := range snapshot {
			m, err := img.Get(id)
			switch {
			case st == deleted && !errors.Is(err, ErrNotFound):
				t.Fatalf("image %d: %s was deleted by a returned Update but is there (%v)", c, id, err)
			case st == firstDone && err == nil && m.Recipients[0].State != Delivered:
				t.Fatalf("image %d: %s lost the delivery of its first recipient", c, id)
			case st == deleted || st == firstDone:
				checked++
			}
		}
		t.Logf("image %d: %d returned updates checked", c, checked)
	}
	cancel()
	wg.Wait()
}
