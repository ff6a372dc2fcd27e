package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// ErrNoDest is returned by Dest for a destination with no stored state.
var ErrNoDest = errors.New("queue: no stored state for destination")

// maxDestName bounds a destination name: it is part of a key, and comes
// from DNS (an MX set) and the configuration.
const maxDestName = 4096

// SetDest stores v as the learned state of the destination name under
// d/<name>, replacing what was there, and returns once it is synced: a cap
// learned from a 421 4.3.2 (a server that allows only so many connections
// per source) must survive a crash as surely as the mail it protects. The encoding of v is the caller's business.
func (s *Store) SetDest(ctx context.Context, name string, v []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkDestName(name); err != nil {
		return err
	}
	if err := s.db.Set(destKey(name), v, pebble.Sync); err != nil {
		return fmt.Errorf("queue: set destination %q: %w", name, err)
	}
	return nil
}

// DeleteDest forgets the stored state of name (an operator's reset); it is
// not an error if there is none. The delete is synced.
func (s *Store) DeleteDest(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkDestName(name); err != nil {
		return err
	}
	if err := s.db.Delete(destKey(name), pebble.Sync); err != nil {
		return fmt.Errorf("queue: delete destination %q: %w", name, err)
	}
	return nil
}

// Dest returns a copy of the stored state of name, or ErrNoDest.
func (s *Store) Dest(name string) ([]byte, error) {
	if err := checkDestName(name); err != nil {
		return nil, err
	}
	v, closer, err := s.db.Get(destKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNoDest
	}
	if err != nil {
		return nil, fmt.Errorf("queue: get destination %q: %w", name, err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// Dests returns every stored destination state by name. There are few:
// one per destination whose cap was ever learned, read once at start.
func (s *Store) Dests() (map[string][]byte, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte(prefixDest),
		UpperBound: prefixEnd(prefixDest),
	})
	if err != nil {
		return nil, fmt.Errorf("queue: destinations: %w", err)
	}
	defer it.Close()
	out := map[string][]byte{}
	for ok := it.First(); ok; ok = it.Next() {
		name := string(it.Key()[len(prefixDest):])
		out[name] = append([]byte(nil), it.Value()...)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("queue: destinations: %w", err)
	}
	return out, nil
}

func checkDestName(name string) error {
	if name == "" || len(name) > maxDestName {
		return fmt.Errorf("queue: bad destination name (%d bytes)", len(name))
	}
	return nil
}
