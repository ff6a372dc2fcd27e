package queue

import (
	"bytes"
	"io"
	"sync"
)

// recent keeps the record and body of the last small messages put (bodies
// of at most a sixteenth of its bytes), as committed, so that the delivery
// worker, which reads a new message back moments after its 250 (Get, Body,
// then Update's read), finds it in memory instead of going to Pebble three
// times. It is a cache of committed state only, bounded in entries and
// bytes, and never the only copy of anything.
//
// Consistency: only Put adds an entry, for an ID nothing else can know yet,
// and it adds it before its commit, marked pending (Get and Body pass over
// a pending entry to Pebble); once the commit succeeds it marks it
// committed, and if the commit fails it drops it. Every other write of a
// record (setEncoded, under setRecord, and deleteLocked) drops the entry
// before its batch is committed, so from then on readers go to Pebble,
// which has the old state until the commit and the new one after, as
// without the cache. An entry dropped while pending is not brought back by
// the mark.
type recent struct {
	mu       sync.Mutex
	entries  map[ID]*recentEntry
	ring     []ID // insertion order, oldest at head; may hold IDs already dropped
	head     int
	n        int // IDs in ring
	bytes    int // body bytes of the entries
	maxBytes int
}

type recentEntry struct {
	// enc is the record as encoded for Pebble: a hit decodes it, and so
	// gives exactly what a read from Pebble would.
	enc     []byte
	body    []byte // the whole body; never modified once added
	pending bool   // its Put has not committed yet
}

const (
	recentEntries = 4096
	recentBytes   = 8 << 20
)

func newRecent() *recent {
	return &recent{
		entries:  make(map[ID]*recentEntry, recentEntries),
		ring:     make([]ID, recentEntries),
		maxBytes: recentBytes,
	}
}

// fits reports whether a body of n bytes may be kept: at most a
// sixteenth of the cache, so that one entry never evicts most of it.
func (c *recent) fits(n int64) bool { return n <= int64(c.maxBytes/16) }

// add keeps, pending, id's record as encoded (enc, which it keeps: the
// caller must not modify it) and a copy of its body.
func (c *recent) add(id ID, enc, body []byte) {
	if c.fits(int64(len(body))) {
		c.addOwned(id, enc, bytes.Clone(body))
	}
}

// addOwned is add without the copy: body is the cache's from now on. It
// counts body's capacity, not its length, against the bound.
func (c *recent) addOwned(id ID, enc, body []byte) {
	if !c.fits(int64(cap(body))) {
		return
	}
	e := &recentEntry{enc: enc, body: body, pending: true}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.n == len(c.ring) || c.bytes+cap(body) > c.maxBytes {
		c.evictOldest()
	}
	c.removeLocked(id) // put again under the same ID
	c.ring[(c.head+c.n)%len(c.ring)] = id
	c.n++
	c.entries[id] = e
	c.bytes += cap(e.body)
}

func (c *recent) evictOldest() {
	id := c.ring[c.head]
	c.ring[c.head] = ""
	c.head = (c.head + 1) % len(c.ring)
	c.n--
	c.removeLocked(id)
}

// removeLocked forgets id's entry, if there is one; c.mu is held.
func (c *recent) removeLocked(id ID) {
	if e, ok := c.entries[id]; ok {
		c.bytes -= cap(e.body)
		delete(c.entries, id)
	}
}

// committed marks id's entry as committed, if it is still there.
func (c *recent) committed(id ID) {
	c.mu.Lock()
	if e, ok := c.entries[id]; ok {
		e.pending = false
	}
	c.mu.Unlock()
}

// drop forgets id. Its slot in the ring is reclaimed when it comes round.
func (c *recent) drop(id ID) {
	c.mu.Lock()
	c.removeLocked(id)
	c.mu.Unlock()
}

// record decodes id's committed record into r and reports whether there
// was one.
func (c *recent) record(id ID, r *record) (bool, error) {
	c.mu.Lock()
	e, ok := c.entries[id]
	if !ok || e.pending {
		c.mu.Unlock()
		return false, nil
	}
	enc := e.enc // never modified: decoded outside the lock
	c.mu.Unlock()
	return true, decodeRecordTo(enc, r)
}

// body returns a reader of id's committed body, or nil.
func (c *recent) body(id ID) io.ReadCloser {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || e.pending {
		return nil
	}
	return io.NopCloser(bytes.NewReader(e.body))
}
