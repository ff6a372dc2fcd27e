package admin

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

type fakeRates struct{ rl RateLimits }

func (f *fakeRates) RateLimits() RateLimits { return f.rl }

func TestRateLimitsInMetricsAndStatus(t *testing.T) {
	since := time.Date(2026, 3, 2, 9, 58, 0, 0, time.UTC)
	src := &fakeRates{rl: RateLimits{
		Limited: []RateLimited{{Limit: "user_messages", Key: "app1", PerHour: 100, Since: since, Refused: 7}},
		Refused: map[string]int64{"user_messages": 9, "source_messages": 0, "user_recipients": 2},
	}}
	f := newFixture(t, func(o *Options) { o.RateLimits = src })
	code, m := f.do("GET", "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for series, want := range map[string]float64{
		`relayq_rate_limit_refusals_total{limit="user_messages"}`:   9,
		`relayq_rate_limit_refusals_total{limit="source_messages"}`: 0,
		`relayq_rate_limit_refusals_total{limit="user_recipients"}`: 2,
		`relayq_rate_limited{limit="user_messages"}`:                1,
		`relayq_rate_limited{limit="user_recipients"}`:              0,
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if code, page := f.do("GET", "/", nil); code != http.StatusOK ||
		!strings.Contains(string(page), "Rate limited") || !strings.Contains(string(page), `<td class="mono">app1</td><td>user_messages</td>`) {
		t.Errorf("status page: %d, no rate-limited row for app1", code)
	}
	var st Status
	f.getJSON("/api/status", &st)
	if len(st.RateLimited) != 1 || st.RateLimited[0] != src.rl.Limited[0] {
		t.Errorf("status rate_limited = %+v, want %+v", st.RateLimited, src.rl.Limited)
	}
}
