package queue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// Benchmarks run only with -bench (make test never runs them):
//
//	CGO_ENABLED=0 go test -run '^$' -bench . -benchtime 20000x ./queue/

// BenchmarkPutParallel queues 1 KiB messages from many goroutines at once,
// as concurrent SMTP sessions do: every Put is synced, and the syncs share
// fsyncs (group commit). 16 goroutines per CPU, so a 2-core machine has 32
// Puts in flight, about what 20 inbound connections keep going.
func BenchmarkPutParallel(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			env := envelope("sender@example.org", "rcpt@example.net")
			if err := s.Put(ctx, s.NewID(), env, bytes.NewReader(body)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkDueWith1MQueued asks the schedule for the next 200 messages (the
// worker's batch when all its slots are free) with 1,000,000 messages
// queued, in the three situations a big queue is in:
//
//   - deferred: the destination is down, every message waits for its
//     retry (due in the next hour), nothing is due now;
//   - due: the destination is back, the whole backlog is due;
//   - due-200-in-flight: the same, with the first 200 already in flight
//     (passed over through skip), as the worker asks while it delivers.
//
// The queue is built once, with batches written by the store's own
// functions (setRecord, unsynced commits); the setup time is logged (-v)
// and reported as setup-s.
func BenchmarkDueWith1MQueued(b *testing.B) {
	if testing.Short() {
		b.Skip("builds a 1,000,000-message queue; not in -short")
	}
	const (
		queued = 1_000_000
		limit  = 200
	)
	t0 := time.Unix(1_800_000_000, 0)
	s, err := Open(b.TempDir(), Options{Now: func() time.Time { return t0 }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	ids, err := loadQueue(s, queued, t0, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	setup := time.Since(start)
	b.Logf("setup: %d messages queued in %v (%.0f msgs/s, unsynced batches)",
		queued, setup.Round(time.Millisecond), queued/setup.Seconds())

	inflight := make(map[ID]bool, limit)
	for _, id := range ids[:limit] {
		inflight[id] = true
	}
	cases := []struct {
		name string
		now  time.Time
		skip func(ID) bool
		want int
	}{
		{"deferred", t0.Add(-time.Second), nil, 0},
		{"due", t0.Add(2 * time.Hour), nil, limit},
		{"due-200-in-flight", t0.Add(2 * time.Hour), func(id ID) bool { return inflight[id] }, limit},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				got, _, err := s.Due(c.now, limit, c.skip)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != c.want {
					b.Fatalf("Due returned %d IDs, want %d", len(got), c.want)
				}
			}
			b.ReportMetric(setup.Seconds(), "setup-s") // without -v, b.Logf is not shown
		})
	}
}

// loadQueue writes n 128-byte messages, due evenly from t0 to t0+spread, in
// batches of 10,000 committed without sync (the last one with), and returns
// their IDs in due order. It is for setting up benchmarks only: Put's one
// synced batch per message would take minutes for a million.
func loadQueue(s *Store, n int, t0 time.Time, spread time.Duration) ([]ID, error) {
	const perBatch = 10_000
	body := bytes.Repeat([]byte("x"), 128)
	ids := make([]ID, 0, n)
	step := spread / time.Duration(n)
	b := s.newBatch()
	for i := 0; i < n; i++ {
		id := s.NewID()
		env := *envelope("sender@example.org", fmt.Sprintf("rcpt%d@example.net", i%1000))
		env.Received = t0
		env.Size = int64(len(body))
		env.NextAttempt = t0.Add(time.Duration(i) * step)
		if err := b.Set(bodyKey(id, 0), body, nil); err != nil {
			return nil, err
		}
		if err := s.setRecord(b, id, &record{Envelope: env, Chunks: 1}); err != nil {
			return nil, err
		}
		ids = append(ids, id)
		if (i+1)%perBatch == 0 || i == n-1 {
			d := unsynced
			if i == n-1 {
				d = synced
			}
			if err := s.commit(b, d); err != nil {
				return nil, err
			}
			b.Close()
			b = s.newBatch()
		}
	}
	b.Close()
	s.messages.Add(int64(n))
	s.bytes.Add(int64(n * len(body)))
	// Move the memtables into sstables, where a long-lived queue keeps them.
	return ids, s.db.Flush()
}

// benchRecord is a typical m/ record after one deferral: two recipients,
// one with a reply recorded, the fields relay sets.
func benchRecord() *record {
	t0 := time.Unix(1_800_000_000, 123_456_789)
	return &record{
		Envelope: Envelope{
			From: "sender@example.org",
			Recipients: []Recipient{
				{Addr: "rcpt1@example.net", Notify: "FAILURE", ORCPT: "rfc822;rcpt1@example.net",
					Attempts: 1, LastReply: "451 4.7.1 greylisted, try again later", LastHost: "mx1.example.net", Status: "4.7.1"},
				{Addr: "rcpt2@example.net", State: Delivered, Attempts: 1,
					LastReply: "250 2.0.0 Ok: queued as 4Xq1Zb0Hk9z", LastHost: "mx1.example.net", Status: "2.0.0", Done: t0.Add(time.Second)},
			},
			Received:    t0,
			Size:        1 << 10,
			EnvID:       "QQ314159",
			Client:      "[127.0.0.1] client.example.org",
			NextAttempt: t0.Add(5 * time.Minute),
			LastAttempt: t0.Add(time.Second),
		},
		Chunks: 1,
	}
}

// BenchmarkEncodeRecord and BenchmarkDecodeRecord measure the m/ codec on
// benchRecord; every message is encoded at Put and at each Update, and
// decoded at each Get and Update.
func BenchmarkEncodeRecord(b *testing.B) {
	r := benchRecord()
	var buf [512]byte // as setRecord
	b.ReportAllocs()
	for b.Loop() {
		if _, err := appendRecord(buf[:0], r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	v, err := appendRecord(nil, benchRecord())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeRecord(v); err != nil {
			b.Fatal(err)
		}
	}
}

// putBench queues one 1 KiB message with benchRecord's envelope.
func putBench(b *testing.B, s *Store) ID {
	b.Helper()
	body := bytes.Repeat([]byte("0123456789abcde\n"), 64) // 1 KiB
	env := benchRecord().Envelope
	id := s.NewID()
	if err := s.Put(context.Background(), id, &env, bytes.NewReader(body)); err != nil {
		b.Fatal(err)
	}
	return id
}

// BenchmarkGet1KiB reads the envelope of a queued message, as the worker
// does at the start of every attempt: from the memtable (a message that
// moves through at once) and from an sstable (one that waited).
func BenchmarkGet1KiB(b *testing.B) {
	benchStored(b, func(b *testing.B, s *Store, id ID) {
		for b.Loop() {
			if _, err := s.Get(id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBody1KiB reads a queued 1 KiB body whole, into a 64 KiB buffer
// as smarthost's writeBody does, and closes it.
func BenchmarkBody1KiB(b *testing.B) {
	benchStored(b, func(b *testing.B, s *Store, id ID) {
		buf := make([]byte, 64<<10)
		for b.Loop() {
			rc, err := s.Body(id)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				k, err := rc.Read(buf)
				n += k
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			rc.Close()
			if n != 1<<10 {
				b.Fatalf("read %d bytes, want 1024", n)
			}
		}
	})
}

// benchStored runs fn as sub-benchmarks "memtable" and "flushed" on a store
// holding one 1 KiB message.
func benchStored(b *testing.B, fn func(b *testing.B, s *Store, id ID)) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	id := putBench(b, s)
	b.Run("memtable", func(b *testing.B) { b.ReportAllocs(); fn(b, s, id) })
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	b.Run("flushed", func(b *testing.B) { b.ReportAllocs(); fn(b, s, id) })
}
