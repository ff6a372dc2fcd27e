package retry

import (
	"math"
	"testing"
	"time"
)

func fixed(u float64) func() float64 { return func() float64 { return u } }

func TestBackoffDelay(t *testing.T) {
	def := DefaultBackoff()
	def.Rand = fixed(0.5) // factor exactly 1
	low, high := DefaultBackoff(), DefaultBackoff()
	low.Rand, high.Rand = fixed(0), fixed(math.Nextafter(1, 0))

	tests := []struct {
		name    string
		b       Backoff
		attempt int
		want    time.Duration
	}{
		{"first failure waits Min", def, 1, 5 * time.Minute},
		{"second doubles", def, 2, 10 * time.Minute},
		{"third doubles again", def, 3, 20 * time.Minute},
		{"fourth", def, 4, 40 * time.Minute},
		{"fifth is capped at Max", def, 5, time.Hour},
		{"hundredth stays at Max", def, 100, time.Hour},
		{"MaxInt attempts do not overflow", def, math.MaxInt, time.Hour},
		{"attempt 0 counts as 1", def, 0, 5 * time.Minute},
		{"negative attempt counts as 1", def, -7, 5 * time.Minute},

		{"jitter low end: 10m scaled by 0.9", low, 2, 9 * time.Minute},
		{"jitter never goes below Min", low, 1, 5 * time.Minute},
		{"jitter high end: 20m scaled by just under 1.1", high, 3, time.Duration(float64(20*time.Minute) * (0.9 + 0.2*math.Nextafter(1, 0)))},
		{"jitter never goes above Max", high, 5, time.Hour},

		{"1ns to MaxInt64 after 100 attempts is MaxInt64",
			Backoff{Min: 1, Max: math.MaxInt64, Jitter: 0.2, Rand: fixed(0.999)}, 100, math.MaxInt64},
		{"1ns to MaxInt64 after 63 attempts is 2^62",
			Backoff{Min: 1, Max: math.MaxInt64, Rand: fixed(0.5)}, 63, 1 << 62},
		{"jitter above 1 is taken as 1",
			Backoff{Min: time.Second, Max: time.Hour, Jitter: 5, Rand: fixed(0)}, 3, 2 * time.Second},
		{"NaN jitter means none",
			Backoff{Min: time.Second, Max: time.Hour, Jitter: math.NaN(), Rand: fixed(0)}, 3, 4 * time.Second},
		{"a random source out of range is taken as the middle",
			Backoff{Min: time.Second, Max: time.Hour, Jitter: 1, Rand: fixed(7)}, 2, 2 * time.Second},
		{"a NaN random source is taken as the middle",
			Backoff{Min: time.Second, Max: time.Hour, Jitter: 1, Rand: fixed(math.NaN())}, 2, 2 * time.Second},
		{"Max below Min means Min",
			Backoff{Min: time.Minute, Max: time.Second}, 5, time.Minute},
		{"zero Min means no wait",
			Backoff{Max: time.Hour, Jitter: 0.2}, 10, 0},
		{"no jitter needs no random source",
			Backoff{Min: time.Second, Max: time.Minute, Rand: func() float64 { panic("called") }}, 2, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.b.Delay(tt.attempt); got != tt.want {
				t.Errorf("Delay(%d) = %v, want %v", tt.attempt, got, tt.want)
			}
		})
	}
}

// TestBackoffDefaultRandStaysInBounds uses the real random source: every
// delay stays within the jitter band, and the band is used (not one value).
func TestBackoffDefaultRandStaysInBounds(t *testing.T) {
	b := DefaultBackoff()
	seen := map[time.Duration]bool{}
	for range 200 {
		d := b.Delay(2) // 10m, band [9m, 11m)
		if d < 9*time.Minute || d >= 11*time.Minute {
			t.Fatalf("Delay(2) = %v, outside [9m, 11m)", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Errorf("200 draws gave %d distinct delays; jitter is not applied", len(seen))
	}
}
