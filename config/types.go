package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size is a number of bytes. In TOML it is a string with a unit ("35MB",
// "500MiB", "1.5GB") or a plain integer of bytes. Decimal units are powers
// of 1000 and binary units powers of 1024, as in IEC 80000-13: MB = 10^6,
// MiB = 2^20.
type Size int64

// Size units.
const (
	B   Size = 1
	KB  Size = 1000
	MB  Size = 1000 * KB
	GB  Size = 1000 * MB
	TB  Size = 1000 * GB
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

// sizeUnits is ordered largest first so that String picks the largest unit
// that divides a size exactly.
var sizeUnits = []struct {
	name string
	size Size
}{
	{"TiB", TiB}, {"TB", TB}, {"GiB", GiB}, {"GB", GB},
	{"MiB", MiB}, {"MB", MB}, {"KiB", KiB}, {"KB", KB}, {"B", B},
}

// ParseSize parses a size: a non-negative number, optionally with a
// fraction, then an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB;
// case-insensitive, a space before it allowed). A bare number is bytes.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	if num == "" {
		return 0, fmt.Errorf("invalid size %q: want a number and a unit, like \"35MB\" or \"500MiB\"", s)
	}
	mult := Size(0)
	for _, u := range sizeUnits {
		if strings.EqualFold(unit, u.name) {
			mult = u.size
			break
		}
	}
	if unit == "" {
		mult = B
	}
	if mult == 0 {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", s, unit)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/int64(mult) {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return Size(n) * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %q is not a number", s, num)
	}
	v := math.Round(f * float64(mult))
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(v), nil
}

// UnmarshalText implements encoding.TextUnmarshaler (TOML strings; TOML
// integers arrive as their decimal text).
func (s *Size) UnmarshalText(text []byte) error {
	v, err := ParseSize(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler with the String form.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// String formats s with the largest unit that divides it exactly ("35MB",
// "500MiB", "512B"), a form ParseSize reads back to the same value.
func (s Size) String() string {
	if s == 0 {
		return "0B"
	}
	if s < 0 {
		return strconv.FormatInt(int64(s), 10) + "B"
	}
	for _, u := range sizeUnits {
		if s%u.size == 0 {
			return strconv.FormatInt(int64(s/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B" // unreachable: B divides everything
}

// Duration is a time.Duration written in TOML as a Go duration string
// ("30s", "5m", "120h").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler with time.ParseDuration.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(text)))
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a Go duration like \"30s\", \"5m\" or \"120h\"", string(text))
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler with the String form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String formats d like time.Duration without trailing zero units: "5m",
// "1h", "120h", "1h30m", "0s".
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Percent is a fraction written in TOML as "75%" or as a number (0.75).
// It is stored as the fraction: "75%" is 0.75.
type Percent float64

// ParsePercent parses "75%" (0.75) or a plain number taken as the fraction
// itself ("0.75").
func ParsePercent(s string) (Percent, error) {
	t := strings.TrimSpace(s)
	num, isPercent := strings.CutSuffix(t, "%")
	f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid percentage %q: want \"75%%\" or 0.75", s)
	}
	if isPercent {
		f /= 100 // division, not *0.01: "90%" must give exactly 0.9
	}
	return Percent(f), nil
}

// UnmarshalText implements encoding.TextUnmarshaler (TOML strings; TOML
// numbers arrive as their decimal text).
func (p *Percent) UnmarshalText(text []byte) error {
	v, err := ParsePercent(string(text))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText implements encoding.TextMarshaler with the String form.
func (p Percent) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// String formats p as a percentage: 0.75 is "75%".
func (p Percent) String() string {
	v := math.Round(float64(p)*100*1e6) / 1e6 // hide float noise like 90.00000000000001
	return strconv.FormatFloat(v, 'f', -1, 64) + "%"
}
