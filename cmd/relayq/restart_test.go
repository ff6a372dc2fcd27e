package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"relayq/internal/sink"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// TestMain removes the binary relayqBinary built, once every test is done.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// relayqBinary builds the relayq binary once per test run (TestMain
// removes it).
func relayqBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relayq-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "relayq")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freeAddr returns a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// downAddr returns a loopback address that refuses connections for the
// whole test: a TCP socket is bound to it and never listens, until the test
// ends. (A port from freeAddr is free only when it is picked: another
// test's listener, in this process or another package's, may take it
// meanwhile, and a destination meant to be down would answer.)
func downAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// child is a relayq process whose JSON log lines are collected.
type child struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	more chan struct{} // closed and replaced on every new line
	done chan struct{}
}

func startChild(t *testing.T, configPath string) *child {
	t.Helper()
	return startChildKeeping(t, configPath, nil)
}

// startChildKeeping is startChild keeping only the log lines keep accepts
// (nil: all): under load relayq logs lines per message, which a long run
// need not hold in memory.
func startChildKeeping(t *testing.T, configPath string, keep func(map[string]any) bool) *child {
	t.Helper()
	cmd := exec.Command(relayqBinary(t), "serve", "--config", configPath, "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, more: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				line = map[string]any{"message": sc.Text()}
			}
			if keep != nil && !keep(line) {
				continue
			}
			c.mu.Lock()
			c.logs = append(c.logs, line)
			close(c.more)
			c.more = make(chan struct{})
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.kill() })
	return c
}

// waitLog waits until n log lines satisfy match, and returns them.
func (c *child) waitLog(timeout time.Duration, n int, match func(map[string]any) bool) []map[string]any {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		var got []map[string]any
		for _, l := range c.logs {
			if match(l) {
				got = append(got, l)
			}
		}
		more := c.more
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-more:
		case <-c.done:
			c.t.Fatalf("relayq exited while waiting for %d log lines (have %d)", n, len(got))
		case <-deadline:
			c.t.Fatalf("timed out waiting for %d log lines (have %d)", n, len(got))
		}
	}
}

// kill sends SIGKILL: no graceful stop, no flush, no Pebble close.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Kill()
	c.cmd.Wait()
	<-c.done
}

// childConfig writes a config for a relayq child: its queue in dataDir,
// listening on listen, delivering through the smart host dest with short
// retry timings; extra is appended (more TOML sections).
func childConfig(t *testing.T, dataDir, listen, dest, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relayq.toml")
	cfg := fmt.Sprintf(`
hostname = "relay.test.invalid"
data_dir = %q
[[listener]]
address = %q
[admin]
address = "127.0.0.1:0"
[delivery.smarthost]
hosts = [%q]
tls = "none"
[retry]
min_backoff = "100ms"
max_backoff = "300ms"
%s`, dataDir, listen, dest, extra)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func msgIs(text string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["message"] == text }
}

func TestRestartAfterSIGKILLDeliversEveryAcknowledgedMessageOnce(t *testing.T) {
	listen, dest := freeAddr(t), freeAddr(t)
	cfgPath := childConfig(t, filepath.Join(t.TempDir(), "queue"), listen, dest, "")

	// 1. The destination is down: messages are accepted and queued.
	first := startChild(t, cfgPath)
	first.waitLog(20*time.Second, 1, msgIs("listening"))
	var tokens []string
	for i := 0; i < 40; i++ {
		tokens = append(tokens, fmt.Sprintf("down-%d", i))
	}
	submit(t, listen, "sender@test.invalid", "rcpt@dest.invalid", tokens, 2048)
	first.waitLog(10*time.Second, 1, msgIs("deferred"))
	first.kill()

	// 2. The destination comes up; after a restart every acknowledged
	// message arrives, once.
	dst, err := sink.Start(sink.Options{Addr: dest})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	second := startChild(t, cfgPath)
	opened := second.waitLog(20*time.Second, 1, msgIs("queue counted"))
	if q := opened[0]["queued"]; q != float64(len(tokens)) {
		t.Errorf("after SIGKILL the queue reopened with %v messages, want %d", q, len(tokens))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, len(tokens)); err != nil {
		t.Fatalf("sink got %d of %d: %v", dst.Count(), len(tokens), err)
	}

	// 3. Once every delivery is committed (logged after the commit), a
	// SIGKILL and restart must not send any of them again: the queue
	// reopens empty, and a later message arrives alone.
	second.waitLog(20*time.Second, len(tokens), msgIs("delivered"))
	second.kill()
	third := startChild(t, cfgPath)
	opened = third.waitLog(20*time.Second, 1, msgIs("queue counted"))
	if q := opened[0]["queued"]; q != float64(0) {
		t.Errorf("queue reopened with %v messages after all were delivered, want 0", q)
	}
	third.waitLog(20*time.Second, 1, msgIs("listening"))
	submit(t, listen, "sender@test.invalid", "rcpt@dest.invalid", []string{"after"}, 100)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if err := dst.Wait(ctx2, len(tokens)+1); err != nil {
		t.Fatal(err)
	}
	third.waitLog(20*time.Second, 1, msgIs("delivered"))
	ids := messageIDs(t, dst.Messages())
	for _, tok := range append(tokens, "after") {
		if n := ids["<"+tok+"@test.invalid>"]; n != 1 {
			t.Errorf("message %s arrived %d times, want once", tok, n)
		}
	}
	if len(ids) != len(tokens)+1 || dst.Count() != len(tokens)+1 {
		t.Errorf("sink holds %d messages (%d distinct), want %d", dst.Count(), len(ids), len(tokens)+1)
	}
}
