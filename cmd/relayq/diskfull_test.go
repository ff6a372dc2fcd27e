//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/admin"
	"relayq/internal/sink"
)

// smallDisk mounts a tmpfs of size at a fresh directory and unmounts it
// when the test ends (after the relayq it was given to is killed: cleanups
// run last-in first-out). Without root, or where mounting is forbidden,
// the test is skipped.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	return mountSmall(t, "a small tmpfs", "-t", "tmpfs", "-o", "size="+size, "tmpfs")
}

// mountSmall runs mount with args and a fresh directory, which it returns,
// and unmounts it when the test ends; what names the volume in the
// message of a skipped test.
func mountSmall(t *testing.T, what string, args ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("the disk-full tests mount %s, which needs root: skipped", what)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", append(args, dir)...).CombinedOutput(); err != nil {
		t.Skipf("the disk-full tests mount %s, which is not permitted here (%v: %s): skipped", what, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// growDisk gives the tmpfs at dir more room: space comes back.
func growDisk(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
}

// freeSpace is what statfs says is free for us at dir.
func freeSpace(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// diskConfig writes a config for relayq with its queue on mnt, delivering
// to dest; extra is appended (a [back_pressure] section).
func diskConfig(t *testing.T, mnt, listen, dest, extra string) string {
	t.Helper()
	return childConfig(t, filepath.Join(mnt, "queue"), listen, dest, extra)
}

const (
	diskFrom, diskTo = "sender@test.invalid", "rcpt@dest.invalid"
	diskBodySize     = 64 << 10
)

// diskMessage is a message of about size bytes (64 KiB when size is 0)
// whose Message-ID carries tok, with a body of random text drawn from tok:
// it does not compress, so the queue takes as much room on disk as the
// mail (message's repeated lines compress to almost nothing in Pebble's
// tables).
func diskMessage(tok string, size int) []byte {
	if size == 0 {
		size = diskBodySize
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n", diskFrom, diskTo, tok, tok)
	h := fnv.New64a()
	h.Write([]byte(tok))
	rng := rand.New(rand.NewPCG(h.Sum64(), 0))
	raw := make([]byte, 57) // one 76-character base64 line
	for b.Len() < size {
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		b.WriteString(base64.StdEncoding.EncodeToString(raw))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// smtpSender is one SMTP connection that sends messages one after another.
type smtpSender struct {
	addr string
	size int // of each message; 0: 64 KiB
	c    *smtp.Client
}

// send sends the message of tok and returns nil for a 250, else the error:
// an *smtp.SMTPError for a reply, another error for a connection that
// failed (then the next send reconnects).
func (s *smtpSender) send(tok string) error {
	_, err := s.sendStaged(tok)
	return err
}

// sendStaged is send that also says at which stage the message was
// refused: "connect", "MAIL", "RCPT", "DATA" (the reply to the command)
// or "end of data" (the reply after the body was sent).
func (s *smtpSender) sendStaged(tok string) (stage string, err error) {
	if s.c == nil {
		conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			return "connect", err
		}
		s.c = smtp.NewClient(conn)
		s.c.CommandTimeout, s.c.SubmissionTimeout = 15*time.Second, 15*time.Second
		if err := s.c.Hello("client.test.invalid"); err != nil {
			s.close()
			return "connect", err
		}
	}
	defer func() {
		var se *smtp.SMTPError
		switch {
		case err == nil:
		case errors.As(err, &se):
			if s.c.Reset() != nil { // no transaction left open
				s.close()
			}
		default:
			s.close()
		}
	}()
	if err := s.c.Mail(diskFrom, nil); err != nil {
		return "MAIL", err
	}
	if err := s.c.Rcpt(diskTo, nil); err != nil {
		return "RCPT", err
	}
	w, err := s.c.Data()
	if err != nil {
		return "DATA", err
	}
	if _, err := w.Write(diskMessage(tok, s.size)); err != nil {
		w.Close()
		return "end of data", err
	}
	return "end of data", w.Close()
}

func (s *smtpSender) close() {
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// exited waits up to within for c to end by itself and reports whether it
// did.
func exited(c *child, within time.Duration) bool {
	select {
	case <-c.done: // its stderr closed: it is gone
	default:
		select {
		case <-c.done:
		case <-time.After(within):
			return false
		}
	}
	if c.cmd.ProcessState == nil {
		c.cmd.Wait()
	}
	return true
}

// checkArrivedIntact waits until dst holds every token of acked, and
// checks that each arrived unchanged below relayq's Received header; size
// is the messages' (diskMessage).
func checkArrivedIntact(t *testing.T, dst *sink.Server, acked []string, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, len(acked)); err != nil {
		t.Fatalf("%d of %d acknowledged messages arrived: %v", dst.Count(), len(acked), err)
	}
	got := map[string][]byte{}
	for _, m := range dst.Messages() {
		for _, tok := range acked {
			if bytes.Contains(m.Data, []byte("Message-ID: <"+tok+"@")) {
				got[tok] = m.Data
			}
		}
	}
	for _, tok := range acked {
		data, ok := got[tok]
		switch {
		case !ok:
			t.Errorf("LOST: acknowledged message %s never arrived", tok)
		case !bytes.HasSuffix(data, diskMessage(tok, size)):
			t.Errorf("CORRUPT: message %s arrived changed (%d bytes)", tok, len(data))
		}
	}
}

// fullDisk is relayq, back pressure off, with its queue on a 48 MiB tmpfs
// filled with 64 KiB messages (the destination down) until one was not
// answered 250: the queue keeps a 16 MiB reserve (queue.Options.Reserve).
type fullDisk struct {
	mnt, listen, dest, cfg string
	c                      *child
	acked                  []string
	stop                   error // what ended the filling
}

func fillDisk(t *testing.T) *fullDisk {
	t.Helper()
	f := &fullDisk{mnt: smallDisk(t, "48m"), listen: freeAddr(t), dest: freeAddr(t)}
	f.cfg = diskConfig(t, f.mnt, f.listen, f.dest, "[back_pressure]\nenabled = false\n")
	f.c = startChild(t, f.cfg)
	f.c.waitLog(20*time.Second, 1, msgIs("listening"))
	s := &smtpSender{addr: f.listen}
	defer s.close()
	for i := 0; i < 800; i++ { // 50 MiB: more than fits
		tok := fmt.Sprintf("full-%d", i)
		if err := s.send(tok); err != nil {
			f.stop = err
			break
		}
		f.acked = append(f.acked, tok)
	}
	if f.stop == nil {
		t.Fatalf("800 messages of 64 KiB were all acknowledged on a 48 MiB disk")
	}
	if len(f.acked) == 0 {
		t.Fatalf("no message was acknowledged on an empty 48 MiB disk: %v", f.stop)
	}
	t.Logf("the disk filled after %d acknowledged messages (%d bytes free); the next got: %v", len(f.acked), freeSpace(t, f.mnt), f.stop)
	return f
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

// fatalLines are c's log lines at level fatal or error.
func fatalLines(c *child) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.logs {
		if l["level"] == "fatal" || l["level"] == "error" {
			out = append(out, fmt.Sprint(l["message"]))
		}
	}
	return out
}

// TestDiskFullAnswers452AndKeepsRunning fills the queue's disk with back
// pressure off: the message that does not fit gets 452 4.3.1 naming the
// queue disk (never 250, never 5xx) and relayq keeps running; once space comes back and the
// destination is up, every message that got a 250 is delivered unchanged,
// and intake resumes by itself, without a restart.
func TestDiskFullAnswers452AndKeepsRunning(t *testing.T) {
	f := fillDisk(t)
	var se *smtp.SMTPError
	if !errors.As(f.stop, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) || !strings.Contains(se.Message, "queue disk space") {
		t.Fatalf("a message that did not fit got %v, want 452 4.3.1 (queue disk space)", f.stop)
	}
	if exited(f.c, time.Second) {
		t.Fatalf("relayq died of the full disk (%v): %q", f.c.cmd.ProcessState, fatalLines(f.c))
	}
	growDisk(t, f.mnt, "96m")
	dst, err := sink.Start(sink.Options{Addr: f.dest})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	s := &smtpSender{addr: f.listen}
	defer s.close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := s.send("after")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("intake did not resume after space came back, without a restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkArrivedIntact(t, dst, append(f.acked, "after"), 0)
}

// TestRestartOnAFullDiskRefusesClearlyAndLosesNothing: relayq stopped (a
// crash), and meanwhile something else filled the volume. Opening the
// queue would have Pebble flush its log, fail and retry for ever; relayq
// says what is wrong and exits instead, without flooding its log. Once
// space is back it starts and delivers everything it had acknowledged.
func TestRestartOnAFullDiskRefusesClearlyAndLosesNothing(t *testing.T) {
	f := fillDisk(t)
	f.c.kill()
	ballast := filepath.Join(f.mnt, "ballast")
	fillWithBallast(t, ballast)

	f.c = startChild(t, f.cfg)
	if !exited(f.c, 10*time.Second) {
		t.Fatalf("restarted on a full disk, relayq neither started nor gave up within 10 s; %d error lines, e.g. %q",
			len(fatalLines(f.c)), firstN(fatalLines(f.c), 2))
	}
	if !logContains(f.c, "free some space") {
		t.Errorf("relayq exited without saying the disk is full: %v", f.c.logs)
	}
	if n := len(f.c.logs); n > 20 {
		t.Errorf("restarted on a full disk, relayq logged %d lines, e.g. %q", n, firstN(fatalLines(f.c), 2))
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	dst, err := sink.Start(sink.Options{Addr: f.dest})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	f.c = startChild(t, f.cfg)
	f.c.waitLog(20*time.Second, 1, msgIs("listening"))
	checkArrivedIntact(t, dst, f.acked, 0)
}

// fillWithBallast writes path until the volume has no space left.
func fillWithBallast(t *testing.T, path string) {
	t.Helper()
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	chunk := make([]byte, 1<<20)
	for i := 0; i < 1<<12; i++ { // at most 4 GiB, far more than the tmpfs
		if _, err := fh.Write(chunk); err != nil {
			return // full
		}
	}
	t.Fatal("the ballast never filled the volume")
}

// logContains reports whether any line c printed contains text.
func logContains(c *child, text string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.logs {
		if strings.Contains(fmt.Sprint(l), text) {
			return true
		}
	}
	return false
}

// TestBackPressureAnswers452BeforeTheDiskIsFull runs relayq with back
// pressure on and its queue on a 64 MiB tmpfs: free_disk_high = 32MB. Free
// space is brought down near the threshold with a ballast file, then mail
// keeps coming (64 KiB every 100 ms, the destination down). Once the
// monitor sees less than 32 MB free, MAIL gets 452 4.3.1 naming the queue
// disk, while space is left: no message is refused for lack of it. When
// the ballast goes, intake resumes. (The monitor samples every 5 s: in
// that time this sender adds 3 MB of mail, which takes Pebble several
// times that, in its preallocated logs and its tables, for a while.)
func TestBackPressureAnswers452BeforeTheDiskIsFull(t *testing.T) {
	mnt := smallDisk(t, "64m")
	c, listen, dest := startBackPressured(t, mnt, "32MB")
	if !backPressureMonitored(t, c) {
		t.Fatal("back_pressure.enabled = true, but the admin API says back pressure is not monitored")
	}

	// Ballast: leave about 36 MB free, above the high threshold.
	ballast := filepath.Join(mnt, "ballast")
	if size := freeSpace(t, mnt) - 36_000_000; size > 0 {
		if err := os.WriteFile(ballast, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s := &smtpSender{addr: listen}
	defer s.close()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var (
		acked   []string
		refused error
		freeAt  int64
	)
	for i := 0; i < 600 && refused == nil; i++ { // 60 s, 38 MB: more than is free
		<-tick.C
		tok := fmt.Sprintf("bp-%d", i)
		if err := s.send(tok); err != nil {
			refused, freeAt = err, freeSpace(t, mnt)
			break
		}
		acked = append(acked, tok)
	}
	t.Logf("%d messages acknowledged, then %v with %d bytes free", len(acked), refused, freeAt)
	var se *smtp.SMTPError
	if !errors.As(refused, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
		t.Fatalf("the disk filling up ended with %v, want 452 4.3.1", refused)
	}
	if !strings.Contains(strings.ToLower(se.Message), "disk") {
		t.Errorf("the 452 says %q: it should name the queue disk", se.Message)
	}
	if freeAt <= 0 {
		t.Errorf("back pressure came only once the disk was full")
	}

	// The destination comes up (the queue drains while intake is
	// refused), and space comes back: intake resumes.
	dst, err := sink.Start(sink.Options{Addr: dest})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := s.send("after")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("intake did not resume when space came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkArrivedIntact(t, dst, append(acked, "after"), 0)
}

// startBackPressured starts relayq with its queue on mnt and back pressure
// on (free_disk_medium 40MB, free_disk_high as given), delivering to dest,
// which is down; it returns once relayq listens on listen.
func startBackPressured(t *testing.T, mnt, high string) (c *child, listen, dest string) {
	t.Helper()
	listen, dest = freeAddr(t), freeAddr(t)
	cfg := diskConfig(t, mnt, listen, dest, fmt.Sprintf(`[back_pressure]
enabled = true
free_disk_medium = "40MB"
free_disk_high = %q
`, high))
	c = startChild(t, cfg)
	c.waitLog(20*time.Second, 1, msgIs("listening"))
	return c, listen, dest
}

// backPressureMonitored asks c's admin API whether back pressure is on.
func backPressureMonitored(t *testing.T, c *child) bool {
	t.Helper()
	lines := c.waitLog(10*time.Second, 1, msgIs("admin API listening"))
	addr, _ := lines[0]["address"].(string)
	var st admin.Status
	api(t, addr, "/api/status", &st)
	return st.BackPressure != nil
}
