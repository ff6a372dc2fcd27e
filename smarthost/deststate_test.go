package smarthost

import (
	"testing"
	"time"
)

func TestDestinationState(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		s    DestinationStatus
		want DestState
	}{
		{"at its configured cap", DestinationStatus{Cap: 20, MaxCap: 20}, DestOK},
		{"capped by a 421 4.3.2", DestinationStatus{Cap: 5, LearnedCap: 5, MaxCap: 20}, DestCapped},
		{"learned cap raised back to the maximum", DestinationStatus{Cap: 20, LearnedCap: 20, MaxCap: 20}, DestOK},
		{"failed 10 s ago", DestinationStatus{Cap: 20, MaxCap: 20, LastReplyAt: now.Add(-10 * time.Second)}, DestFailing},
		{"failed 2 min ago", DestinationStatus{Cap: 20, MaxCap: 20, LastReplyAt: now.Add(-2 * time.Minute)}, DestOK},
		{"failed before its cap last changed", DestinationStatus{Cap: 20, MaxCap: 20,
			LastReplyAt: now.Add(-10 * time.Second), Updated: now.Add(-5 * time.Second)}, DestOK},
		{"capped and failing: capped", DestinationStatus{Cap: 5, LearnedCap: 5, MaxCap: 20, LastReplyAt: now}, DestCapped},
	}
	for _, tt := range tests {
		if got := tt.s.State(now); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
