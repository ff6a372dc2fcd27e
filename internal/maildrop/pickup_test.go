package maildrop

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/smtpreply"
)

// fakeIntake is a Submitter that records what it is given and answers
// with what answer returns for it.
type fakeIntake struct {
	answer func(env Envelope) error
	mu     struct {
		sync.Mutex
		got []submitted
	}
}

type submitted struct {
	env  Envelope
	body string
}

func (f *fakeIntake) Submit(_ context.Context, env Envelope, body io.Reader, size int64) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil || int64(len(b)) != size {
		return "", fmt.Errorf("read %d bytes of %d: %v", len(b), size, err)
	}
	f.mu.Lock()
	f.mu.got = append(f.mu.got, submitted{env, string(b)})
	f.mu.Unlock()
	if f.answer == nil {
		return "2.0.0 OK queued as 42", nil
	}
	return "", f.answer(env)
}

func (f *fakeIntake) submitted() []submitted {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]submitted(nil), f.mu.got...)
}

func newPickup(t *testing.T, intake *fakeIntake) (*Pickup, *bytes.Buffer) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "maildrop")
	if err := Prepare(dir, ""); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	return &Pickup{Dir: dir, Submit: intake, Log: zerolog.New(&log)}, &log
}

// files lists the names in dir (or one of its subdirectories), not the
// subdirectories.
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

func reply(code int, enhanced smtpreply.EnhancedCode, text string) *smtpreply.Reply {
	return &smtpreply.Reply{Code: code, Enhanced: enhanced, Text: text}
}

func TestScanSubmitsEachFileOnceOldestFirstAndRemovesIt(t *testing.T) {
	intake := &fakeIntake{}
	p, log := newPickup(t, intake)
	for _, body := range []string{"first\r\n", "second\r\n"} {
		writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y"}}, body)
	}
	if err := p.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := intake.submitted()
	if len(got) != 2 || got[0].body != "first\r\n" || got[1].body != "second\r\n" || got[0].env.From != "a@x" || got[0].env.To[0] != "b@y" {
		t.Fatalf("submitted %+v, want first then second", got)
	}
	if left := files(t, p.Dir); len(left) != 0 {
		t.Errorf("files left after they were queued: %v", left)
	}
	if n := strings.Count(log.String(), `"reply":"2.0.0 OK queued as 42"`); n != 2 {
		t.Errorf("%d submissions logged with the intake's reply, want 2:\n%s", n, log)
	}
	p.Scan(t.Context())
	if n := len(intake.submitted()); n != 2 {
		t.Errorf("a second scan submitted again: %d submissions", n)
	}
}

func TestScanLeavesTheFileAndStopsWhenRelayqIsBusy(t *testing.T) {
	busy := true
	intake := &fakeIntake{answer: func(Envelope) error {
		if busy {
			return reply(452, smtpreply.CodeTempResources, "Insufficient system resources")
		}
		return nil
	}}
	p, log := newPickup(t, intake)
	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y"}}, "one\r\n")
	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y"}}, "two\r\n")
	p.Scan(t.Context())
	p.Scan(t.Context())
	if n := len(intake.submitted()); n != 2 {
		t.Errorf("%d submissions in two scans, want 2: a scan stops at the first message refused for now", n)
	}
	if left := files(t, p.Dir); len(left) != 2 {
		t.Fatalf("files left: %v, want both", left)
	}
	if n := strings.Count(log.String(), `"level":"warn"`); n != 1 {
		t.Errorf("%d warnings for one episode, want 1:\n%s", n, log)
	}
	busy = false
	p.Scan(t.Context())
	if left := files(t, p.Dir); len(left) != 0 {
		t.Errorf("files left once relayq takes mail: %v", left)
	}
}

func TestScanMovesAMalformedFileAsideAndGoesOn(t *testing.T) {
	intake := &fakeIntake{}
	p, log := newPickup(t, intake)
	if err := os.WriteFile(filepath.Join(p.Dir, "0001.garbage"), []byte("not a maildrop file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y"}}, "good\r\n")
	p.Scan(t.Context())
	if got := files(t, filepath.Join(p.Dir, CorruptDir)); len(got) != 1 || got[0] != "0001.garbage" {
		t.Errorf("corrupt/ holds %v, want the malformed file", got)
	}
	if left := files(t, p.Dir); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
	if n := len(intake.submitted()); n != 1 {
		t.Errorf("%d submissions, want the good file's", n)
	}
	if !strings.Contains(log.String(), `"level":"error"`) || !strings.Contains(log.String(), "malformed maildrop file") {
		t.Errorf("no error log naming the problem:\n%s", log)
	}
}

func TestScanKeepsRefusedRecipientsAsideAndRetriesTheTemporaryOnes(t *testing.T) {
	intake := &fakeIntake{answer: func(env Envelope) error {
		var errs RecipientErrors
		for _, to := range env.To {
			switch to {
			case "gone@y":
				errs = append(errs, Refusal{to, reply(550, smtpreply.CodeBadMailbox, "no such user")})
			case "later@y":
				errs = append(errs, Refusal{to, reply(450, smtpreply.EnhancedCode{4, 7, 1}, "rate limit")})
			}
		}
		if errs == nil {
			return nil
		}
		return errs
	}}
	p, log := newPickup(t, intake)
	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"ok@y", "gone@y", "later@y"}}, "msg\r\n")
	p.Scan(t.Context())

	refused := files(t, filepath.Join(p.Dir, RefusedDir))
	if len(refused) != 1 {
		t.Fatalf("refused/ holds %v, want one file", refused)
	}
	m, err := Open(filepath.Join(p.Dir, RefusedDir, refused[0]))
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if strings.Join(m.To, ",") != "gone@y" {
		t.Errorf("the refused copy is for %v, want gone@y only", m.To)
	}
	if !strings.Contains(log.String(), "550 5.1.1 no such user") {
		t.Errorf("the refusal is not logged with its reply:\n%s", log)
	}
	left := files(t, p.Dir)
	if len(left) != 1 {
		t.Fatalf("maildrop holds %v, want one file for the recipient to retry", left)
	}
	m, err = Open(filepath.Join(p.Dir, left[0]))
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if strings.Join(m.To, ",") != "later@y" {
		t.Errorf("the file left is for %v, want later@y only", m.To)
	}
}

func TestScanRemovesOnlyStaleTemporaryFiles(t *testing.T) {
	intake := &fakeIntake{}
	p, _ := newPickup(t, intake)
	stale, fresh := filepath.Join(p.Dir, tmpPrefix+"old"), filepath.Join(p.Dir, tmpPrefix+"new")
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-25 * time.Hour)
	os.Chtimes(stale, old, old)
	p.Scan(t.Context())
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a temporary file a day old is still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a temporary file being written was removed: %v", err)
	}
	if n := len(intake.submitted()); n != 0 {
		t.Errorf("temporary files were submitted: %d", n)
	}
}

func TestRunPicksUpAFileWrittenWhileItRuns(t *testing.T) {
	intake := &fakeIntake{}
	p, _ := newPickup(t, intake)
	p.Interval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y"}}, "late\r\n")
	deadline := time.Now().Add(5 * time.Second)
	for len(intake.submitted()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the file was not submitted within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSortFollowsRetryClassification(t *testing.T) {
	env := Envelope{From: "a@x", To: []string{"b@y", "c@y"}}
	for _, tc := range []struct {
		name           string
		err            error
		later, refused int
	}{
		{"queued", nil, 0, 0},
		{"connection refused", reply(451, smtpreply.CodeNoAnswer, "connection refused"), 2, 0},
		{"back pressure", reply(452, smtpreply.CodeTempResources, ""), 2, 0},
		{"size", reply(552, smtpreply.CodeTooBig, ""), 0, 2},
		{"policy", reply(550, smtpreply.CodeRelayDenied, ""), 0, 2},
		{"too many recipients is for now", RecipientErrors{{"c@y", reply(452, smtpreply.CodeTooManyRcpts, "")}}, 1, 0},
		{"one bad mailbox", RecipientErrors{{"c@y", reply(550, smtpreply.CodeBadMailbox, "")}}, 0, 1},
	} {
		res := Sort(env, tc.err)
		if len(res.Later) != tc.later || len(res.Refused) != tc.refused {
			t.Errorf("%s: later %v refused %v, want %d and %d", tc.name, res.Later, res.Refused, tc.later, tc.refused)
		}
	}
}

// A message refused for every recipient is not logged as submitted.
func TestScanDoesNotLogAMessageRefusedForAllAsSubmitted(t *testing.T) {
	intake := &fakeIntake{answer: func(env Envelope) error {
		return reply(552, smtpreply.CodeTooBig, "Max message size exceeded")
	}}
	p, log := newPickup(t, intake)
	writeTest(t, p.Dir, Envelope{From: "a@x", To: []string{"b@y", "c@y"}}, "msg\r\n")
	p.Scan(t.Context())
	if n := len(files(t, filepath.Join(p.Dir, RefusedDir))); n != 1 {
		t.Fatalf("refused/ holds %d files, want 1", n)
	}
	if strings.Contains(log.String(), "maildrop: submitted") || !strings.Contains(log.String(), "maildrop: queued for no recipient") {
		t.Errorf("the log:\n%s", log)
	}
}
