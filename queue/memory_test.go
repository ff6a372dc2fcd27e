package queue

import (
	"context"
	"io"
	"runtime"
	"runtime/metrics"
	"testing"
)

// This file's tests run before the other files' (go test runs files in name
// order), so that garbage from them does not blur the heap measurement.

// TestPutLargeBodyBoundedHeap queues a 50 MB message and checks that the
// heap grows by far less than the message: the body is streamed.
func TestPutLargeBodyBoundedHeap(t *testing.T) {
	s := openTest(t, Options{})
	const size = 50 << 20
	// Warm up Pebble's memtables so the measurement sees the body's cost.
	putReader(t, s, io.LimitReader(zeroReader{}, 8<<20))
	base := heapBytes()
	peak := &peakHeap{}
	r := &sampling{r: io.LimitReader(zeroReader{}, size), every: 1 << 20, sample: peak.sample}
	putReader(t, s, r)
	peak.sample()
	grew := int64(peak.max) - int64(base)
	t.Logf("50 MB message: heap grew by at most %.1f MB (baseline %.1f MB)", float64(grew)/1e6, float64(base)/1e6)
	if grew > 16<<20 {
		t.Fatalf("heap grew by %d bytes while queueing a 50 MB message; want <= 16 MiB", grew)
	}
}

// TestPutLargeBodyMakesLittleGarbage queues a 50 MB message and checks that
// Put allocates far less than the message on the way: garbage is what the
// garbage collector lets the heap, and so RSS, grow by before it collects.
// (A spilled batch grown afresh at every spill once made ~4 bytes of
// garbage per byte of body: 220 MB for this message.) What remains is
// Pebble's: its memtables and WAL buffers, and the tables a flush writes.
func TestPutLargeBodyMakesLittleGarbage(t *testing.T) {
	s := openTest(t, Options{})
	const size = 50 << 20
	// Warm up: memtables at their full size, the WAL's buffers made.
	putReader(t, s, io.LimitReader(zeroReader{}, 16<<20))
	before := allocatedBytes()
	putReader(t, s, io.LimitReader(zeroReader{}, size))
	allocated := allocatedBytes() - before
	t.Logf("50 MB message: %.1f MB allocated while it was queued", float64(allocated)/1e6)
	limit := uint64(32 << 20)
	if raceEnabled {
		limit *= 2 // 10.7 MB measured without -race, 36.4 MB with it
	}
	if allocated > limit {
		t.Fatalf("queueing a 50 MB message allocated %d bytes; want <= %d MiB", allocated, limit>>20)
	}
}

// putReader queues a message whose body is what r reads.
func putReader(t *testing.T, s *Store, r io.Reader) ID {
	t.Helper()
	id := s.NewID()
	if err := s.Put(context.Background(), id, envelope("a@x.invalid", "b@y.invalid"), r); err != nil {
		t.Fatal(err)
	}
	return id
}

// allocatedBytes is the total the heap has allocated so far, in the whole
// process (Pebble's background work included).
func allocatedBytes() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

// sampling calls sample every `every` bytes read.
type sampling struct {
	r      io.Reader
	every  int
	n      int
	sample func()
}

func (s *sampling) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += n
	if s.n >= s.every {
		s.n = 0
		s.sample()
	}
	return n, err
}

type peakHeap struct{ max uint64 }

func (p *peakHeap) sample() { p.max = max(p.max, heapBytes()) }

// heapBytes is the live heap after a GC: what the process holds on to.
func heapBytes() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
