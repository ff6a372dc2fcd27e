package queue

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"relayq/queued"
)

// Key prefixes. The layout is described in doc.go.
const (
	prefixMeta     = "m/"
	prefixBody     = "b/"
	prefixSchedule = "s/"
	prefixPartial  = "p/"
	prefixDest     = "d/"
)

// idLen is the length of an ID in hex digits.
const idLen = queued.IDLen

func metaKey(id ID) []byte { return append([]byte(prefixMeta), id...) }

func partialKey(id ID) []byte { return append([]byte(prefixPartial), id...) }

// bodyKey is b/<id>/<chunk as 4 big-endian bytes>, so chunks scan in order.
func bodyKey(id ID, chunk uint32) []byte {
	k := make([]byte, 0, len(prefixBody)+idLen+1+4)
	k = append(k, prefixBody...)
	k = append(k, id...)
	k = append(k, '/')
	return binary.BigEndian.AppendUint32(k, chunk)
}

// bodyBounds returns [lower, upper) covering every chunk of id.
func bodyBounds(id ID) (lower, upper []byte) {
	lower = append(append([]byte(prefixBody), id...), '/')
	upper = append(append([]byte(prefixBody), id...), '/'+1)
	return lower, upper
}

// scheduleKey is s/<due as 8 big-endian bytes of Unix nanoseconds><id>, so a
// forward scan visits messages in due order.
func scheduleKey(due time.Time, id ID) []byte {
	k := make([]byte, 0, len(prefixSchedule)+8+idLen)
	k = append(k, prefixSchedule...)
	k = binary.BigEndian.AppendUint64(k, uint64(max(due.UnixNano(), 0)))
	return append(k, id...)
}

// parseScheduleKey is the inverse of scheduleKey.
func parseScheduleKey(k []byte) (time.Time, ID, error) {
	if len(k) != len(prefixSchedule)+8+idLen {
		return time.Time{}, "", fmt.Errorf("queue: bad schedule key %q", k)
	}
	ns := binary.BigEndian.Uint64(k[len(prefixSchedule):])
	return time.Unix(0, int64(ns)), ID(k[len(prefixSchedule)+8:]), nil
}

func destKey(dest string) []byte { return append([]byte(prefixDest), dest...) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p string) []byte {
	b := []byte(p)
	b[len(b)-1]++
	return b
}

// idSource makes IDs: 8 bytes of time (ns) and 4 bytes that are random at
// start and then count, so two IDs made in the same nanosecond still differ.
type idSource struct {
	now     func() time.Time
	counter atomic.Uint32
}

func newIDSource(now func() time.Time) *idSource {
	s := &idSource{now: now}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	s.counter.Store(binary.BigEndian.Uint32(seed[:]))
	return s
}

func (s *idSource) next() ID {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(s.now().UnixNano()))
	binary.BigEndian.PutUint32(b[8:], s.counter.Add(1))
	return ID(hex.EncodeToString(b[:]))
}

// ErrNotFound is returned for an ID that is not (or no longer) queued.
var ErrNotFound = errors.New("queue: message not found")
