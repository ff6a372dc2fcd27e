package pressure

import (
	"sync"
	"time"
)

// StallWatch turns the queue's storage events into a back-pressure
// reading: pass it as the queue's StorageEvents (queue.Options.Events) and
// in Config.Stalls. Its methods are called on the storage engine's own
// goroutines and return at once.
type StallWatch struct {
	now  func() time.Time
	poke chan struct{} // a stall began or disk space changed: sample now

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

// WriteStallBegin records that the queue's writes stalled (Pebble's
// memtables full, a flush behind) and has the monitor sample at once.
func (w *StallWatch) WriteStallBegin() {
	w.mu.Lock()
	if w.mu.since.IsZero() {
		w.mu.since = w.now()
		w.mu.count++
	}
	w.mu.Unlock()
	w.pokeMonitor()
}

// WriteStallEnd records that the stall in progress ended.
func (w *StallWatch) WriteStallEnd() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.mu.since.IsZero() {
		w.mu.longest = max(w.mu.longest, w.now().Sub(w.mu.since))
		w.mu.since = time.Time{}
	}
}

// SpaceChanged has the monitor sample at once: disk space is low, or a
// table or log was deleted and space came back (the queue reclaims the
// space of delivered mail when the volume is low, queue/reclaim.go).
func (w *StallWatch) SpaceChanged() { w.pokeMonitor() }

// Stalls returns how many write stalls began since the watch was made.
func (w *StallWatch) Stalls() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mu.count
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
