package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func openTest(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func envelope(from string, rcpts ...string) *Envelope {
	env := &Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, Recipient{Addr: r})
	}
	return env
}

func readAll(t *testing.T, s *Store, id ID) []byte {
	t.Helper()
	rc, err := s.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutGetBodyRoundTrip(t *testing.T) {
	s := openTest(t, Options{ChunkSize: 1000})
	for _, size := range []int{0, 1, 999, 1000, 1001, 250_000, 3 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := make([]byte, size)
			for i := range body {
				body[i] = byte('a' + i%26)
			}
			id := s.NewID()
			env := envelope("a@example.org", "b@example.net", "c@example.net")
			if err := s.Put(context.Background(), id, env, bytes.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			m, err := s.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			if m.From != "a@example.org" || len(m.Recipients) != 2 || m.Size != int64(size) {
				t.Fatalf("got envelope %+v", m.Envelope)
			}
			if got := readAll(t, s, id); !bytes.Equal(got, body) {
				t.Fatalf("body differs: got %d bytes, want %d", len(got), size)
			}
		})
	}
}

func TestPutReaderErrorLeavesNothing(t *testing.T) {
	s := openTest(t, Options{})
	policy := errors.New("policy: too big")
	for _, size := range []int{100, 5 << 20} { // unspilled and spilled
		id := s.NewID()
		r := io.MultiReader(bytes.NewReader(make([]byte, size)), errReader{policy})
		err := s.Put(context.Background(), id, envelope("a@x.invalid", "b@y.invalid"), r)
		if !errors.Is(err, policy) {
			t.Fatalf("size %d: err = %v, want the reader's error", size, err)
		}
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("size %d: Get after failed put: %v", size, err)
		}
		checkNoBody(t, s, id)
	}
	if n := s.Messages(); n != 0 {
		t.Fatalf("Messages() = %d, want 0", n)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestDueOrderSkipAndNext(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := openTest(t, Options{Now: func() time.Time { return now }})
	var ids []ID
	for i, delay := range []time.Duration{3 * time.Second, 0, time.Second, time.Hour} {
		id := s.NewID()
		env := envelope("a@x.invalid", fmt.Sprintf("r%d@y.invalid", i))
		env.NextAttempt = now.Add(delay)
		if err := s.Put(context.Background(), id, env, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	got, next, err := s.Due(now.Add(5*time.Second), 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []ID{ids[1], ids[2], ids[0]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("due = %v, want %v", got, want)
	}
	if !next.Equal(now.Add(time.Hour)) {
		t.Fatalf("next = %v, want in an hour", next)
	}
	got, next, _ = s.Due(now.Add(5*time.Second), 1, func(id ID) bool { return id == ids[1] })
	if len(got) != 1 || got[0] != ids[2] || !next.Equal(now.Add(5*time.Second)) {
		t.Fatalf("with skip and limit: got %v next %v", got, next)
	}
}

func TestUpdateReschedulesAndDeletesWhenFinal(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := openTest(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	id := s.NewID()
	if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid", "c@y.invalid"), strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	m, _ := s.Get(id)
	m.Recipients[0].State = Delivered
	m.NextAttempt = now.Add(time.Minute)
	ndr := NewMessage{Envelope: *envelope("", "a@x.invalid"), Body: []byte("report")}
	if err := s.Update(ctx, m, ndr); err != nil {
		t.Fatal(err)
	}
	due, _, _ := s.Due(now, 10, nil)
	if len(due) != 1 || due[0] == id {
		t.Fatalf("due after update = %v; want only the NDR", due)
	}
	if got := readAll(t, s, due[0]); string(got) != "report" {
		t.Fatalf("NDR body = %q", got)
	}
	due, _, _ = s.Due(now.Add(time.Minute), 10, nil)
	if len(due) != 2 {
		t.Fatalf("due a minute later = %v, want the message and the NDR", due)
	}
	m, _ = s.Get(id)
	if m.Recipients[0].State != Delivered || m.Recipients[1].State != Pending {
		t.Fatalf("states = %v %v", m.Recipients[0].State, m.Recipients[1].State)
	}
	m.Recipients[1].State = Bounced
	if err := s.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("final message still there: %v", err)
	}
	if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("body of a final message: %v, want ErrNotFound", err)
	}
	if err := s.Update(ctx, m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a deleted message: %v, want ErrNotFound", err)
	}
	if s.Messages() != 1 {
		t.Fatalf("Messages() = %d, want 1 (the NDR)", s.Messages())
	}
}

func TestReopenCountsAndKeepsSchedule(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := s.Put(context.Background(), s.NewID(), envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.Counted()
	if s.Messages() != 10 || s.Bytes() != 100 {
		t.Fatalf("after reopen: %d messages, %d bytes", s.Messages(), s.Bytes())
	}
	due, _, _ := s.Due(time.Now(), 100, nil)
	if len(due) != 10 {
		t.Fatalf("due after reopen = %d, want 10", len(due))
	}
}

// TestCrashKeepsEveryAcknowledgedMessage puts messages from many goroutines
// and takes crash images of the filesystem (unsynced data partly lost) while
// they run: every message whose Put returned before the image was taken
// must be in it, whole, and due.
func TestCrashKeepsEveryAcknowledgedMessage(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := Open("q", Options{FS: fs, ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		acked = map[ID][]byte{}
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < 400 && ctx.Err() == nil; i++ {
				body := make([]byte, rng.IntN(2)*rng.IntN(1_200_000)+rng.IntN(500)+1)
				for j := range body {
					body[j] = byte(rng.Uint32())
				}
				id := s.NewID()
				if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), bytes.NewReader(body)); err != nil {
					return
				}
				mu.Lock()
				acked[id] = body
				mu.Unlock()
			}
		}(w)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for round := 0; round < 4; round++ {
		// Wait for some progress, bounded, rather than sleeping blind.
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n >= (round+1)*25 || time.Now().After(deadline) {
				break
			}
			runtime.Gosched()
		}
		mu.Lock()
		snapshot := make(map[ID][]byte, len(acked))
		for id, b := range acked {
			snapshot[id] = b
		}
		mu.Unlock()
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
		checkCrashImage(t, crashed, snapshot)
	}
	cancel()
	wg.Wait()
	s.Close()
}

func checkCrashImage(t *testing.T, fs vfs.FS, acked map[ID][]byte) {
	t.Helper()
	s, err := Open("q", Options{FS: fs, ChunkSize: 4096})
	if err != nil {
		t.Fatalf("reopening crash image: %v", err)
	}
	defer s.Close()
	due, _, err := s.Due(time.Now().Add(time.Hour), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	isDue := map[ID]bool{}
	for _, id := range due {
		isDue[id] = true
	}
	for id, body := range acked {
		if !isDue[id] {
			t.Fatalf("acknowledged message %s is not due after the crash", id)
		}
		if got := readAll(t, s, id); !bytes.Equal(got, body) {
			t.Fatalf("message %s: body of %d bytes came back as %d bytes", id, len(body), len(got))
		}
	}
	<-s.Counted()
	if int(s.Messages()) < len(acked) {
		t.Fatalf("Messages() = %d < %d acknowledged", s.Messages(), len(acked))
	}
	t.Logf("crash image: %d acknowledged, %d queued", len(acked), s.Messages())
}
