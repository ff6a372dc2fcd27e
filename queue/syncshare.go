package queue

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// durability says when a commit's batch is on disk.
type durability int

const (
	// unsynced: written without a sync; a later synced commit makes it
	// durable (the spills of a large body, before its final commit).
	unsynced durability = iota
	// synced: committed with pebble.Sync, which concurrent commits share
	// (Pebble's group commit). For Put: a client waits for its 250.
	synced
	// shared: durable when commit returns, like synced, but the WAL sync
	// is that of another commit when one comes within Store.shareWait.
	// For Update: no client waits on a delivery's outcome.
	shared
)

// defaultShareWait is how long a shared commit waits for another commit's
// WAL sync before it syncs the WAL itself. Under load a synced Put comes
// every fraction of a millisecond; with no other writer it bounds the
// delay a shared commit adds.
const defaultShareWait = time.Millisecond

// commit commits b and returns once it is as durable as d says.
func (s *Store) commit(b *writeBatch, d durability) error {
	switch d {
	case synced:
		mark := s.share.written.Load()
		if err := s.apply(b, pebble.Sync); err != nil {
			return err
		}
		s.share.covered(mark)
		return nil
	case shared:
		if err := s.apply(b, pebble.NoSync); err != nil {
			return err
		}
		return s.awaitShared(s.share.written.Add(1))
	}
	return s.apply(b, pebble.NoSync)
}

// syncShare lets a commit be made durable by the WAL sync of a later
// synced commit instead of asking for a sync of its own.
//
// Pebble's WAL is one ordered log, and a sync covers everything written to
// it before the sync was asked for (across a switch to a new WAL file too:
// the old one is synced when it is closed). A shared commit is written
// with NoSync and then numbered (written). A synced commit reads written
// before it commits; when it returns, every shared commit numbered up to
// what it read is on disk, and synced moves there. A shared commit returns
// once synced reaches its number, or after syncing the WAL itself.
//
// Why: on a loaded queue each delivery's commit asked for a WAL sync as
// often as each intake's did, and an fdatasync costs ~0.1 ms of CPU on the
// VMs we measure on. Shared, they ride on the intake's syncs: 3 % less
// CPU per message at 1 KiB (README, Performance).
type syncShare struct {
	written atomic.Uint64 // shared commits written to the WAL so far
	synced  atomic.Uint64 // every shared commit numbered <= synced is durable
	mu      sync.Mutex
	moved   chan struct{} // closed when synced moves; under mu
}

func (sh *syncShare) init() { sh.moved = make(chan struct{}) }

// covered notes that a synced commit that read mark before it committed
// has returned.
func (sh *syncShare) covered(mark uint64) {
	if mark <= sh.synced.Load() {
		return
	}
	sh.mu.Lock()
	if mark > sh.synced.Load() {
		sh.synced.Store(mark)
		close(sh.moved)
		sh.moved = make(chan struct{})
	}
	sh.mu.Unlock()
}

// awaitShared returns once shared commit n is durable.
func (s *Store) awaitShared(n uint64) error {
	sh := &s.share
	var timer *time.Timer
	for sh.synced.Load() < n {
		sh.mu.Lock()
		moved := sh.moved
		sh.mu.Unlock()
		if sh.synced.Load() >= n {
			break
		}
		if timer == nil {
			timer = time.NewTimer(s.shareWait)
			defer timer.Stop()
		}
		select {
		case <-moved:
		case <-timer.C:
			// No synced commit came: sync the WAL for every shared commit
			// written so far.
			mark := sh.written.Load()
			if err := s.db.LogData(nil, pebble.Sync); err != nil {
				return err
			}
			sh.covered(mark)
		}
	}
	return nil
}
