//go:build race

package queue

// raceEnabled: the test binary runs under the race detector, whose
// sync.Pool drops a quarter of what is put back (to find races on pooled
// objects), so pooled buffers are made again and allocations grow.
const raceEnabled = true
