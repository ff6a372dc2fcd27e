package relay

import (
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// StallWatch turns Pebble's write-stall events into a back-pressure
// reading: pass EventListener() in queue.Options and the watch in
// PressureConfig.Stalls.
type StallWatch struct {
	now  func() time.Time
	poke chan struct{} // a stall began or disk space is low: sample now

	mu struct {
		sync.Mutex
		since   time.Time     // start of the stall in progress; zero: none
		longest time.Duration // longest stall ended since the last take
		count   int64
	}
}

// NewStallWatch returns a watch on the real clock.
func NewStallWatch() *StallWatch {
	return &StallWatch{now: time.Now, poke: make(chan struct{}, 1)}
}

// EventListener returns the Pebble listener that feeds the watch: write
// stalls are timed, and a stall, a low-disk-space event or a deleted
// table or log (space came back: the queue reclaims the space of
// delivered mail when the volume is low, queue/reclaim.go) makes the
// monitor sample at once.
func (w *StallWatch) EventListener() *pebble.EventListener {
	return &pebble.EventListener{
		WriteStallBegin: func(pebble.WriteStallBeginInfo) { w.begin() },
		WriteStallEnd:   w.end,
		LowDiskSpace:    func(pebble.LowDiskSpaceInfo) { w.pokeMonitor() },
		TableDeleted:    func(pebble.TableDeleteInfo) { w.pokeMonitor() },
		WALDeleted:      func(pebble.WALDeleteInfo) { w.pokeMonitor() },
	}
}

// Stalls returns how many write stalls began since the watch was made.
func (w *StallWatch) Stalls() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mu.count
}

func (w *StallWatch) begin() {
	w.mu.Lock()
	if w.mu.since.IsZero() {
		w.mu.since = w.now()
		w.mu.count++
	}
	w.mu.Unlock()
	w.pokeMonitor()
}

func (w *StallWatch) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.mu.since.IsZero() {
		w.mu.longest = max(w.mu.longest, w.now().Sub(w.mu.since))
		w.mu.since = time.Time{}
	}
}

func (w *StallWatch) pokeMonitor() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// take returns the longest stall since the last take, counting one still
// in progress up to now (so a sample always sees a stall that began since
// the previous one, however short), and starts a new period.
func (w *StallWatch) take(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.mu.longest
	if !w.mu.since.IsZero() {
		// At least a nanosecond: a stall that just began is a stall.
		d = max(d, now.Sub(w.mu.since), time.Nanosecond)
	}
	w.mu.longest = 0
	return d
}
