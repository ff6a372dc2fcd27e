package admin

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"relayq/pressure"
)

// FormatBytes formats n with a decimal unit, as config sizes are written:
// "512 B", "1.5 kB", "35 MB".
func FormatBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, exp := float64(n), 0
	for v >= unit && exp < 4 {
		v /= unit
		exp++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + []string{"", "kB", "MB", "GB", "TB"}[exp]
}

// FormatCount formats n with thousands separators: "12,345".
func FormatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// FormatValue formats a back-pressure reading or threshold in its unit.
func FormatValue(v float64, unit string) string {
	switch unit {
	case "bytes":
		return FormatBytes(int64(v))
	case "ratio":
		return strconv.FormatFloat(v*100, 'f', 0, 64) + "%"
	case "seconds":
		return time.Duration(v * float64(time.Second)).Round(time.Millisecond).String()
	}
	if v == math.Trunc(v) {
		return FormatCount(int64(v))
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// FormatAge formats a duration for people, coarsely: "42s", "7m", "3h12m",
// "2d4h".
func FormatAge(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		h := int(d.Hours())
		return fmt.Sprintf("%dh%02dm", h, int(d.Minutes())-60*h)
	}
	days := int(d.Hours()) / 24
	return fmt.Sprintf("%dd%dh", days, int(d.Hours())-24*days)
}

// FormatWhen says when t is relative to now: "in 4m", "3m ago", "now".
func FormatWhen(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now)
	switch {
	case d > -time.Second && d < time.Second:
		return "now"
	case d > 0:
		return "in " + FormatAge(d)
	}
	return FormatAge(d) + " ago"
}

// DescribePressure names the resources at the level of bp, with their
// readings and thresholds: "free_disk 412 MB (high below 500 MB)".
func DescribePressure(bp BackPressure) string {
	var parts []string
	for _, r := range bp.Resources {
		if r.Level != bp.Level || r.Level == pressure.Normal {
			continue
		}
		limit, cmp := r.High, "above"
		if r.Level == pressure.Medium {
			limit = r.Medium
		}
		if r.Falling {
			cmp = "below"
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s %s %s)", r.Name, FormatValue(r.Reading, r.Unit), r.Level, cmp, FormatValue(limit, r.Unit)))
	}
	if len(parts) == 0 {
		return bp.Level.String()
	}
	return strings.Join(parts, ", ")
}
