package retry

import (
	"math/rand/v2"
	"time"

	"relayq/config"
)

// Backoff is the retry schedule after temporary failures: exponential from
// Min to Max, with jitter so that messages deferred together do not all come
// back together.
type Backoff struct {
	Min, Max time.Duration
	Jitter   float64        // fraction of the delay, 0..1; the delay is scaled by a factor in [1-Jitter/2, 1+Jitter/2), then clamped to [Min, Max]
	Rand     func() float64 // in [0,1); nil means math/rand/v2.Float64
}

// Jitter is the jitter of relayq's backoff (not a configuration key): 20%,
// so that messages deferred together do not come back together.
const Jitter = 0.2

// DefaultBackoff is the schedule of the config defaults (min_backoff,
// max_backoff) with Jitter.
func DefaultBackoff() Backoff {
	return Backoff{Min: config.DefaultMinBackoff, Max: config.DefaultMaxBackoff, Jitter: Jitter}
}

// Delay returns the wait after the attempt-th failed attempt (attempt >= 1;
// smaller counts as 1): Min, 2*Min, 4*Min … capped at Max, with jitter. It is
// overflow-safe for huge attempt counts and never outside [Min, Max]. A Min
// <= 0 means no wait; a Max below Min is taken as Min.
func (b Backoff) Delay(attempt int) time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		return 0
	}
	if hi < lo {
		hi = lo
	}
	d := lo
	// At most 63 doublings before d reaches hi, whatever attempt is.
	for i := 1; i < attempt && d < hi; i++ {
		if d > hi/2 {
			d = hi
			break
		}
		d *= 2
	}

	j := b.Jitter
	if !(j > 0) { // also NaN
		return d
	}
	j = min(j, 1)
	rnd := rand.Float64
	if b.Rand != nil {
		rnd = b.Rand
	}
	u := rnd()
	if !(u >= 0) || u >= 1 { // a broken source must not break the bounds
		u = 0.5
	}
	x := float64(d) * (1 - j/2 + j*u)
	// Clamp in float64: converting a value beyond MaxInt64 is undefined.
	switch {
	case x <= float64(lo):
		return lo
	case x >= float64(hi):
		return hi
	}
	return time.Duration(x)
}
