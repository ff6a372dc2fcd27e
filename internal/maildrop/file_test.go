package maildrop

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testMsg = "Subject: hi\r\n\r\nbody\r\n"

func writeTest(t *testing.T, dir string, env Envelope, msg string) string {
	t.Helper()
	path, err := Write(dir, env, strings.NewReader(msg), int64(len(msg)))
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWriteThenOpenGivesBackEnvelopeAndMessage(t *testing.T) {
	dir := t.TempDir()
	env := Envelope{From: "app@example.org", To: []string{"a@example.net", "ü@example.net"}}
	path := writeTest(t, dir, env, testMsg)

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != FileMode {
		t.Errorf("mode %v, want %v (the daemon reads what another user wrote)", st.Mode().Perm(), os.FileMode(FileMode))
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || strings.HasPrefix(entries[0].Name(), tmpPrefix) {
		t.Errorf("directory holds %v, want the one final file", entries)
	}
	m, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	body, _ := io.ReadAll(m.Body)
	if m.From != env.From || strings.Join(m.To, ",") != strings.Join(env.To, ",") || string(body) != testMsg || m.Size != int64(len(testMsg)) {
		t.Errorf("read back %q → %q, %q (%d bytes)", m.From, m.To, body, m.Size)
	}
}

func TestWriteKeepsTheNullSender(t *testing.T) {
	path := writeTest(t, t.TempDir(), Envelope{From: "", To: []string{"a@example.net"}}, testMsg)
	m, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.From != "" {
		t.Errorf("From = %q, want the null sender", m.From)
	}
}

func TestWriteRefusesWhatItCouldNotReadBack(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		env  Envelope
		size int64
	}{
		{"no recipient", Envelope{From: "a@x"}, int64(len(testMsg))},
		{"newline in an address", Envelope{From: "a@x\nto <evil@x>", To: []string{"b@y"}}, int64(len(testMsg))},
		{"bracket in an address", Envelope{From: "a@x", To: []string{"b@y>"}}, int64(len(testMsg))},
		{"short message", Envelope{From: "a@x", To: []string{"b@y"}}, int64(len(testMsg)) + 1},
		{"long message", Envelope{From: "a@x", To: []string{"b@y"}}, int64(len(testMsg)) - 1},
	} {
		if _, err := Write(dir, tc.env, strings.NewReader(testMsg), tc.size); err == nil {
			t.Errorf("%s: Write succeeded", tc.name)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed writes left %d files behind", len(entries))
	}
}

func TestOpenRefusesMalformedFiles(t *testing.T) {
	good := "relayq-maildrop 1\nfrom <a@x>\nto <b@y>\nsize 4\n\nbody"
	for _, tc := range []struct{ name, content string }{
		{"empty", ""},
		{"other magic", strings.Replace(good, "relayq-maildrop 1", "relayq-maildrop 2", 1)},
		{"no end of envelope", "relayq-maildrop 1\nfrom <a@x>\nto <b@y>\nsize 4\n"},
		{"no sender", strings.Replace(good, "from <a@x>\n", "", 1)},
		{"two senders", strings.Replace(good, "from <a@x>\n", "from <a@x>\nfrom <c@x>\n", 1)},
		{"no recipient", strings.Replace(good, "to <b@y>\n", "", 1)},
		{"no size", strings.Replace(good, "size 4\n", "", 1)},
		{"negative size", strings.Replace(good, "size 4", "size -4", 1)},
		{"truncated", strings.TrimSuffix(good, "y")},
		{"longer than announced", good + "more"},
		{"unknown line", strings.Replace(good, "size 4\n", "size 4\nnotify never\n", 1)},
		{"address without brackets", strings.Replace(good, "to <b@y>", "to b@y", 1)},
		{"empty recipient", strings.Replace(good, "to <b@y>", "to <>", 1)},
		{"endless line", "relayq-maildrop 1\nfrom <" + strings.Repeat("a", 5000) + ">\n\n"},
	} {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if m, err := Open(path); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Open = %v, %v; want ErrMalformed", tc.name, m, err)
		}
	}
	// The good one opens, so the cases above fail for their own reason.
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, []byte(good), 0o644)
	m, err := Open(path)
	if err != nil {
		t.Fatalf("the well-formed file: %v", err)
	}
	m.Close()
}

func TestOpenRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	target := writeTest(t, dir, Envelope{From: "a@x", To: []string{"b@y"}}, testMsg)
	link, fifo := filepath.Join(dir, "link"), filepath.Join(dir, "fifo")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{link, fifo} {
		// A FIFO nobody writes to would block an open: this returns at once.
		if m, err := Open(path); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Open = %v, %v; want ErrMalformed", filepath.Base(path), m, err)
		}
	}
	m, err := Open(target) // the file the link points to is well formed
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

func TestPrepareGivesTheDirectoryItsModeAndGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool", "maildrop")
	if err := Prepare(dir, ""); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // an existing directory gets its mode back
	if err := Prepare(dir, ""); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&(os.ModePerm|os.ModeSticky) != DirMode {
		t.Errorf("mode %v, want %v", st.Mode(), DirMode)
	}
	for _, sub := range []string{CorruptDir, RefusedDir} {
		if st, err := os.Stat(filepath.Join(dir, sub)); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, %v; want a 0700 directory", sub, st, err)
		}
	}
	if err := Prepare(dir, "no-such-group-relayq"); err == nil || !strings.Contains(err.Error(), "no-such-group-relayq") {
		t.Errorf("an unknown group: %v, want an error naming it", err)
	}
}

func TestWrittenFileNamesSortInArrivalOrder(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i := range 3 {
		paths = append(paths, writeTest(t, dir, Envelope{From: "a@x", To: []string{"b@y"}}, strings.Repeat("x", i+1)))
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != len(paths) {
		t.Fatalf("listing: %d entries (%v), want %d", len(entries), err, len(paths))
	}
	for i, e := range entries {
		if filepath.Join(dir, e.Name()) != paths[i] {
			t.Fatalf("listing order %v, want the order written %v", entries, paths)
		}
	}
}

// A writer of the maildrop group may replace its own file by a FIFO
// between Open's Lstat and its open(2): the open must not block (it would
// stall the pickup for every user) but fail, or see the regular file.
// The replacement is raced for a bounded number of rounds.
func TestOpenDoesNotBlockOnAFileSwappedForAFIFO(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "swapped")
	stop := make(chan struct{})
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			reg, fifo := filepath.Join(dir, "reg"), filepath.Join(dir, "fifo")
			if err := os.WriteFile(reg, []byte("x"), 0o644); err != nil {
				return
			}
			if err := syscall.Mkfifo(fifo, 0o644); err != nil {
				return
			}
			os.Rename(reg, path)
			os.Rename(fifo, path)
		}
	}()
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		for range 20000 {
			if m, err := Open(path); err == nil {
				m.Close()
			}
		}
	}()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		// Unblock the stuck open(2) by opening the FIFO for writing.
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Error("Open blocked on a FIFO swapped in after its Lstat")
	}
	close(stop)
	<-swapped
}
