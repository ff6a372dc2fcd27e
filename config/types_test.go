package config

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestParseSizeAcceptsDecimalAndBinaryUnits(t *testing.T) {
	tests := []struct {
		in   string
		want Size
	}{
		{"35MB", 35_000_000},
		{"500MiB", 500 << 20},
		{"4GB", 4_000_000_000},
		{"1000TB", 1000 * 1_000_000_000_000},
		{"512", 512},
		{"512B", 512},
		{"64KiB", 64 << 10},
		{"1.5GB", 1_500_000_000},
		{"0.5KiB", 512},
		{"35mb", 35_000_000},
		{" 35 MB ", 35_000_000},
		{"2TiB", 2 << 40},
		{"0", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if err != nil {
				t.Fatalf("ParseSize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseSizeRejectsNonsense(t *testing.T) {
	for _, in := range []string{"", "MB", "35XB", "-5MB", "1.2.3MB", "35 M B", "99999999999999999999", "10000000TB", "1e3MB"} {
		t.Run(in, func(t *testing.T) {
			if got, err := ParseSize(in); err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", in, got)
			}
		})
	}
}

func TestSizeStringRoundTrips(t *testing.T) {
	tests := []struct {
		in   Size
		want string
	}{
		{35 * MB, "35MB"},
		{500 * MiB, "500MiB"},
		{4 * GB, "4GB"},
		{1000 * TB, "1000TB"},
		{512, "512B"},
		{1536, "1536B"}, // 1.5KiB: no unit divides it and a fraction is not written
		{3 * KiB, "3KiB"},
		{0, "0B"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.in.String(); got != tt.want {
				t.Errorf("Size(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
			}
			back, err := ParseSize(tt.in.String())
			if err != nil || back != tt.in {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in.String(), back, err, tt.in)
			}
		})
	}
}

func TestDurationParsesGoDurationsAndPrintsShortForm(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		str  string
	}{
		{"30s", 30 * time.Second, "30s"},
		{"5m", 5 * time.Minute, "5m"},
		{"1h", time.Hour, "1h"},
		{"120h", 120 * time.Hour, "120h"},
		{"1h30m", 90 * time.Minute, "1h30m"},
		{"0s", 0, "0s"},
		{"1m30s", 90 * time.Second, "1m30s"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var d Duration
			if err := d.UnmarshalText([]byte(tt.in)); err != nil {
				t.Fatal(err)
			}
			if d.Std() != tt.want {
				t.Errorf("got %v, want %v", d.Std(), tt.want)
			}
			if d.String() != tt.str {
				t.Errorf("String() = %q, want %q", d.String(), tt.str)
			}
		})
	}
	var d Duration
	for _, bad := range []string{"300", "5 minutes", ""} {
		if err := d.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded, want an error", bad)
		}
	}
}

func TestPercentAcceptsPercentSignOrFraction(t *testing.T) {
	tests := []struct {
		in   string
		want Percent
		str  string
	}{
		{"75%", 0.75, "75%"},
		{"90%", 0.9, "90%"},
		{"0.75", 0.75, "75%"},
		{"12.5%", 0.125, "12.5%"},
		{"100%", 1, "100%"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePercent(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParsePercent(%q) = %v, want %v", tt.in, float64(got), float64(tt.want))
			}
			if got.String() != tt.str {
				t.Errorf("String() = %q, want %q", got.String(), tt.str)
			}
		})
	}
	for _, bad := range []string{"", "%", "lots", "NaN%", "75%%"} {
		if got, err := ParsePercent(bad); err == nil {
			t.Errorf("ParsePercent(%q) = %v, want an error", bad, got)
		}
	}
}

// TOML integers and floats reach UnmarshalText as text: a size may be a
// bare integer of bytes and a percentage a bare fraction.
func TestTOMLNumbersDecodeIntoSizeAndPercent(t *testing.T) {
	var v struct {
		S Size    `toml:"s"`
		P Percent `toml:"p"`
	}
	if _, err := toml.Decode("s = 1048576\np = 0.75\n", &v); err != nil {
		t.Fatal(err)
	}
	if v.S != MiB || v.P != 0.75 {
		t.Errorf("got size %d percent %v, want %d and 0.75", v.S, float64(v.P), MiB)
	}
	var w struct {
		D Duration `toml:"d"`
	}
	_, err := toml.Decode("d = 300\n", &w)
	if err == nil || !strings.Contains(err.Error(), `"d"`) {
		t.Errorf("integer duration: got %v, want an error naming key d", err)
	}
}
