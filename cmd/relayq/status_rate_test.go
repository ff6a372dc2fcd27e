package main

import (
	"strings"
	"testing"
	"time"

	"relayq/admin"
)

// relayq status shows each destination's waiting mail and its rate: the
// configured one, and the learned one with the reply that set it.
func TestStatusShowsDestinationRates(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out strings.Builder
	printStatus(&out, admin.Status{Time: now, Started: now, Destinations: []admin.Destination{
		{Name: "smarthost:smtp.office365.com:587", Cap: 20, Open: 1, Waiting: 42, RateLimit: "30/min",
			LearnedRate: "15/min", RateReason: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"},
		{Name: "mx:mx.example.org", Cap: 20},
	}})
	var office, mx string
	for _, line := range strings.Split(out.String(), "\n") {
		switch {
		case strings.Contains(line, "office365"):
			office = line
		case strings.Contains(line, "mx.example.org"):
			mx = line
		}
	}
	for _, want := range []string{" 42 ", "30/min, learned 15/min (432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded)"} {
		if !strings.Contains(office, want) {
			t.Errorf("the paced destination's line %q lacks %q", office, want)
		}
	}
	if !strings.Contains(mx, " 0 ") || strings.Contains(mx, "/min") {
		t.Errorf("the unpaced destination's line %q: want 0 waiting and no rate", mx)
	}
}
