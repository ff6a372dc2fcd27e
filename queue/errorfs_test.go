package queue

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/rs/zerolog"
)

// fatalTrap stands in for the log and the process exit in the fault tests.
// Pebble treats a failed WAL write or sync as fatal: DB.Apply calls
// Logger.Fatalf("pebble: fatal commit error"), and the queue's Pebble
// logger (fatal.go) writes one line at fatal level and calls Options.Exit,
// which in relayq is os.Exit. Here exit parks the goroutine for good
// instead: its Put never returns, as in the process that exits, and the
// rest of the test process lives on to inspect what a crash at that moment
// leaves on disk.
type fatalTrap struct {
	mu    sync.Mutex
	lines []string // log lines at fatal level
	codes []int    // exit calls
}

func (f *fatalTrap) Write(p []byte) (int, error) { return len(p), nil }

func (f *fatalTrap) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	if l == zerolog.FatalLevel {
		f.mu.Lock()
		f.lines = append(f.lines, strings.TrimSpace(string(p)))
		f.mu.Unlock()
	}
	return len(p), nil
}

// exit is Options.Exit: the process "exited" here.
func (f *fatalTrap) exit(code int) {
	f.mu.Lock()
	f.codes = append(f.codes, code)
	f.mu.Unlock()
	select {}
}

// parked is how many goroutines exit holds.
func (f *fatalTrap) parked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.codes)
}

// messages are the fatal lines logged so far.
func (f *fatalTrap) messages() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines)
}

// walFault injects err into the given operations on Pebble's WAL files
// (*.log), or on every file when wal is false. A file with no path is a
// recycled WAL (see recyclingFS).
func walFault(err error, wal bool, kinds ...errorfs.OpKind) errorfs.Injector {
	return errorfs.InjectorFunc(func(op errorfs.Op) error {
		if wal && op.Path != "" && !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		for _, k := range kinds {
			if op.Kind == k {
				return &os.PathError{Op: "injected", Path: op.Path, Err: err}
			}
		}
		return nil
	})
}

// recyclingFS is errorfs.FS with faults in recycled files too: Pebble
// reuses the file of an obsolete WAL for the next one (ReuseForWrite), and
// errorfs hands that file out unwrapped, so that without this a fault would
// miss every WAL after the first memtable flush.
type recyclingFS struct {
	*errorfs.FS
	inj errorfs.Injector
}

func newRecyclingFS(fs vfs.FS, inj errorfs.Injector) *recyclingFS {
	return &recyclingFS{FS: errorfs.Wrap(fs, inj), inj: inj}
}

func (fs *recyclingFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		return nil, err
	}
	return errorfs.WrapFile(f, fs.inj), nil
}

// switchedFault injects its fault once turned on, and blocks every
// operation for good once frozen: the queue a test gave up on (its commit
// pipeline wedged) must not go on retrying failed flushes in the
// background for the rest of the test binary's life.
type switchedFault struct {
	errorfs.Injector
	state atomic.Int32 // 0 off, 1 on, 2 frozen
}

func (f *switchedFault) MaybeError(op errorfs.Op) error {
	switch f.state.Load() {
	case 1:
		return f.Injector.MaybeError(op)
	case 2:
		select {} // the process "died" here
	}
	return nil
}

var (
	syncOps  = []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}
	writeOps = []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFilePreallocate}
)

// faultOutcomes counts what the Puts started after the fault came to.
type faultOutcomes struct {
	acked, failed             atomic.Int64 // Puts that returned nil / an error
	returned, panicked, stuck atomic.Int64 // writers that finished / panicked / never came back
}

// TestPutNeverAcknowledgesAWriteThatDidNotSync puts messages, then makes
// the disk fail (ENOSPC or EIO on the WAL's sync or write, or EIO on every
// write and sync) while more Puts run. A Put may return an error or never
// return (Pebble's fatal commit error), but whatever Put acknowledged with
// nil, before or after the fault, must be in a crash image of the disk
// taken now (only synced data kept, or some of the unsynced too), whole and
// due; and a queue reopened on that image takes new mail.
func TestPutNeverAcknowledgesAWriteThatDidNotSync(t *testing.T) {
	cases := []struct {
		name   string
		inject errorfs.Injector
	}{
		{"ENOSPC on WAL sync", walFault(syscall.ENOSPC, true, syncOps...)},
		{"EIO on WAL sync", walFault(syscall.EIO, true, syncOps...)},
		{"ENOSPC on WAL write", walFault(syscall.ENOSPC, true, writeOps...)},
		{"EIO on every write and sync", walFault(syscall.EIO, false, append(writeOps, syncOps...)...)},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			fault := &switchedFault{Injector: tc.inject}
			trap := &fatalTrap{}
			s, err := Open("q", Options{FS: newRecyclingFS(mem, fault), ChunkSize: 4096, Log: zerolog.New(trap), Exit: trap.exit})
			if err != nil {
				t.Fatal(err)
			}
			// s is not closed: after a fatal commit error Pebble's commit
			// pipeline is wedged, and Close could block on it. Its
			// goroutines are parked at the end (fault frozen).
			defer fault.state.Store(2)

			var (
				mu    sync.Mutex
				acked = map[ID][]byte{}
			)
			put := func(rng *rand.Rand, size int) error {
				body := randomBody(rng, size)
				id := s.NewID()
				if err := s.Put(context.Background(), id, envelope("a@x.invalid", "b@y.invalid"), bytes.NewReader(body)); err != nil {
					return err
				}
				mu.Lock()
				acked[id] = body
				mu.Unlock()
				return nil
			}

			// Before the fault: every Put succeeds.
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
					for n := 0; n < 10; n++ {
						size := rng.IntN(20_000) + 1
						if w == 0 && n == 5 {
							// Over the 1 MiB spill threshold: unsynced body
							// batches precede the synced envelope.
							size = 1_200_000
						}
						if err := put(rng, size); err != nil {
							errs <- err
							return
						}
					}
				}(w)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("Put before the fault: %v", err)
			}
			before := len(acked)

			// A fresh memtable, so that the small writes below cannot make
			// Pebble rotate its WAL: a WAL error there panics after
			// unlocking DB.mu, and the deferred unlock then dies with
			// "sync: unlock of unlocked mutex", a fatal error no test
			// process survives. In relayq that is a crash like the Fatalf.
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}

			// The disk fails; writers keep coming.
			fault.state.Store(1)
			var out faultOutcomes
			done := make(chan struct{})
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					returned := false
					defer func() {
						// Pebble panics in commitWrite on a WAL that failed
						// before; a Put that never returns is parked in
						// fatalTrap.exit, in the Pebble logger's Fatalf
						// behind it, or behind the wedged pipeline.
						if recover() != nil {
							out.panicked.Add(1)
						}
						if returned {
							out.returned.Add(1)
						}
					}()
					rng := rand.New(rand.NewPCG(uint64(i), uint64(100+w)))
					for n := 0; n < 3; n++ {
						if err := put(rng, rng.IntN(20_000)+1); err != nil {
							out.failed.Add(1)
						} else {
							out.acked.Add(1)
						}
					}
					returned = true
				}(w)
			}
			go func() { wg.Wait(); close(done) }()
			// Every writer returns, panics or is parked in fatalTrap.exit; one
			// that does none of these within a second of the first failure
			// waits behind the wedged commit pipeline (a panicking commit
			// leaves its mutex locked), and never answers either.
			deadline := time.Now().Add(10 * time.Second)
			for {
				settled := out.returned.Load() + out.panicked.Load() + int64(trap.parked())
				if settled >= 8 || time.Now().After(deadline) {
					break
				}
				if soon := time.Now().Add(time.Second); settled > out.returned.Load() && soon.Before(deadline) {
					deadline = soon
				}
				select {
				case <-done:
				case <-time.After(5 * time.Millisecond):
				}
			}
			out.stuck.Store(8 - out.returned.Load() - out.panicked.Load())

			mu.Lock()
			snapshot := make(map[ID][]byte, len(acked))
			for id, b := range acked {
				snapshot[id] = b
			}
			mu.Unlock()
			t.Logf("%d acknowledged before the fault; after it: %d Puts returned nil, %d returned an error, "+
				"%d of 8 writers panicked, %d never came back (%d fatal errors): %q",
				before, out.acked.Load(), out.failed.Load(), out.panicked.Load(), out.stuck.Load(), trap.parked(), trap.messages())
			if out.failed.Load()+out.panicked.Load()+out.stuck.Load() == 0 {
				t.Fatal("the injected fault never reached a Put: the test proves nothing")
			}

			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for _, pct := range []int{0, 50} {
				image := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng})
				checkCrashImage(t, image, snapshot)
				checkTakesMail(t, image)
			}
		})
	}
}

// randomBody is size random bytes.
func randomBody(rng *rand.Rand, size int) []byte {
	body := make([]byte, size)
	for j := range body {
		body[j] = byte(rng.Uint32())
	}
	return body
}

// checkTakesMail reopens the queue on fs, now without faults, and checks
// that intake works again: a Put is acknowledged and reads back whole.
func checkTakesMail(t *testing.T, fs vfs.FS) {
	t.Helper()
	s, err := Open("q", Options{FS: fs, ChunkSize: 4096})
	if err != nil {
		t.Fatalf("reopening after the fault: %v", err)
	}
	defer s.Close()
	id := s.NewID()
	body := []byte(fmt.Sprintf("Subject: after the fault\r\n\r\n%s\r\n", id))
	if err := s.Put(context.Background(), id, envelope("a@x.invalid", "b@y.invalid"), bytes.NewReader(body)); err != nil {
		t.Fatalf("Put after the fault is gone: %v", err)
	}
	if got := readAll(t, s, id); !bytes.Equal(got, body) {
		t.Fatalf("message put after the fault reads back as %q", got)
	}
}

// TestWALSyncFailureExitsWithOneFatalLine: when the WAL's sync fails,
// Pebble cannot go on, and neither can relayq: the queue logs one line at
// fatal level naming the data directory and the error and exits with a
// non-zero status, however many writers were committing; no Put returns
// nil for a commit whose sync failed.
func TestWALSyncFailureExitsWithOneFatalLine(t *testing.T) {
	mem := vfs.NewCrashableMem()
	fault := &switchedFault{Injector: walFault(syscall.EIO, true, syncOps...)}
	trap := &fatalTrap{}
	s, err := Open("q", Options{FS: newRecyclingFS(mem, fault), Log: zerolog.New(trap), Exit: trap.exit})
	if err != nil {
		t.Fatal(err)
	}
	defer fault.state.Store(2) // s is not closed: see TestPutNeverAcknowledgesAWriteThatDidNotSync
	putOne(t, s)
	if err := s.db.Flush(); err != nil { // no WAL rotation below (see there)
		t.Fatal(err)
	}

	fault.state.Store(1)
	var acked, settled atomic.Int64
	for w := 0; w < 4; w++ {
		go func() {
			defer func() {
				recover() // Pebble panics in commitWrite on a WAL that failed before
				settled.Add(1)
			}()
			if s.Put(context.Background(), s.NewID(), envelope("a@x.invalid", "b@y.invalid"), strings.NewReader("hello")) == nil {
				acked.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for trap.parked() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The other writers panic, fail, or wait in Fatalf or behind the
	// wedged pipeline; give those that come back a moment to log.
	for settle := time.Now().Add(time.Second); settled.Load()+int64(trap.parked()) < 4 && time.Now().Before(settle); {
		time.Sleep(5 * time.Millisecond)
	}
	trap.mu.Lock()
	codes := slices.Clone(trap.codes)
	trap.mu.Unlock()
	lines := trap.messages()
	if len(codes) != 1 || codes[0] == 0 {
		t.Fatalf("after a failed WAL sync the queue called exit with %v, want once with a non-zero status", codes)
	}
	if len(lines) != 1 {
		t.Fatalf("%d fatal lines, want exactly one: %q", len(lines), lines)
	}
	for _, want := range []string{`"level":"fatal"`, `"data_dir":"q"`, "fatal commit error", "input/output error", "exiting"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("the fatal line %s does not say %s", lines[0], want)
		}
	}
	if n := acked.Load(); n > 0 {
		t.Errorf("%d Puts returned nil after the WAL sync failed", n)
	}
}
