// Package queue is relayq's durable message store, on Pebble.
//
// It knows nothing of SMTP: it stores envelopes, per-recipient state and
// bodies, and says which messages are due. The delivery worker in smarthost
// is the only code that joins it to the outbound side.
//
// # Key layout
//
//	m/<id>                 version byte 1, then the JSON record: the envelope,
//	                       every recipient's state, and the body's chunk count
//	b/<id>/<chunk>         body chunk, <chunk> as 4 big-endian bytes, 64 KiB each
//	s/<due><id>            schedule entry, <due> as 8 big-endian bytes of Unix
//	                       nanoseconds, so a forward scan yields due order;
//	                       absent while an operator holds the message
//	p/<id>                 "body being written": set with the first spilled
//	                       chunk batch of a large body, removed in the batch
//	                       that commits the envelope
//	d/<destination>        learned state of a destination (cap, last error)
//
// IDs are 24 hex digits (time in ns, then a counter), so they sort by age.
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
//     NDR it gave rise to, in one batch with pebble.Sync. A message with no
//     pending recipient is deleted in that batch.
//   - Concurrent Syncs share one fsync (Pebble's group commit).
//
// # Invariants
//
//   - A message Put acknowledged survives any crash and is due again after
//     Open (its s/ entry is written with it and only replaced atomically).
//   - A recipient marked Delivered is committed before Update returns and
//     is never handed out as pending again.
//   - m/ and s/ always agree: every change to a message is one batch.
//   - Memory does not grow with queue length or message size: bodies are
//     streamed in chunks, Due reads only as many entries as it returns.
package queue
