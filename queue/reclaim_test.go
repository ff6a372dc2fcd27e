package queue

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"relayq/internal/diskspace"
)

// TestDeliveredMailIsReclaimedWhileTheVolumeIsLow: 8 MB of mail is queued
// (Pebble flushes most of it to tables) and then delivered, with nothing
// else written. While free space is below ReclaimBelow (here always), the
// queue flushes and compacts the deleted ranges by itself: Pebble's disk
// usage falls back to about what an empty queue takes. Without it the
// tables and logs of the delivered mail would stay until the next writes.
func TestDeliveredMailIsReclaimedWhileTheVolumeIsLow(t *testing.T) {
	dir := t.TempDir()
	if _, ok := diskspace.Free(dir); !ok {
		t.Skip("statfs is not available here")
	}
	s, err := Open(dir, Options{Reserve: 1, ReclaimBelow: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	// The space of bodies: tables, live and waiting for deletion, and the
	// WAL, whose files stay while the memtable they log is not flushed.
	tables := func() int64 {
		m := s.db.Metrics()
		return m.Total().TablesSize + int64(m.Table.Local.ObsoleteSize)
	}
	wal := func() int64 { return int64(s.db.Metrics().WAL.PhysicalSize) }
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []ID
	for i := 0; i < 40; i++ {
		id := s.NewID()
		if err := s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), bytes.NewReader(randomBody(rng, 200_000))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	fullTables, fullWAL := tables(), wal()
	for _, id := range ids {
		deliverFirst(t, s, id)
	}
	// The tables of the bodies go, and so do the WAL files that logged
	// them (but one: the log in use).
	deadline := time.Now().Add(15 * time.Second)
	for tables() > 64<<10 || wal() > 2<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("15 s after all 8 MB of mail was delivered Pebble's tables take %d bytes (%d before), its WAL %d (%d before)",
				tables(), fullTables, wal(), fullWAL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("tables %d → %d bytes, WAL %d → %d bytes", fullTables, tables(), fullWAL, wal())
}

// deliverFirst marks the first recipient of id delivered.
func deliverFirst(t *testing.T, s *Store, id ID) {
	t.Helper()
	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	m.Recipients[0].State = Delivered
	if err := s.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// ReclaimBelow defaults to 4 × the reserve, and a reload changes it.
func TestSetReclaimBelowDefaultsToFourReserves(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Reserve: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct{ set, want int64 }{{-1, 4 << 20}, {5e9, 5e9}, {0, 4 << 20}} {
		if tc.set >= 0 {
			s.SetReclaimBelow(tc.set)
		}
		if got := s.reclaim.below.Load(); got != tc.want {
			t.Errorf("after SetReclaimBelow(%d): %d, want %d", tc.set, got, tc.want)
		}
	}
}
