package admin

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestStatusPageShowsCountPressureDestinationsAndEvents(t *testing.T) {
	f := newFixture(t, nil)
	for i := 0; i < 3; i++ {
		f.put("app@shop.invalid", 0, "a@dest.invalid")
	}
	f.dests.list = []Destination{{Name: "smarthost:10.0.0.5:25", Cap: 4, ConfiguredCap: 20, CapReason: "421 4.3.2 too many connections", Open: 4, State: "ok", LastReply: "250 2.0.0 ok"}}
	f.srv.Event(Event{Time: f.clock(), Kind: EventDeferred, ID: "0123456789abcdef01234567", Rcpt: "a@dest.invalid", Dest: "10.0.0.5:25", Reply: "451 4.4.1 connection refused",
		MessageID: "<n.1@shop.invalid>", Subject: "Nightly <report>"})
	f.srv.Event(Event{Time: f.clock(), Kind: EventBounced, ID: "0123456789abcdef01234568", Rcpt: "<script>@dest.invalid", Reply: "550 5.1.1 no such user"})

	code, body := f.do("GET", "/", nil)
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	page := string(body)
	for _, want := range []string{
		`id="queue-count" data-count="3">3<`,
		`<meta http-equiv="refresh" content="10">`,
		`id="pressure-level">normal<`,
		"free_disk", "12 GB", "medium below 4 GB · high below 500 MB",
		"smarthost:10.0.0.5:25", "4 / 4", "learned, configured 20",
		"451 4.4.1 connection refused", "4.4.1 ", // the explain summary
		"550 5.1.1 no such user", "&lt;script&gt;@dest.invalid",
		"&lt;n.1@shop.invalid&gt;", "Nightly &lt;report&gt;",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Everything comes from this server: no CDN, no remote font.
	if m := regexp.MustCompile(`(src|href)="(https?:)?//`).FindString(page); m != "" {
		t.Errorf("page refers to another site: %s", m)
	}
	code, css := f.do("GET", "/static/style.css", nil)
	if code != http.StatusOK || !strings.Contains(string(css), ".card") {
		t.Fatalf("GET /static/style.css = %d", code)
	}
}

func TestStatusPageChartCoversTheLastHour(t *testing.T) {
	f := newFixture(t, nil)
	now := f.clock()
	f.srv.depth.add(now.Add(-2*time.Hour), 999) // too old to draw
	for i := 0; i < 6; i++ {
		f.srv.depth.add(now.Add(time.Duration(i-6)*10*time.Minute), int64(i*30))
	}
	c := f.srv.depth.chart(now, 40)
	if c.Samples != 6 { // -50m … -10m, and now (-60m is not within the hour)
		t.Fatalf("chart has %d points, want 6: %s", c.Samples, c.Line)
	}
	if c.Span != "50 min" || c.HalfSpan != "25 min" || c.Now != "40" || c.Peak != "150" {
		t.Fatalf("span %s / %s, now %s, peak %s; want the 50 minutes since the first sample", c.Span, c.HalfSpan, c.Now, c.Peak)
	}
	if c.Max != "200" || c.Mid != "100" {
		t.Fatalf("axis = %s / %s, want 200 / 100 (peak 150)", c.Max, c.Mid)
	}
	pts := strings.Fields(c.Line)
	if pts[len(pts)-1] != "720.0,108.4" { // now: 40 of 200 on a 128-unit axis above y=134
		t.Fatalf("last point = %s", pts[len(pts)-1])
	}
	if empty := newDepthRing(3).chart(now, 0); empty.Samples != 1 || empty.Max != "10" || empty.Span != "5 min" {
		t.Fatalf("chart of nothing = %+v", empty)
	}
}

func TestEventsKeepTheNewestFirst(t *testing.T) {
	e := NewEvents(3)
	if got := e.Recent(10); len(got) != 0 {
		t.Fatalf("empty ring gave %v", got)
	}
	for i := 0; i < 5; i++ {
		e.Add(Event{ID: string(rune('a' + i)), Reply: "451 4.4.1 refused"})
	}
	got := e.Recent(10)
	if len(got) != 3 || got[0].ID != "e" || got[2].ID != "c" {
		t.Fatalf("recent = %+v", got)
	}
	if !strings.HasPrefix(got[0].Explain, "4.4.1 ") || got[0].Hint == "" {
		t.Fatalf("event not explained: %+v", got[0])
	}
	if got := e.Recent(1); len(got) != 1 || got[0].ID != "e" {
		t.Fatalf("recent(1) = %+v", got)
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{FormatBytes(512), "512 B"},
		{FormatBytes(1500), "1.5 kB"},
		{FormatBytes(35_000_000), "35 MB"},
		{FormatCount(1234567), "1,234,567"},
		{FormatCount(999), "999"},
		{FormatValue(0.755, "ratio"), "76%"},
		{FormatAge(90 * time.Second), "1m"},
		{FormatAge(3*time.Hour + 12*time.Minute), "3h12m"},
		{FormatAge(52 * time.Hour), "2d4h"},
		{FormatWhen(time.Unix(100, 0), time.Unix(40, 0)), "in 1m"},
		{FormatWhen(time.Unix(40, 0), time.Unix(100, 0)), "1m ago"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if d, err := ParseAge("3d"); err != nil || d != 72*time.Hour {
		t.Errorf("ParseAge(3d) = %v, %v", d, err)
	}
}

func TestPressureBarsFillTowardTheHighThreshold(t *testing.T) {
	for _, tc := range []struct {
		r               Resource
		fill, mediumPos int
	}{
		{Resource{Reading: 0.45, Medium: 0.75, High: 0.9, Unit: "ratio"}, 50, 83},
		{Resource{Reading: 2e6, Medium: 2e5, High: 5e5, Unit: "count"}, 100, 40},
		// Free disk: full bar at 500 MB left, empty at 8 GB (twice medium).
		{Resource{Reading: 3.1e9, Medium: 4e9, High: 5e8, Unit: "bytes", Falling: true}, 65, 53},
		{Resource{Reading: 12e9, Medium: 4e9, High: 5e8, Unit: "bytes", Falling: true}, 0, 53},
		{Resource{Reading: 1e8, Medium: 4e9, High: 5e8, Unit: "bytes", Falling: true}, 100, 53},
	} {
		v := newResourceView(tc.r)
		if v.Fill != tc.fill || v.MediumPos != tc.mediumPos {
			t.Errorf("%+v: fill %d tick %d, want %d %d", tc.r, v.Fill, v.MediumPos, tc.fill, tc.mediumPos)
		}
	}
}

func TestStatusPageSaysWhenBackPressureIsNotMonitored(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.BackPressure, o.Destinations = nil, nil })
	_, body := f.do("GET", "/", nil)
	for _, want := range []string{`id="pressure-level">off<`, "Back pressure is not monitored.", "No destination has been tried yet.", "No deferrals or bounces since relayq started."} {
		if !strings.Contains(string(body), want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if code, _ := f.do("GET", "/readyz", nil); code != http.StatusOK {
		t.Errorf("readyz without a back-pressure source = %d", code)
	}
}
