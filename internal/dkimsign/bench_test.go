package dkimsign

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"relayq/config"
)

// BenchmarkSign compares, per message size, what signing costs as relay
// does it (Sign: spool, 256 KiB in memory, the rest in an unlinked file)
// with go-msgauth's dkim.Sign, which keeps the whole message in a buffer
// to put the signature in front, and with no signing at all (a copy).
// retained-B is the heap a signed message holds once it is signed and
// waits to be read by the queue (after a GC): what grows with message size
// and concurrent transactions. B/op also counts the garbage go-msgauth's
// relaxed body canonicaliser makes (two bytes per byte hashed), which a GC
// reclaims as it goes:
//
//	go test -run '^$' -bench Sign -benchmem -benchtime 20x ./internal/dkimsign/
func BenchmarkSign(b *testing.B) {
	dir := b.TempDir()
	file, k := writeKey(b, dir, TypeEd25519)
	s, err := New([]config.DKIM{{Domain: "shop.invalid", Selector: "e1", KeyFile: file}}, Options{SpoolDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	line := strings.Repeat("x", 76) + "\r\n"
	for _, size := range []int{4 << 10, 1 << 20, 32 << 20} {
		msg := testMsg + strings.Repeat(line, size/len(line))
		b.Run(fmt.Sprintf("copy/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				io.Copy(io.Discard, struct{ io.Reader }{strings.NewReader(msg)})
			}
		})
		b.Run(fmt.Sprintf("spool/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			base, first := liveHeap(b, nil), true
			for b.Loop() {
				r, _, err := s.Sign(context.Background(), strings.NewReader(msg))
				if err != nil {
					b.Fatal(err)
				}
				if first {
					b.ReportMetric(liveHeap(b, r)-base, "retained-B")
					first = false
				}
				io.Copy(io.Discard, r)
				r.Close()
			}
		})
		b.Run(fmt.Sprintf("whole/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			opts := &dkim.SignOptions{Domain: "shop.invalid", Selector: "e1", Signer: k,
				HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
				HeaderKeys: config.DKIM{}.SignedHeaders()}
			base, first := liveHeap(b, nil), true
			for b.Loop() {
				if first { // what dkim.Sign holds before it writes
					var buf bytes.Buffer
					ds, err := dkim.NewSigner(opts)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.MultiWriter(&buf, ds), strings.NewReader(msg))
					if err := ds.Close(); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(liveHeap(b, &buf)-base, "retained-B")
					first = false
				}
				if err := dkim.Sign(io.Discard, strings.NewReader(msg), opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// liveHeap returns the live heap after a GC, with keep alive.
func liveHeap(b *testing.B, keep any) float64 {
	b.StopTimer()
	defer b.StartTimer()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(keep)
	return float64(ms.HeapAlloc)
}
