package queue

import (
	"context"
	"errors"
	"strings"
	"testing"

	"relayq/internal/diskspace"
)

// TestPutRefusesBelowTheReserve: a message that would leave less than the
// reserve free is refused with ErrNoRoom and leaves nothing behind, so the
// client gets 452 4.3.1 while Pebble still has room to work.
func TestPutRefusesBelowTheReserve(t *testing.T) {
	dir := t.TempDir()
	free, ok := diskspace.Free(dir)
	if !ok {
		t.Skip("statfs is not available here")
	}
	s, err := Open(dir, Options{Reserve: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, s.NewID(), envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("fits")); err != nil {
		t.Fatalf("with a 1 MiB reserve and %d bytes free: %v", free, err)
	}
	s.reserve = free + 1<<30 // as if the volume were nearly full
	id := s.NewID()
	err = s.Put(ctx, id, envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("does not fit"))
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Put below the reserve: %v, want ErrNoRoom", err)
	}
	if _, err := s.Get(id); !errors.Is(err, ErrNotFound) || s.Messages() != 1 {
		t.Fatalf("a refused message was stored: %v, %d queued", err, s.Messages())
	}
}

// TestOpenRefusesAFullVolume: opening replays and flushes the log, which
// Pebble retries for ever on a full volume; Open says so instead.
func TestOpenRefusesAFullVolume(t *testing.T) {
	dir := t.TempDir()
	free, ok := diskspace.Free(dir)
	if !ok {
		t.Skip("statfs is not available here")
	}
	_, err := Open(dir, Options{Reserve: 8 * (free + 1<<30)})
	if err == nil || !strings.Contains(err.Error(), "free some space") {
		t.Fatalf("Open with far too little space: %v, want a clear refusal", err)
	}
}
