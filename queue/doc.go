// Package queue is relayq's durable message store, on Pebble.
//
// It knows nothing of SMTP: it stores envelopes, per-recipient state and
// bodies, and says which messages are due. The delivery worker in smarthost
// is the only code that joins it to the outbound side.
//
// # Key layout
//
//	m/<id>                 the record: the envelope, every recipient's state
//	                       and the body's chunk count, after a version byte
//	                       (see below)
//	b/<id>/<chunk>         body chunk, <chunk> as 4 big-endian bytes from 0;
//	                       every chunk but the last is exactly the chunk size
//	                       (64 KiB), the last is 1 byte to the chunk size
//	s/<due><id>            schedule entry, <due> as 8 big-endian bytes of Unix
//	                       nanoseconds, so a forward scan yields due order;
//	                       absent while an operator holds the message; its
//	                       value is empty, or the destination the message
//	                       waits for (w/ below)
//	w/<destination>\x00<id> the message was deferred because <destination>
//	                       failed as a whole (its hosts refused or were
//	                       cooling down): ReleaseDest makes it due when the
//	                       destination takes mail again. Written and removed
//	                       in the same batch as the schedule entry naming it,
//	                       so there is at most one per queued message;
//	                       older relayq versions ignore both
//	p/<id>                 "body being written": set with the first spilled
//	                       chunk batch of a large body, removed in the batch
//	                       that commits the envelope
//	d/<destination>        learned state of a destination (cap, last error)
//
// IDs are 24 hex digits (time in ns, then a counter), so they sort by age.
//
// # Record encoding
//
// Version 3, the one written, is varints and length-prefixed strings, laid
// out in record.go: Chunks and Size first (counting the queue at Open reads
// only those), then flags, times as Unix nanoseconds with their zone offset
// (a zero time is flagged absent), the strings, the recipients, and last
// the message's Message-ID and Subject and the attempt count it was
// released at (Envelope.Released). Version 2 is the same without those
// three; version 1 is the JSON of the struct tags in
// message.go. Both are still read (with no Message-ID or Subject), so a
// queue written by an older relayq opens and delivers; a record is
// rewritten as version 3 by its next change. An older relayq cannot read
// version 3: going back to one needs an empty queue. A time comes back as
// from JSON: the same instant, no monotonic reading, in UTC, Local or a
// fixed zone as its offset says. Decoding checks every length against the
// bytes left and refuses trailing bytes; it never panics
// (FuzzDecodeRecord).
//
// # Reading bodies
//
// Body reads chunks 0, 1, … with point lookups, no iterator. A chunk
// shorter than the chunk size is the last; after a full one, a lookup
// that finds nothing ends the body, and the record's chunk count tells
// the end from a missing chunk (an error, never a truncated body). This
// relies on the chunk size not growing between runs on one queue: a chunk
// longer than the chunk size is noticed and read past, but chunks written
// with a smaller size would look like a short last one. Each chunk is
// copied out and its Pebble memory released before Read returns.
//
// # When writes are synced
//
//   - Put commits the envelope, the schedule entry and the last body chunks
//     in one batch with pebble.Sync, and returns only after it; the caller
//     then says 250. Bodies over 1 MiB are written first in unsynced batches
//     of about 1 MiB (memory does not grow with message size); Pebble's WAL
//     is one ordered log, so the final synced commit makes them durable too.
//     A crash before that commit leaves a p/ marker, and Open removes those
//     chunks.
//   - Update commits one message's new state, its new schedule entry and any
//     NDR it gave rise to, in one batch, and returns only once that batch is
//     on disk. A message with no pending recipient is deleted in that batch.
//     The batch is written without a sync of its own and made durable by the
//     next synced commit (a Put, usually), or by a WAL sync of Update's own
//     after 1 ms without one (syncshare.go): a delivery's outcome has no
//     client waiting on it, and this saves an fdatasync per few messages.
//   - Concurrent Syncs share one fsync (Pebble's group commit).
//   - PutWaiting writes the w/ index entry in Put's own synced batch.
//     ReleaseDest rewrites each released message in a batch of its own,
//     not synced: a release lost in a crash only leaves the messages to
//     their backoff.
//
// # Disk space
//
//   - Put leaves Options.Reserve free on the volume (relayq: 16 MiB):
//     a message that would take free space below it is refused with
//     ErrNoRoom, so that Pebble always has room to flush, compact and
//     record deliveries; a write Pebble cannot make is fatal to it.
//   - Deleting mail frees no disk space until Pebble flushes the memtable
//     holding the tombstones and compacts the tables holding the bodies,
//     which writes make it do. While free space is below
//     Options.ReclaimBelow the queue does both for the ranges of the
//     messages it deleted (reclaim.go), so a queue that back pressure
//     keeps from taking mail gets its space back as it delivers.
//   - Written counts the bytes of every batch committed, for back
//     pressure's estimate of free space between two statfs readings.
//   - Free space is read with diskspace.Free, the reading back pressure
//     uses too; ErrNoRoom is diskspace.ErrNoRoom, so intake recognises it
//     without depending on the queue.
//   - Options.Events (StorageEvents) is told of write stalls, low disk
//     space and deleted files, from Pebble's event listener (pebble.go);
//     nothing of Pebble's types leaves the package.
//
// # Invariants
//
//   - A message Put acknowledged survives any crash and is due again after
//     Open (its s/ entry is written with it and only replaced atomically).
//   - A recipient marked Delivered is committed before Update returns and
//     is never handed out as pending again.
//   - m/ and s/ always agree: every change to a message is one batch. So
//     do s/ and w/: whatever moves or deletes a schedule entry removes the
//     w/ entry its value names (unindexWait), and Update writes a new one
//     only for Message.WaitsFor.
//   - DueAfter scans from a cursor; an entry committed since with an
//     earlier due time is still found (the scan starts at the earliest
//     noted write, as Due's does), and so is one Recheck found still in
//     place (a scan passed over it while its message was in flight).
//   - A storage error Pebble cannot go on from (a failed write or sync of
//     its WAL or MANIFEST) ends the process (fatal.go): one log line at
//     fatal level, then Options.Exit(1). The commit that failed never
//     returns to its writer, so nothing is acknowledged that is not on
//     disk.
//   - Memory does not grow with queue length or message size: bodies are
//     streamed in chunks, Due reads only as many entries as it returns.
//   - The in-memory copies of the last small messages put (recent.go, at
//     most 4096 and 8 MiB, bodies up to 512 KiB) hold committed state only: an entry is served
//     only after its Put's commit, and every other write of the message
//     drops it before its own commit.
package queue
