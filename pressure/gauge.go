package pressure

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Units of gauge readings.
const (
	unitBytes    = "bytes"
	unitMessages = "messages"
	unitRatio    = "ratio"
	unitSeconds  = "seconds"
)

// gauge is one resource's thresholds and state.
type gauge struct {
	res          Resource
	unit         string
	lowerWorse   bool    // free disk: less is worse
	medium, high float64 // 0: off

	level, prev Level
	since       time.Time
	value       float64
	err         error
}

func (g *gauge) threshold(l Level) float64 {
	switch l {
	case Medium:
		return g.medium
	case High:
		return g.high
	}
	return 0
}

// crossed reports whether v is at the bad side of threshold t.
func (g *gauge) crossed(v, t float64) bool {
	if t <= 0 {
		return false
	}
	if g.lowerWorse {
		return v < t
	}
	return v >= t
}

// clear reports whether v is comfortably at the good side of t: by margin.
func (g *gauge) clear(v, t, margin float64) bool {
	if t <= 0 {
		return true
	}
	if g.lowerWorse {
		return v >= t*(1+margin)
	}
	return v < t*(1-margin)
}

// next is the level for reading v: a worse level is entered as soon as its
// threshold is crossed; a level is left only when v is clear of its
// threshold by margin (hysteresis).
func (g *gauge) next(v, margin float64) Level {
	target := Normal
	switch {
	case g.crossed(v, g.high):
		target = High
	case g.crossed(v, g.medium):
		target = Medium
	}
	if target >= g.level {
		return target
	}
	l := g.level
	for l > target && g.clear(v, g.threshold(l), margin) {
		l--
	}
	return l
}

// format renders a reading for people.
func format(unit string, v float64) string {
	switch unit {
	case unitBytes:
		return formatBytes(v)
	case unitRatio:
		return strconv.FormatFloat(v*100, 'f', 1, 64) + "%"
	case unitSeconds:
		return time.Duration(v * float64(time.Second)).Round(time.Millisecond).String()
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// thresholdText renders a threshold for people: "off" when 0, "any" for
// the default medium write-stall threshold (any stall at all).
func thresholdText(unit string, t float64) string {
	switch {
	case t <= 0:
		return "off"
	case unit == unitSeconds && t < 0.001:
		return "any"
	}
	return format(unit, t)
}

// formatBytes uses decimal units, as the thresholds in the config do
// ("4GB" = 4e9 bytes).
func formatBytes(v float64) string {
	units := []string{"B", "KB", "MB", "GB", "TB"} // as config.Size: no PB
	i := 0
	for v >= 1000 && i < len(units)-1 {
		v /= 1000
		i++
	}
	s := strings.TrimRight(strconv.FormatFloat(v, 'f', 2, 64), "0")
	return strings.TrimSuffix(s, ".") + units[i]
}

// errNoProbe is returned by the probes on systems they do not support.
var errNoProbe = errors.ErrUnsupported
