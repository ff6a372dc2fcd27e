package admin

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"time"
)

//go:embed assets
var assets embed.FS

// staticFS holds the files served under /static/.
var staticFS = mustSub(assets, "assets/static")

var pageTemplate = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"count": FormatCount,
	"bytes": FormatBytes,
	"value": FormatValue,
	"clock": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format("15:04:05")
	},
}).ParseFS(assets, "assets/page.html"))

// pageRefresh is how often the status page reloads itself.
const pageRefresh = 10 * time.Second

// pageView is what the status page template renders.
type pageView struct {
	Status
	Refresh   int
	Level     string
	OldestAge string
	Uptime    string
	Chart     chart
	Resources []resourceView
	Dests     []destView
	Events    []eventView
}

type resourceView struct {
	Resource
	Fill       int // percent of the bar, 100 = at the high threshold
	MediumPos  int // percent where the medium threshold sits
	Thresholds string
}

type destView struct {
	Destination
	Learned bool
	Next    string
}

type eventView struct {
	Event
	Ago string
}

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	st := s.status()
	v := pageView{
		Status:  st,
		Refresh: int(pageRefresh.Seconds()),
		Level:   "off", // not monitored
		Uptime:  FormatAge(st.Time.Sub(st.Started)),
		Chart:   s.depth.chart(st.Time, st.Queue.Messages),
	}
	if !st.Queue.Oldest.IsZero() {
		v.OldestAge = FormatAge(st.Time.Sub(st.Queue.Oldest))
	}
	if st.BackPressure != nil {
		v.Level = st.BackPressure.Level.String()
		for _, r := range st.BackPressure.Resources {
			v.Resources = append(v.Resources, newResourceView(r))
		}
	}
	for _, d := range st.Destinations {
		learned := d.LearnedCap > 0 || (d.ConfiguredCap > 0 && d.Cap < d.ConfiguredCap)
		v.Dests = append(v.Dests, destView{Destination: d, Learned: learned, Next: FormatWhen(d.NextAttempt, st.Time)})
	}
	for _, e := range st.Recent {
		v.Events = append(v.Events, eventView{Event: e, Ago: FormatWhen(e.Time, st.Time)})
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, v); err != nil {
		s.opts.Log.Error().Err(err).Msg("rendering the status page")
		http.Error(w, "rendering the status page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// newResourceView places a reading on a bar that is full at the high
// threshold, with a tick at the medium one. A rising resource's bar runs
// from 0; a falling one's (free disk) from twice its medium threshold,
// plenty, down to its high threshold.
func newResourceView(r Resource) resourceView {
	v := resourceView{Resource: r}
	if r.Medium == 0 && r.High == 0 {
		v.Thresholds = "for information, no thresholds"
		return v
	}
	pct := func(f float64) int { return int(min(max(f, 0), 1) * 100) }
	if r.Falling {
		plenty := 2 * r.Medium
		if span := plenty - r.High; span > 0 {
			v.Fill = pct((plenty - r.Reading) / span)
			v.MediumPos = pct((plenty - r.Medium) / span)
		}
		v.Thresholds = fmt.Sprintf("medium below %s · high below %s", FormatValue(r.Medium, r.Unit), FormatValue(r.High, r.Unit))
		return v
	}
	if r.High > 0 {
		v.Fill = pct(r.Reading / r.High)
		v.MediumPos = pct(r.Medium / r.High)
	}
	v.Thresholds = fmt.Sprintf("medium above %s · high above %s", FormatValue(r.Medium, r.Unit), FormatValue(r.High, r.Unit))
	return v
}

// depthRing keeps the queue depth samples of the last hour.
type depthRing struct {
	mu struct {
		sync.Mutex
		samples []sample
		next    int
		full    bool
	}
}

type sample struct {
	t time.Time
	n int64
}

func newDepthRing(n int) *depthRing {
	r := &depthRing{}
	r.mu.samples = make([]sample, n)
	return r
}

func (r *depthRing) add(t time.Time, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.samples[r.mu.next] = sample{t, n}
	r.mu.next = (r.mu.next + 1) % len(r.mu.samples)
	if r.mu.next == 0 {
		r.mu.full = true
	}
}

// since returns the samples taken after from, oldest first.
func (r *depthRing) since(from time.Time) []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sample
	start, size := 0, r.mu.next
	if r.mu.full {
		start, size = r.mu.next, len(r.mu.samples)
	}
	for i := 0; i < size; i++ {
		s := r.mu.samples[(start+i)%len(r.mu.samples)]
		if s.t.After(from) {
			out = append(out, s)
		}
	}
	return out
}

// chart is the queue depth sparkline, drawn on the server as SVG: no
// script, nothing fetched.
type chart struct {
	W, H              int
	Line, Area        string // SVG points
	Max, Mid          string // y axis labels
	YTop, YMid, YBase int    // grid lines
	Span, HalfSpan    string // x axis labels: "60 min", "30 min"
	Samples           int
	Now, Peak         string
}

const (
	chartW, chartH, chartPad = 720, 140, 6
	// The chart spans the last hour, or the time since the first sample
	// when that is shorter (but at least minSpan), so a young instance's
	// line is not a sliver at the right edge.
	maxSpan = time.Hour
	minSpan = 5 * time.Minute
)

// chart draws the samples up to now, where the current depth is.
func (r *depthRing) chart(now time.Time, current int64) chart {
	pts := append(r.since(now.Add(-maxSpan)), sample{now, current})
	span := min(max(now.Sub(pts[0].t), minSpan), maxSpan).Round(time.Minute)
	from := now.Add(-span)
	peak := int64(0)
	for _, p := range pts {
		peak = max(peak, p.n)
	}
	top := niceCeil(peak)
	c := chart{W: chartW, H: chartH, Max: FormatCount(top), Mid: FormatCount(top / 2), Samples: len(pts),
		YTop: chartPad, YMid: chartH / 2, YBase: chartH - chartPad,
		Span: spanLabel(span), HalfSpan: spanLabel(span / 2), Now: FormatCount(current), Peak: FormatCount(peak)}
	x := func(t time.Time) float64 { return float64(chartW) * float64(t.Sub(from)) / float64(span) }
	y := func(n int64) float64 {
		return float64(chartH-chartPad) - float64(chartH-2*chartPad)*float64(n)/float64(top)
	}
	var line strings.Builder
	for i, p := range pts {
		if i > 0 {
			line.WriteByte(' ')
		}
		fmt.Fprintf(&line, "%.1f,%.1f", x(p.t), y(p.n))
	}
	c.Line = line.String()
	c.Area = fmt.Sprintf("%.1f,%d %s %.1f,%d", x(pts[0].t), chartH-chartPad, c.Line, x(now), chartH-chartPad)
	return c
}

func spanLabel(d time.Duration) string {
	if d%time.Minute != 0 {
		return fmt.Sprintf("%.1f min", d.Minutes())
	}
	return fmt.Sprintf("%d min", int(d.Minutes()))
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten (at least 10), so
// the axis reads well.
func niceCeil(n int64) int64 {
	for p := int64(10); ; p *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if n <= m*p {
				return m * p
			}
		}
	}
}

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}
