package dsn

import "testing"

// BenchmarkNDR composes the reports the delivery side sends most: an NDR
// for two recipients with the original's headers, one returning the whole
// original (RET=FULL) and a delay warning. It runs once per bounced or
// delayed message, on the delivery worker's goroutine.
//
//	CGO_ENABLED=0 go test -run '^$' -bench NDR -benchmem -count 5 ./retry/
func BenchmarkNDR(b *testing.B) {
	for _, c := range []struct {
		name string
		dsn  *Report
	}{
		{"failed-2rcpt-headers", sampleNDR(b)},
		{"failed-return-full", sampleReturnFull(b)},
		{"delayed", sampleDelayed(b)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.dsn.Bytes(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
