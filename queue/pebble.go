package queue

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleOptions are the Pebble options of a queue, tuned for what a queue
// writes: each message is a body (b/), a record (m/) rewritten at every
// attempt, and a schedule entry (s/) deleted and written anew at another
// due time at every attempt. Measured with bench/cmd/scale and 1M messages
// queued for a destination that is down (so every message is put, then
// rescheduled an hour later with jitter), Pebble's defaults spent a fifth
// of relayq's CPU in compactions that rewrote the same data over and over:
//
//   - A flush holds keys of every prefix, so its table spanned b/ to s/ and
//     overlapped every m/ and s/ table below it: each flush rewrote all the
//     records and the whole schedule. splitAtPrefix ends tables at prefix
//     boundaries, so new bodies and records (IDs grow with time) overlap
//     at most the last table of their prefix.
//   - The schedule is written at random due times across the backoff's
//     jitter, so its tables do overlap everything below them. Each flush
//     also leaves the tombstones of the entries it rescheduled, so Pebble's
//     tombstone-density compaction compacted every flushed s/ table at
//     once, rewriting the schedule of the level below each time. Without
//     it, and with eight tables stacked in L0 before they are compacted
//     (L0CompactionThreshold, four by default), one rewrite serves eight
//     flushes.
//   - Small levels (LBaseMaxBytes 4 MiB instead of 64 MiB, 4 MiB tables on
//     every level instead of doubling per level up to 128 MiB) make the
//     tree deeper instead of wide: a compaction merges into a small level,
//     not into one table that holds the whole schedule.
//   - The block cache: Due and Get read the newest tables at every
//     attempt; Pebble's 8 MiB cache, from which the memtables are also
//     reserved, left them reading and decompressing the same blocks again.
//     Built without cgo (as relayq is), the cache is Go heap.
//
// Together: compaction output for 1M messages went from 2.8 GB to 0.5 GB
// (bench: an in-process run of the same workload), and the enqueue rate
// with 1M queued went from 65 % of the rate on an empty queue to 78-106 %
// over eight runs of bench/cmd/scale (78 % in the last three). Since new
// messages for a destination that is down are no longer rewritten by an
// attempt that tries nothing (smarthost/plan.go), it measures 96-142 %.
// Value separation (blob files for bodies) was measured too and left off:
// with bodies in their own tables they are rarely rewritten anyway.
// Larger memtables than Pebble's 4 MiB were measured and left off. At
// 100 KiB a memtable holds ~40 bodies, fewer than wait for delivery under
// load, so most bodies are flushed to a table and compacted away after
// their delivery; larger memtables let more of them die in memory.
//   - 16 MiB: flushes and compactions at 100 KiB fell from 28 % to 8 % of
//     relayq's CPU, but with 1M queued the enqueue rate fell to 48 % of
//     the empty queue's, and a 50 MB message added 42 MB of RSS.
//   - 8 MiB, with a 32 MiB cache (memtables are reserved from the cache):
//     +10 % and +5 % messages/s at 100 KiB (7 rounds interleaved with
//     4 MiB, twice), no change at 1 KiB, the 1M enqueue rate at 115 % of
//     empty; but a 50 MB message added 20-24 MB of RSS (3-18.5 MB at
//     4 MiB), and Pebble's preallocated logs grow with the memtables
//     (110 %), so its room on a full disk, the 16 MiB reserve, and the
//     disk-full tests' 64 MiB volume would all have to grow with them.
//
// WALMinSyncInterval (a pause after each WAL sync, so that more commits
// share the next one) was measured at 0.5 and 1 ms: fdatasyncs per 1 KiB
// message fell from 0.35 to 0.21 and 0.16, relayq's CPU per message by
// 3 %, but in 7 interleaved `make bench`-like rounds the rate did not rise
// (98 % of the rate without it) and the p99 from DATA to 250 grew; left
// off (Pebble's default, none).
// Table compression: Snappy (Pebble's default) is kept. Without it, and
// with MinLZ, relayq used more CPU per 100 KiB message, not less (5
// interleaved rounds each): the flushes write more bytes.
func pebbleOptions(opts Options) *pebble.Options {
	po := &pebble.Options{
		FS:                    opts.FS,
		FormatMajorVersion:    pebble.FormatNewest,
		MemTableSize:          4 << 20,
		CacheSize:             16 << 20,
		LBaseMaxBytes:         4 << 20,
		L0CompactionThreshold: 8,
		L0StopWritesThreshold: 24,
		EventListener:         opts.EventListener,
		// Logger: Open sets it (fatal.go), with the directory it names.
	}
	for i := range po.TargetFileSizes {
		po.TargetFileSizes[i] = 4 << 20
	}
	po.Experimental.SpanPolicyFunc = splitAtPrefix
	po.Experimental.TombstoneDenseCompactionThreshold = -1 // off
	return po
}

// splitAtPrefix ends every table Pebble writes (flushes and compactions)
// at the end of the key prefix (b/, m/, s/, …) it started in.
func splitAtPrefix(start []byte) (pebble.SpanPolicy, []byte, error) {
	if i := bytes.IndexByte(start, '/'); i >= 0 {
		return pebble.SpanPolicy{}, prefixEnd(string(start[:i+1])), nil
	}
	return pebble.SpanPolicy{}, nil, nil
}
