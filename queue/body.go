package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
)

// A body is read back as it was written (Put): chunk by chunk, under
// b/<id>/<n>, never whole in memory.

// Body returns a reader of the body of id, streamed chunk by chunk: memory
// use does not depend on the message size. Close it when done. Body of an
// unknown or invalid ID (such as a message deleted after its Get) returns
// ErrNotFound: a deleted message's body must never pass for an empty one.
// A body found shorter than its record says, or whose message is deleted
// while it is read, gives an error (from Body or Read), never a truncated
// body.
//
// Chunks are point reads of b/<id>/0, 1, …, each copied into a buffer and
// released at once, so no Pebble memory stays pinned between Reads. Every
// chunk but the last is exactly the chunk size (Put fills them with
// io.ReadFull), so a shorter one ends the body without another lookup;
// the record is read only when a lookup finds no chunk, to tell the end of
// the body from a missing chunk. The first chunk is read before Body
// returns: once a body has started it reads whole or fails.
func (s *Store) Body(id ID) (io.ReadCloser, error) {
	if len(id) != idLen {
		// Put stores nothing under an invalid ID. The length is all the
		// key needs: an ID of this length that is not hex has no chunks
		// and no record either, and so is not found.
		return nil, ErrNotFound
	}
	r := &bodyReader{s: s, id: id}
	if rc := s.recent.body(id); rc != nil {
		return rc, nil
	}
	r.key = append(r.keyBuf[:0], bodyKey(id, 0)...)
	if err := r.fill(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

type bodyReader struct {
	s      *Store
	id     ID
	keyBuf [len(prefixBody) + idLen + 1 + 4]byte
	key    []byte  // b/<id>/<chunk>, in keyBuf; fill rewrites the chunk number
	next   uint32  // the chunk fill reads next
	bufp   *[]byte // from s.bufs while a chunk is held
	rest   []byte  // what Read has not returned of the last chunk read
	done   bool    // no chunk after rest
	exact  bool    // a chunk longer than the chunk size was seen: only a lookup that finds nothing ends the body
	err    error   // sticky, from fill
}

// fill reads chunk r.next into rest, or sets done if the body has ended.
func (r *bodyReader) fill() error {
	binary.BigEndian.PutUint32(r.key[len(r.key)-4:], r.next)
	v, closer, err := r.s.db.Get(r.key)
	if errors.Is(err, pebble.ErrNotFound) {
		r.done = true
		return r.s.checkBodyEnd(r.id, r.next)
	}
	if err != nil {
		return fmt.Errorf("queue: reading body of %s: %w", r.id, err)
	}
	if r.bufp == nil {
		r.bufp = r.s.bufs.Get().(*[]byte)
	}
	buf := *r.bufp
	if len(v) > len(buf) {
		// Written with a larger chunk size (Options.ChunkSize changed):
		// the short-chunk rule no longer tells the last chunk.
		r.exact = true
		buf = make([]byte, len(v))
	}
	n := copy(buf, v)
	closer.Close()
	r.rest = buf[:n]
	r.next++
	if !r.exact && n < r.s.chunkSize {
		r.done = true
	}
	return nil
}

// checkBodyEnd is called when id has no chunk k: it returns nil if its
// body ends there, and an error if the record says there are more chunks
// or the message went away after chunk 0 was read.
func (s *Store) checkBodyEnd(id ID, k uint32) error {
	v, closer, err := s.db.Get(metaKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		if k == 0 {
			return ErrNotFound // no such message (deleted since its Get)
		}
		return fmt.Errorf("queue: body of %s: %w while it was read", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("queue: body of %s: %w", id, err)
	}
	chunks, err := recordChunks(v)
	closer.Close()
	if err != nil {
		return fmt.Errorf("queue: body of %s: %w", id, err)
	}
	if chunks != k {
		return fmt.Errorf("queue: body of %s: chunk %d of %d is missing", id, k, chunks)
	}
	return nil
}

func (r *bodyReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		switch {
		case r.err != nil:
			return 0, r.err
		case r.done:
			r.release()
			return 0, io.EOF
		}
		r.err = r.fill()
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	if len(r.rest) == 0 && r.done {
		r.release() // the next Read says io.EOF; no need to hold the buffer till then
	}
	return n, nil
}

// release returns the chunk buffer to the pool.
func (r *bodyReader) release() {
	r.rest = nil
	if r.bufp != nil {
		r.s.bufs.Put(r.bufp)
		r.bufp = nil
	}
}

func (r *bodyReader) Close() error {
	r.done = true
	r.release()
	return nil
}
