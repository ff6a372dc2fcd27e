package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// readBody reads id's body whole, returning the error of Body or Read.
func readBody(s *Store, id ID) ([]byte, error) {
	rc, err := s.Body(id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func putBody(t *testing.T, s *Store, size int) (ID, []byte) {
	t.Helper()
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	return putReader(t, s, bytes.NewReader(body)), body
}

func TestBodyWithAMissingChunkIsAnErrorNotATruncatedBody(t *testing.T) {
	s := openTest(t, Options{ChunkSize: 1000})
	for _, c := range []struct {
		size    int
		missing uint32
	}{
		{3500, 0}, {3500, 1}, {3500, 3}, // the last chunk short
		{3000, 0}, {3000, 2}, // the last chunk full
	} {
		t.Run(fmt.Sprintf("%d-bytes-chunk-%d", c.size, c.missing), func(t *testing.T) {
			id, _ := putBody(t, s, c.size)
			s.recent.drop(id) // read from Pebble
			if err := s.db.Delete(bodyKey(id, c.missing), pebble.Sync); err != nil {
				t.Fatal(err)
			}
			got, err := readBody(s, id)
			if err == nil {
				t.Fatalf("read %d of %d bytes without an error", len(got), c.size)
			}
		})
	}
}

func TestBodyOfAMessageDeletedWhileReadFails(t *testing.T) {
	s := openTest(t, Options{ChunkSize: 1000})
	ctx := context.Background()
	id, _ := putBody(t, s, 2500)
	s.recent.drop(id) // read from Pebble, a chunk at a time
	rc, err := s.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if n, err := io.ReadFull(rc, make([]byte, 1000)); n != 1000 || err != nil {
		t.Fatalf("first chunk: %d bytes, %v", n, err)
	}
	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(rc); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the delete: %d more bytes, err %v; want ErrNotFound", len(rest), err)
	}

	// A body read from its first chunk on reads whole even if the message
	// is deleted meanwhile (Body has read that chunk).
	id, body := putBody(t, s, 500)
	rc, err = s.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("one-chunk body deleted after Body: %d bytes, %v", len(got), err)
	}
}

// TestBodyOfAnUnknownInvalidOrDeletedIDIsNotFound: a message deleted
// between an attempt's Get and its Body must not read as an empty body,
// which the attempt would send.
func TestBodyOfAnUnknownInvalidOrDeletedIDIsNotFound(t *testing.T) {
	s := openTest(t, Options{})
	deleted, _ := putBody(t, s, 100)
	if _, err := s.Get(deleted); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(context.Background(), deleted); err != nil {
		t.Fatal(err)
	}
	for _, id := range []ID{s.NewID(), "not-an-id", "", deleted} {
		if got, err := readBody(s, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Body(%q): %d bytes, %v; want ErrNotFound", id, len(got), err)
		}
	}
	empty := s.NewID()
	if err := s.Put(context.Background(), empty, &Envelope{From: "a@b.invalid", Recipients: []Recipient{{Addr: "c@d.invalid"}}}, strings.NewReader("")); err != nil {
		t.Fatal(err)
	}
	s.recent.drop(empty)
	if got, err := readBody(s, empty); err != nil || len(got) != 0 {
		t.Fatalf("Body of a stored empty message: %d bytes, %v", len(got), err)
	}
}

// TestBodyReadsChunksLargerThanTheChunkSize reopens a queue with a smaller
// ChunkSize than it was written with: a full chunk is then longer than the
// chunk size, and the body still reads whole.
func TestBodyReadsChunksLargerThanTheChunkSize(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	want := map[ID][]byte{}
	for _, size := range []int{100, 4096, 8192, 10000} {
		id, body := putBody(t, s, size)
		want[id] = body
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{ChunkSize: 1000}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id, body := range want {
		if got, err := readBody(s, id); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d-byte body: read %d bytes, %v", len(body), len(got), err)
		}
	}
}

// TestBodyReadersDoNotShareBuffers reads different bodies from many
// goroutines at once, in small reads, so that a chunk buffer handed to two
// readers would show as a wrong byte.
func TestBodyReadersDoNotShareBuffers(t *testing.T) {
	s := openTest(t, Options{ChunkSize: 1000})
	const n = 8
	ids := make([]ID, n)
	bodies := make([][]byte, n)
	for i := range n {
		bodies[i] = bytes.Repeat([]byte{byte('a' + i)}, 2500+i)
		ids[i] = s.NewID()
		if err := s.Put(context.Background(), ids[i], envelope("a@x.invalid", "b@y.invalid"), bytes.NewReader(bodies[i])); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			for range 50 {
				rc, err := s.Body(ids[i])
				if err != nil {
					errs <- err
					return
				}
				var got []byte
				buf := make([]byte, 77)
				for {
					k, err := rc.Read(buf)
					got = append(got, buf[:k]...)
					if err == io.EOF {
						break
					}
					if err != nil {
						errs <- err
						return
					}
				}
				rc.Close()
				if !bytes.Equal(got, bodies[i]) {
					errs <- fmt.Errorf("body %d came back wrong (%d bytes)", i, len(got))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
