package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relayq/internal/sink"
)

// `relayq queue flush` with nothing selected flushes every message, as
// postqueue -f does; the actions that remove or stop mail still want IDs,
// a filter or --all.
func TestQueueFlushWithoutArgumentsFlushesEveryMessage(t *testing.T) {
	dest := freeAddr(t)
	in := opsRelayq(t, dest) // 10-minute backoff: only a flush delivers in time
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"a", "b"}, 100)
	waitDeferred(t, in.AdminAddr(), 2)
	dst := startSink(t, sink.Options{Addr: dest})
	for _, action := range []string{"delete", "bounce", "hold"} {
		if _, errOut, code := runOps(t, in, "queue", action); code != 2 || !strings.Contains(errOut, "--all") {
			t.Errorf("queue %s without a selection: exit %d %q; want 2, asking for --all", action, code, errOut)
		}
	}
	if out, errOut, code := runOps(t, in, "queue", "flush"); code != 0 || !strings.Contains(out, "flushed 2 messages") {
		t.Fatalf("queue flush: exit %d %q %q; want both flushed", code, out, errOut)
	}
	waitFor(t, 15*time.Second, func() bool { return dst.Count() == 2 }, "both messages to arrive after the flush")
}

// mailq (a link to relayq) lists the queue and sendmail -q flushes it,
// both through the admin API of the config.
func TestMailqListsAndSendmailQFlushes(t *testing.T) {
	adminAddr := freeAddr(t)
	cfg := childConfig(t, filepath.Join(t.TempDir(), "queue"), freeAddr(t), downAddr(t), "")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), `address = "127.0.0.1:0"`, `address = "`+adminAddr+`"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, cfg)
	c.waitLog(20*time.Second, 1, msgIs("maildrop: picking up"))
	bin := relayqBinary(t)
	if _, stderr, code := (sendmailRun{bin: bin, user: "app", stdin: "Subject: queued\n\nbody\n",
		args: []string{"sendmail", "--config", cfg, "rcpt@dest.invalid"}}).run(t); code != 0 {
		t.Fatalf("sendmail: exit %d %s", code, stderr)
	}
	c.waitLog(10*time.Second, 1, msgIs("deferred"))

	mailq := filepath.Join(t.TempDir(), "mailq")
	if err := os.Symlink(bin, mailq); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := sendmailRun{bin: mailq, user: "app", args: []string{"--config", cfg}}.run(t)
	if code != 0 || !strings.Contains(out, "app@relay.test.invalid") || !strings.Contains(out, "rcpt@dest.invalid") || !strings.Contains(out, "1 message") {
		t.Errorf("mailq: exit %d, stdout %q, stderr %q; want the message listed", code, out, stderr)
	}
	out, stderr, code = sendmailRun{bin: bin, user: "app", args: []string{"sendmail", "-q", "--config", cfg}}.run(t)
	if code != 0 || !strings.Contains(out, "flushed 1 message") {
		t.Errorf("sendmail -q: exit %d, stdout %q, stderr %q; want 1 message flushed", code, out, stderr)
	}
}
