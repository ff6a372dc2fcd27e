package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"

	"relayq/internal/diskspace"
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// FS is the filesystem Pebble uses; nil means the real disk. Crash tests
	// pass vfs.NewCrashableMem().
	FS vfs.FS
	// Log receives recovery and storage events.
	Log zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ChunkSize is the body chunk size; 0 means 64 KiB. It must not grow
	// between runs on one queue: Body takes a chunk shorter than it for
	// the last one (doc.go, "Reading bodies").
	ChunkSize int
	// Events, if set, is told of the storage events back pressure watches
	// (pebble.go: write stalls, low disk space, files deleted).
	Events StorageEvents
	// Exit ends the process when Pebble reports an error it cannot go on
	// from (a failed WAL write or sync: fatal.go); nil means os.Exit. It
	// is called once, after one log line at fatal level.
	Exit func(code int)
	// Reserve is the free space Put leaves on the data volume: a message
	// that would take the volume below it is refused with ErrNoRoom, so
	// that Pebble keeps room to flush, compact and record deliveries. A
	// write Pebble cannot make is fatal to it, so this is the last line of
	// defence when back pressure is off. relayq passes
	// config.DiskReserve; 0 or less: no reserve (and always with an FS
	// other than the real disk, where statfs would read another volume).
	Reserve int64
	// ReclaimBelow is the free space under which the disk space of
	// deleted mail is reclaimed at once (reclaim.go); relayq passes its
	// back-pressure free-space threshold, and SetReclaimBelow changes it.
	// 0 means 4 × Reserve; without a reserve, nothing is reclaimed.
	ReclaimBelow int64
}

const (
	defaultChunkSize = 64 << 10
	// spillBytes bounds the batch a Put builds in memory: a body larger than
	// this is written in several unsynced batches, sealed by the final synced
	// one (Pebble's WAL is ordered, so syncing the last record syncs all).
	spillBytes  = 1 << 20
	lockStripes = 64
)

// Store is the durable queue. Its methods are safe for concurrent use.
type Store struct {
	dir       string
	reserve   int64        // free space Put leaves on the volume; <= 0: unchecked
	reclaim   reclaimer    // the space of deleted mail (reclaim.go)
	written   atomic.Int64 // bytes of every batch committed: Written
	mayWait   atomic.Bool  // an index entry of waiting mail (waiting.go) may exist
	db        *pebble.DB
	log       zerolog.Logger
	now       func() time.Time
	chunkSize int
	ids       *idSource
	wake      chan struct{}
	locks     [lockStripes]sync.Mutex
	messages  atomic.Int64
	bytes     atomic.Int64
	// changes counts the changes of operator state committed (Changes).
	changes atomic.Uint64
	// counted is closed when the count of what was queued at Open is in
	// messages and bytes; closing stops that count early (Close).
	counted chan struct{}
	closing atomic.Bool
	bufs    sync.Pool
	scan    scanHint
	recent  *recent // the last small messages put (recent.go)
	// share and shareWait: Update's commits share the WAL syncs of others
	// (syncshare.go).
	share     syncShare
	shareWait time.Duration
}

// record is what an m/ key holds after the version byte.
type record struct {
	Envelope
	Chunks uint32 `json:"k"`
}

// Open opens (creating if needed) the queue in dir, removes the bodies of
// messages whose envelope was never committed, and counts what is queued.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = defaultChunkSize
	}
	po := pebbleOptions(opts)
	po.Logger = newPebbleLogger(dir, opts)
	if opts.FS != nil {
		opts.Reserve = 0 // not the real disk: statfs would read another volume
	}
	if opts.Reserve > 0 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		// Opening replays the log and flushes it; on a volume with no room
		// for that Pebble retries for ever. Better say so and stop.
		if free, ok := diskspace.Free(dir); ok && free < opts.Reserve/4 {
			return nil, fmt.Errorf("queue: the volume of %s has %d bytes free; opening the queue needs at least %d: free some space", dir, free, opts.Reserve/4)
		}
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", dir, err)
	}
	s := &Store{
		dir:       dir,
		reserve:   opts.Reserve,
		db:        db,
		log:       opts.Log,
		now:       opts.Now,
		chunkSize: opts.ChunkSize,
		ids:       newIDSource(opts.Now),
		wake:      make(chan struct{}, 1),
		counted:   make(chan struct{}),
		recent:    newRecent(),
		shareWait: defaultShareWait,
	}
	s.share.init()
	s.bufs.New = func() any { b := make([]byte, s.chunkSize); return &b }
	waiting, err := s.anyWaiting()
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: open %s: %w", dir, err)
	}
	s.mayWait.Store(waiting)
	if err := s.recover(); err != nil {
		db.Close()
		return nil, err
	}
	s.startReclaim(opts.ReclaimBelow)
	return s, nil
}

// Close closes the database. Every other method panics or fails after it:
// stop the workers and the listeners first.
func (s *Store) Close() error {
	s.closing.Store(true)
	<-s.counted
	s.stopReclaim()
	return s.db.Close()
}

// Counted is closed once Messages and Bytes include everything that was
// queued when the store was opened; until then they count only part of
// it. Open does not wait for the count, so that a restart with a large
// queue takes mail at once.
func (s *Store) Counted() <-chan struct{} { return s.counted }

// NewID returns a fresh message ID.
func (s *Store) NewID() ID { return s.ids.next() }

// Wake is signalled whenever something may have become due earlier than the
// scheduler thought: a new message, a rescheduled one, an operator action.
func (s *Store) Wake() <-chan struct{} { return s.wake }

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Messages returns how many messages are queued.
func (s *Store) Messages() int64 { return s.messages.Load() }

// Bytes returns the total body size of the queued messages.
func (s *Store) Bytes() int64 { return s.bytes.Load() }

// Put stores a message under id: the body is read from body in chunks and
// the envelope is committed last, with pebble.Sync, in the same batch as its
// schedule entry. Put returns nil only once all of it is on disk; then the
// message survives any crash. On error nothing of it remains queued, and an
// error from body is returned as is (wrapped with %w), so callers can tell
// their own policy errors from storage errors.
//
// Put sets env.Received (to now), env.Size, and env.NextAttempt if zero.
// It reads env only once body returned io.EOF, so a caller may set fields
// that reading the body reveals (relay sets MessageID and Subject from the
// header section).
func (s *Store) Put(ctx context.Context, id ID, env *Envelope, body io.Reader) error {
	return s.put(ctx, id, env, body, "")
}

// put is Put, indexing the message as waiting for dest when dest is set
// (PutWaiting).
func (s *Store) put(ctx context.Context, id ID, env *Envelope, body io.Reader, dest string) error {
	if !id.Valid() {
		return fmt.Errorf("queue: invalid id %q", id)
	}
	bufp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bufp)
	p := putting{id: id, buf: *bufp, b: s.newBatch()}
	defer func() { p.b.Close() }()
	if err := s.putBody(ctx, &p, body); err != nil {
		return s.abandon(id, p.spilled, err)
	}
	if err := s.putEnvelope(&p, env, dest); err != nil {
		return s.abandon(id, p.spilled, err)
	}
	s.recent.committed(id)
	s.messages.Add(1)
	s.bytes.Add(p.size)
	s.signal()
	return nil
}

// putting is a Put in progress.
type putting struct {
	id      ID
	buf     []byte      // one chunk, read into again for each
	b       *writeBatch // what is not committed yet
	chunks  uint32
	size    int64
	spilled bool   // chunks were committed before the envelope (p/ marker)
	n       int    // the bytes of buf the last read filled
	whole   []byte // a body of several chunks so far, for the recent cache while it fits
}

// putBody reads body into p's batch, chunk by chunk, committing it
// without sync (spilling) whenever it holds spillBytes, the first time
// with the p/ marker that makes the chunks orphans until the envelope
// commits. An error leaves what was spilled for abandon.
func (s *Store) putBody(ctx context.Context, p *putting, body io.Reader) error {
	id, buf := p.id, p.buf
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var rerr error
		p.n, rerr = io.ReadFull(body, buf)
		if p.n > 0 {
			if err := p.b.Set(bodyKey(id, p.chunks), buf[:p.n], nil); err != nil {
				return fmt.Errorf("queue: batch: %w", err)
			}
			p.chunks++
			p.size += int64(p.n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("queue: reading body: %w", rerr)
		}
		// buf is read into again next: a body longer than a chunk is
		// copied for the recent cache as long as it may fit there (size
		// only grows: once it does not, it never will).
		if s.recent.fits(p.size) {
			if p.whole == nil {
				p.whole = make([]byte, 0, 2*len(buf))
			}
			p.whole = append(p.whole, buf[:p.n]...)
		} else {
			p.whole = nil
		}
		if p.b.Len() >= spillBytes {
			if err := s.spillBody(p); err != nil {
				return err
			}
		}
	}
}

// spillBody commits p's batch without sync and goes on in a new one.
func (s *Store) spillBody(p *putting) error {
	if err := s.checkRoom(int64(p.b.Len())); err != nil {
		return err
	}
	if !p.spilled {
		// Marks the chunks as orphans until the envelope commits, so
		// recovery can remove them after a crash.
		if err := p.b.Set(partialKey(p.id), nil, nil); err != nil {
			return err
		}
		p.spilled = true
	}
	if err := s.commit(p.b, unsynced); err != nil {
		return fmt.Errorf("queue: commit body: %w", err)
	}
	p.b = s.spillBatch(p.b)
	return nil
}

// putEnvelope completes env (Received, Size, NextAttempt) and commits it,
// with pebble.Sync, in the batch of the body's last chunks, with its
// schedule entry and, when dest is set, its waiting entry; the p/ marker
// of a spilled body goes in the same commit. The message and its body
// are in the recent cache once the commit succeeds.
func (s *Store) putEnvelope(p *putting, env *Envelope, dest string) error {
	id, b := p.id, p.b
	if err := s.checkRoom(int64(b.Len())); err != nil {
		return err
	}
	env.Received = s.now()
	env.Size = p.size
	if env.NextAttempt.IsZero() {
		env.NextAttempt = env.Received
	}
	rec := &record{Envelope: *env, Chunks: p.chunks}
	enc, err := appendRecord(nil, rec) // kept by the recent cache
	if err != nil {
		return err
	}
	if err := s.setEncoded(b, id, rec, enc); err != nil {
		return err
	}
	if dest != "" && !rec.Held {
		if err := s.indexWait(b, id, rec.NextAttempt, dest); err != nil {
			return err
		}
	}
	if p.spilled {
		if err := b.Delete(partialKey(id), nil); err != nil {
			return err
		}
	}
	switch {
	case p.chunks <= 1:
		s.recent.add(id, enc, p.buf[:p.size]) // the body is all in buf
	case s.recent.fits(p.size): // so did every size before: whole holds the rest
		s.recent.addOwned(id, enc, append(p.whole, p.buf[:p.n]...))
	}
	if err := s.commit(b, synced); err != nil {
		s.recent.drop(id)
		return fmt.Errorf("queue: commit: %w", err)
	}
	return nil
}

// ErrNoRoom is returned by Put when storing the message would leave less
// than the reserve free on the queue's volume (diskspace.ErrNoRoom, which
// intake checks for without depending on the queue).
var ErrNoRoom = diskspace.ErrNoRoom

// checkRoom fails when writing n more bytes would take the volume below
// the reserve.
func (s *Store) checkRoom(n int64) error {
	if s.reserve <= 0 {
		return nil
	}
	free, ok := diskspace.Free(s.dir)
	if !ok || free-n >= s.reserve {
		return nil
	}
	return fmt.Errorf("%w: %d bytes free on the volume of %s, %d kept in reserve", ErrNoRoom, free, s.dir, s.reserve)
}

// abandon removes what a failed Put already wrote and returns err.
func (s *Store) abandon(id ID, spilled bool, err error) error {
	if spilled {
		lo, hi := bodyBounds(id)
		b := s.db.NewBatch()
		_ = b.DeleteRange(lo, hi, nil)
		_ = b.Delete(partialKey(id), nil)
		if cerr := b.Commit(pebble.NoSync); cerr != nil {
			// Recovery removes the chunks on the next start (p/ marker).
			s.log.Error().Err(cerr).Str("id", string(id)).Msg("queue: cleaning up a failed put")
		}
		b.Close()
	}
	return err
}

// setRecord adds the m/ and s/ keys of r to b. A held message has no
// schedule entry. id leaves the recent cache: readers go to Pebble.
func (s *Store) setRecord(b *writeBatch, id ID, r *record) error {
	var buf [512]byte // most records fit: no allocation (Set copies v)
	v, err := appendRecord(buf[:0], r)
	if err != nil {
		return err
	}
	return s.setEncoded(b, id, r, v)
}

// setEncoded is setRecord with r already encoded as v.
func (s *Store) setEncoded(b *writeBatch, id ID, r *record, v []byte) error {
	s.recent.drop(id)
	if err := b.Set(metaKey(id), v, nil); err != nil {
		return err
	}
	if r.Held {
		return nil
	}
	return b.schedule(r.NextAttempt, id)
}

// getRecord reads the record of id; ErrNotFound if there is none.
func (s *Store) getRecord(id ID) (*record, error) {
	r := new(record)
	if err := s.getRecordTo(id, r); err != nil {
		return nil, err
	}
	return r, nil
}

// getRecordTo reads the record of id into r; ErrNotFound if there is none.
func (s *Store) getRecordTo(id ID, r *record) error {
	if ok, err := s.recent.record(id, r); ok {
		return err
	}
	v, closer, err := s.db.Get(metaKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("queue: get %s: %w", id, err)
	}
	// The decoded strings are copies: nothing refers to v after Close.
	err = decodeRecordTo(v, r)
	closer.Close()
	return err
}

// Changes counts the changes of operator state made to stored messages:
// a hold, the release of a held message, a bounce, a delete. It is bumped
// after each commits, so a caller that reads it before Get and finds it
// unchanged later knows that its copy still has the stored operator state
// and the message still exists. Other changes since Get need no new read
// before Update: a flush or ReleaseDest changes when the message is due,
// which Update keeps (Scheduled), and Released, which Update keeps the
// larger of (it only grows); Update's own commits are the caller's.
func (s *Store) Changes() uint64 { return s.changes.Load() }

// Get returns the stored envelope of id, or ErrNotFound.
func (s *Store) Get(id ID) (*Message, error) {
	if !id.Valid() {
		return nil, ErrNotFound
	}
	var r record
	if err := s.getRecordTo(id, &r); err != nil {
		return nil, err
	}
	return &Message{ID: id, Envelope: r.Envelope, Scheduled: r.NextAttempt}, nil
}

// Due returns up to limit IDs of messages due at now, oldest due first,
// passing over those for which skip returns true (messages already in
// flight). next is when the earliest message not returned and not skipped
// becomes due: now if more are due than limit allowed, zero if none.
//
// The scan starts where the previous one met its first live entry, or
// earlier if a schedule entry was written before that since: it never
// walks the tombstones that delivered messages leave at the front of the
// index, which would make every call cost as much as the history.
func (s *Store) Due(now time.Time, limit int, skip func(ID) bool) (ids []ID, next time.Time, err error) {
	es, next, _, err := s.dueAfter(now, Cursor{}, limit, skip, 0)
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	return ids, next, err
}

// Update commits the new state of m (recipient states, NextAttempt,
// attempt counters) and enqueues news (NDRs it gave rise to), all in one
// batch, durable when Update returns (its WAL sync shared: syncshare.go).
// A message with no pending recipient left is deleted with its body.
// Update returns ErrNotFound if m was deleted meanwhile (by an operator);
// then nothing is written. Operator state (Held, BounceRequested) is kept
// from the stored record, not taken from m, and so is an operator's later
// rescheduling: when the stored NextAttempt is no longer m.Scheduled (a
// flush, bounce or release since Get), the stored time is kept and
// m.NextAttempt is set to it. Released is the larger of m's and the
// stored one (a release since Get). On success m.Scheduled is the
// NextAttempt written, so that the same m can be updated again.
func (s *Store) Update(ctx context.Context, m *Message, news ...NewMessage) error {
	old, unlock, err := s.locked(ctx, m.ID)
	if err != nil {
		return err
	}
	defer unlock()
	b := s.newBatch()
	defer b.Close()
	final := m.Final()
	next := m.NextAttempt // what is written
	if final {
		if err := s.deleteLocked(b, m.ID, old); err != nil {
			return err
		}
	} else {
		r := &record{Envelope: m.Envelope, Chunks: old.Chunks}
		r.Held = old.Held
		r.BounceRequested = r.BounceRequested || old.BounceRequested
		r.Released = max(r.Released, old.Released) // a release since Get
		operator := !m.Scheduled.IsZero() && !old.NextAttempt.Equal(m.Scheduled)
		if operator {
			r.NextAttempt = old.NextAttempt // an operator's change since Get wins
		}
		next = r.NextAttempt
		if err := s.rewriteLocked(b, m.ID, old, r); err != nil {
			return err
		}
		if m.WaitsFor != "" && !operator && !r.Held {
			if err := s.indexWait(b, m.ID, r.NextAttempt, m.WaitsFor); err != nil {
				return err
			}
		}
	}
	var added, addedBytes int64
	for i := range news {
		if err := s.addSmall(b, &news[i]); err != nil {
			return err
		}
		added++
		addedBytes += int64(len(news[i].Body))
	}
	if err := s.commit(b, shared); err != nil {
		return fmt.Errorf("queue: commit update %s: %w", m.ID, err)
	}
	if final {
		s.messages.Add(-1)
		s.bytes.Add(-old.Size)
	}
	s.messages.Add(added)
	s.bytes.Add(addedBytes)
	m.NextAttempt, m.Scheduled = next, next
	if added > 0 || !final {
		s.signal()
	}
	return nil
}

// addSmall adds a whole in-memory message to b.
func (s *Store) addSmall(b *writeBatch, nm *NewMessage) error {
	if !nm.ID.Valid() {
		nm.ID = s.NewID()
	}
	env := nm.Envelope
	env.Received = s.now()
	env.Size = int64(len(nm.Body))
	if env.NextAttempt.IsZero() {
		env.NextAttempt = env.Received
	}
	var chunks uint32
	for off := 0; off < len(nm.Body); off += s.chunkSize {
		end := min(off+s.chunkSize, len(nm.Body))
		if err := b.Set(bodyKey(nm.ID, chunks), nm.Body[off:end], nil); err != nil {
			return err
		}
		chunks++
	}
	return s.setRecord(b, nm.ID, &record{Envelope: env, Chunks: chunks})
}

// deleteLocked adds the removal of every key of id to b. Small bodies get
// point deletions, which are cheaper to read past than range tombstones.
func (s *Store) deleteLocked(b *writeBatch, id ID, r *record) error {
	s.recent.drop(id)
	s.reclaim.deleted(id, r.Size)
	if err := s.unindexWait(b, id, r); err != nil {
		return err
	}
	if err := b.Delete(metaKey(id), nil); err != nil {
		return err
	}
	if !r.Held {
		if err := b.Delete(scheduleKey(r.NextAttempt, id), nil); err != nil {
			return err
		}
	}
	if r.Chunks > 16 {
		lo, hi := bodyBounds(id)
		return b.DeleteRange(lo, hi, nil)
	}
	for c := uint32(0); c < r.Chunks; c++ {
		if err := b.Delete(bodyKey(id, c), nil); err != nil {
			return err
		}
	}
	return nil
}

// locked takes id's lock and reads its record: ErrNotFound for an
// unknown or invalid id. The caller calls unlock when its change is
// committed. Every read-modify-write of a message goes through here.
func (s *Store) locked(ctx context.Context, id ID) (r *record, unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if !id.Valid() {
		return nil, nil, ErrNotFound
	}
	mu := s.lock(id)
	mu.Lock()
	if r, err = s.getRecord(id); err != nil {
		mu.Unlock()
		return nil, nil, err
	}
	return r, mu.Unlock, nil
}

// rewriteLocked adds to b the replacement of id's record old by r: its
// schedule entry moves from old's due time to r's (a held record has
// none).
func (s *Store) rewriteLocked(b *writeBatch, id ID, old, r *record) error {
	if err := s.unindexWait(b, id, old); err != nil {
		return err
	}
	if !old.Held {
		if err := b.Delete(scheduleKey(old.NextAttempt, id), nil); err != nil {
			return err
		}
	}
	return s.setRecord(b, id, r)
}

func (s *Store) lock(id ID) *sync.Mutex {
	var h uint32
	for i := 0; i < len(id); i++ {
		h = h*31 + uint32(id[i])
	}
	return &s.locks[h%lockStripes]
}

// recover removes bodies left by Puts that never committed (their p/
// marker is still there) and counts the queued messages.
func (s *Store) recover() error {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte(prefixPartial),
		UpperBound: prefixEnd(prefixPartial),
	})
	if err != nil {
		return fmt.Errorf("queue: recover: %w", err)
	}
	b := s.db.NewBatch()
	var orphans int
	for ok := it.First(); ok; ok = it.Next() {
		id := ID(it.Key()[len(prefixPartial):])
		lo, hi := bodyBounds(id)
		_ = b.DeleteRange(lo, hi, nil)
		_ = b.Delete(partialKey(id), nil)
		orphans++
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		b.Close()
		return fmt.Errorf("queue: recover: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		b.Close()
		return fmt.Errorf("queue: recover: %w", err)
	}
	b.Close()
	if orphans > 0 {
		s.log.Warn().Int("orphans", orphans).Msg("queue: removed bodies of messages that were never acknowledged")
	}
	return s.startCount()
}

// startCount counts the messages queued at Open, in the background, over
// an iterator opened now: it sees the queue as it was before any write of
// this run, and those writes adjust the counters themselves, so the sum is
// exact once the count is done.
func (s *Store) startCount() error {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte(prefixMeta),
		UpperBound: prefixEnd(prefixMeta),
	})
	if err != nil {
		close(s.counted)
		return fmt.Errorf("queue: count: %w", err)
	}
	go func() {
		defer close(s.counted)
		defer it.Close()
		for ok := it.First(); ok && !s.closing.Load(); ok = it.Next() {
			size, err := recordSize(it.Value())
			if err != nil {
				s.log.Error().Err(err).Str("key", string(it.Key())).Msg("queue: unreadable record")
				continue
			}
			s.messages.Add(1)
			s.bytes.Add(size)
		}
		if err := it.Error(); err != nil {
			s.log.Error().Err(err).Msg("queue: counting the queue")
		}
	}()
	return nil
}
