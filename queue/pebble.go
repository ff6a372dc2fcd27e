package queue

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleOptions are the Pebble options of a queue, tuned for what a queue
// writes: each message is a body (b/), a record (m/) rewritten at every
// attempt, and a schedule entry (s/) deleted and written anew at another
// due time at every attempt. Pebble's defaults made compactions rewrite the
// same records and schedule over and over; each option below cuts that
// down (docs/performance.md has the measurements, and what was tried and
// left off: value separation, larger memtables, WALMinSyncInterval, other
// table compressions):
//
//   - splitAtPrefix ends tables at prefix boundaries, so a flush's table
//     does not span b/ to s/ and overlap every m/ and s/ table below it;
//     new bodies and records (IDs grow with time) overlap at most the last
//     table of their prefix.
//   - The schedule is written at random due times and each flush leaves the
//     tombstones of the entries it rescheduled: tombstone-density
//     compactions are off, and eight tables stack in L0 before a
//     compaction, so one rewrite of the schedule serves eight flushes.
//   - Small levels (LBaseMaxBytes and every level's tables 4 MiB) make the
//     tree deep instead of wide: a compaction merges into a small level,
//     not into one table that holds the whole schedule.
//   - A 16 MiB block cache (the memtables are reserved from it) keeps the
//     newest tables, which Due and Get read at every attempt, decompressed.
//     Built without cgo (as relayq is), the cache is Go heap.
//   - 4 MiB memtables (Pebble's default) bound the RSS a large message adds
//     and the room Pebble's preallocated logs take on a full disk.
func pebbleOptions(opts Options) *pebble.Options {
	po := &pebble.Options{
		FS:                    opts.FS,
		FormatMajorVersion:    pebble.FormatNewest,
		MemTableSize:          4 << 20,
		CacheSize:             16 << 20,
		LBaseMaxBytes:         4 << 20,
		L0CompactionThreshold: 8,
		L0StopWritesThreshold: 24,
		EventListener:         eventListener(opts.Events),
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

// StorageEvents receives what the storage engine reports that back
// pressure watches (Options.Events). Pebble calls the methods on its own
// goroutines, some while it holds its locks: each must return at once and
// must not call the Store.
type StorageEvents interface {
	// WriteStallBegin: writes wait (the memtables are full and a flush is
	// behind); every commit waits until WriteStallEnd.
	WriteStallBegin()
	WriteStallEnd()
	// SpaceChanged: free disk space is low, or a table or log was deleted
	// (space came back).
	SpaceChanged()
}

// eventListener is Pebble's listener for ev; nil without one.
func eventListener(ev StorageEvents) *pebble.EventListener {
	if ev == nil {
		return nil
	}
	return &pebble.EventListener{
		WriteStallBegin: func(pebble.WriteStallBeginInfo) { ev.WriteStallBegin() },
		WriteStallEnd:   ev.WriteStallEnd,
		LowDiskSpace:    func(pebble.LowDiskSpaceInfo) { ev.SpaceChanged() },
		TableDeleted:    func(pebble.TableDeleteInfo) { ev.SpaceChanged() },
		WALDeleted:      func(pebble.WALDeleteInfo) { ev.SpaceChanged() },
	}
}
