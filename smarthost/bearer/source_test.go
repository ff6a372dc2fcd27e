package bearer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/smtpreply"
	"relayq/internal/testlog"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is the test's view of the log.
type syncBuffer = testlog.Buffer

// clock is a settable time for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// tokenScript writes a command that counts its runs in dir/runs, waits
// delay, and prints "token-<n>" (or, with fail set, writes to standard
// error and exits 3).
func tokenScript(t *testing.T, delay string, fail bool) (cmd []string, runs func() int) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "runs")
	body := "echo run >> " + counter + "\nsleep " + delay + "\n"
	if fail {
		body += "echo 'invalid_grant: refresh token expired' >&2\nexit 3\n"
	} else {
		body += "echo token-$(wc -l < " + counter + " | tr -d ' ')\n"
	}
	script := filepath.Join(dir, "get-token")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"+body), 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{script}, func() int {
		b, _ := os.ReadFile(counter)
		return strings.Count(string(b), "run\n")
	}
}

func newSource(t *testing.T, o Options) (*Source, *syncBuffer) {
	var logs syncBuffer
	o.Name = "delivery.route[2]"
	o.Log = zerolog.New(&logs).Level(zerolog.DebugLevel)
	return New(o), &logs
}

var refused535 = &smtpreply.Reply{Code: 535, Enhanced: smtpreply.EnhancedCode{5, 7, 3}, Text: "Authentication unsuccessful"}

func TestTokenFileIsReadAgainWhenItChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	write := func(tok string, mod time.Time) {
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(file, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Now().Add(-time.Hour)
	write("first-token", base)
	src, _ := newSource(t, Options{File: file})
	for range 3 {
		if tok, err := src.Token(testCtx(t)); err != nil || tok != "first-token" {
			t.Fatalf("Token = %q, %v; want first-token", tok, err)
		}
	}
	write("second-token", base.Add(time.Minute))
	if tok, err := src.Token(testCtx(t)); err != nil || tok != "second-token" {
		t.Fatalf("after the file changed: Token = %q, %v; want second-token", tok, err)
	}
	// Rewritten with the same time and size: only a refusal reads it again.
	write("third--token", base.Add(time.Minute))
	if tok, _ := src.Token(testCtx(t)); tok != "second-token" {
		t.Fatalf("Token = %q with the file's stamp unchanged, want the cached second-token", tok)
	}
	if tok, err := src.Refused(testCtx(t), "second-token", refused535); err != nil || tok != "third--token" {
		t.Fatalf("Refused = %q, %v; want the file's third--token", tok, err)
	}
	if tok, err := src.Refused(testCtx(t), "third--token", refused535); err != nil || tok != "" {
		t.Fatalf("Refused of the file's own token = %q, %v; want none newer", tok, err)
	}
}

func TestTokenCommandRunsOncePerLifetime(t *testing.T) {
	cmd, runs := tokenScript(t, "0", false)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	src, logs := newSource(t, Options{Command: cmd, Lifetime: 50 * time.Minute, Now: clk.Now})
	for i := range 5 {
		if tok, err := src.Token(testCtx(t)); err != nil || tok != "token-1" {
			t.Fatalf("call %d: Token = %q, %v; want token-1", i, tok, err)
		}
		clk.Add(9 * time.Minute)
	}
	if n := runs(); n != 1 {
		t.Fatalf("%d runs within the lifetime, want 1", n)
	}
	clk.Add(10 * time.Minute) // 55 minutes after the run
	if tok, err := src.Token(testCtx(t)); err != nil || tok != "token-2" {
		t.Fatalf("after the lifetime: Token = %q, %v; want token-2", tok, err)
	}
	if n := runs(); n != 2 {
		t.Fatalf("%d runs, want 2", n)
	}
	if strings.Contains(logs.String(), "token-") {
		t.Errorf("the log holds a token:\n%s", logs)
	}
}

func TestRefusedTokenRunsTheCommandOnceForEveryone(t *testing.T) {
	cmd, runs := tokenScript(t, "0.2", false)
	src, logs := newSource(t, Options{Command: cmd, Lifetime: time.Hour})
	if tok, _ := src.Token(testCtx(t)); tok != "token-1" {
		t.Fatalf("Token = %q, want token-1", tok)
	}
	// Twenty deliveries see token-1 refused at once: one run serves all.
	var wg sync.WaitGroup
	got := make([]string, 20)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _ = src.Refused(testCtx(t), "token-1", refused535)
		}()
	}
	wg.Wait()
	for i, tok := range got {
		if tok != "token-2" {
			t.Fatalf("delivery %d got %q, want token-2", i, tok)
		}
	}
	if n := runs(); n != 2 {
		t.Fatalf("%d runs, want 2: the first and one refresh", n)
	}
	// A late refusal of the replaced token gets the new one, no run.
	if tok, _ := src.Refused(testCtx(t), "token-1", refused535); tok != "token-2" || runs() != 2 {
		t.Fatalf("late refusal: %q after %d runs, want token-2 after 2", tok, runs())
	}
	l := logs.String()
	if !strings.Contains(l, `"route":"delivery.route[2]"`) || !strings.Contains(l, `"code":535`) || strings.Contains(l, "token-") {
		t.Errorf("the warnings do not name the route and the reply, or hold a token:\n%s", l)
	}
}

func TestConcurrentFirstUseRunsTheCommandOnce(t *testing.T) {
	cmd, runs := tokenScript(t, "0.2", false)
	src, _ := newSource(t, Options{Command: cmd, Lifetime: time.Hour})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tok, err := src.Token(testCtx(t)); tok != "token-1" {
				t.Errorf("Token = %q, %v; want token-1", tok, err)
			}
		}()
	}
	wg.Wait()
	if n := runs(); n != 1 {
		t.Fatalf("%d runs for 20 concurrent first uses, want 1", n)
	}
}

func TestFailingCommandLogsItsStandardError(t *testing.T) {
	cmd, _ := tokenScript(t, "0", true)
	src, logs := newSource(t, Options{Command: cmd, Lifetime: time.Hour})
	_, err := src.Token(testCtx(t))
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err = %v, want the exit status", err)
	}
	l := logs.String()
	for _, want := range []string{`"level":"warn"`, `"route":"delivery.route[2]"`, `"stderr":"invalid_grant: refresh token expired"`} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %s:\n%s", want, l)
		}
	}
}

func TestCommandTimeoutAndBadOutput(t *testing.T) {
	slow, _ := tokenScript(t, "5", false)
	dir := t.TempDir()
	twoWords := filepath.Join(dir, "two-words")
	if err := os.WriteFile(twoWords, []byte("#!/bin/sh\necho 'secret-part other-part'\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"timeout", Options{Command: slow, Timeout: 300 * time.Millisecond}, "timed out after 300ms"},
		{"two words", Options{Command: []string{twoWords}}, "more than one word"},
		{"empty", Options{Command: []string{"true"}}, "no token"},
		{"missing program", Options{Command: []string{filepath.Join(dir, "nonexistent")}}, "no such file"},
		{"missing file", Options{File: filepath.Join(dir, "nonexistent")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, logs := newSource(t, tt.o)
			start := time.Now()
			_, err := src.Token(testCtx(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if time.Since(start) > 3*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			if strings.Contains(err.Error()+logs.String(), "secret-part") {
				t.Errorf("the error or log quotes the output: %v\n%s", err, logs)
			}
		})
	}
}

func TestCallerStopsWaitingWhenItsContextEnds(t *testing.T) {
	slow, runs := tokenScript(t, "0.5", false)
	src, _ := newSource(t, Options{Command: slow, Lifetime: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := src.Token(ctx); err != context.DeadlineExceeded {
		t.Fatalf("err = %v, want the caller's deadline", err)
	}
	// The run went on and serves the next caller.
	if tok, err := src.Token(testCtx(t)); err != nil || tok != "token-1" || runs() != 1 {
		t.Fatalf("Token = %q, %v after %d runs; want token-1 from the one run", tok, err, runs())
	}
}
