package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"relayq/admin"
	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
)

// opsRelayq runs relayq delivering through smarthost (down, unless a sink
// listens there) with a 10-minute backoff, so that only a flush brings a
// deferred message back before the test ends.
func opsRelayq(t *testing.T, smarthost string) *server.Instance {
	t.Helper()
	cfg := testConfig(t, smarthost)
	cfg.Retry.MinBackoff = config.Duration(10 * time.Minute)
	cfg.Retry.MaxBackoff = config.Duration(time.Hour)
	return startRelayq(t, cfg)
}

// runOps runs `relayq args...` against in's admin API and returns stdout,
// stderr and the exit code.
func runOps(t *testing.T, in *server.Instance, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{
		Name:           "relayq",
		Commands:       []*cli.Command{queueCommand(), statusCommand(), serveCommand()},
		Writer:         &out,
		ErrWriter:      &errOut,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	words := 1 // the command: "status", "serve", or "queue list"
	if args[0] == "queue" {
		words = 2
	}
	argv := append([]string{"relayq"}, args[:words]...)
	if in != nil {
		argv = append(argv, "--admin", in.AdminAddr())
	}
	argv = append(argv, args[words:]...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := app.RunContext(ctx, argv)
	if err != nil && errOut.Len() == 0 {
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), exitCode(err)
}

// api GETs path from the admin API at addr and decodes the JSON answer
// into v.
func api(t *testing.T, addr, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %s", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// waitDeferred waits until n messages are deferred with a 4.4.1 reply
// (the smart host refused the connection) and returns them.
func waitDeferred(t *testing.T, adminAddr string, n int) []admin.Message {
	t.Helper()
	var list admin.ListResponse
	waitFor(t, 15*time.Second, func() bool {
		api(t, adminAddr, "/api/queue?state=deferred", &list)
		k := 0
		for _, m := range list.Messages {
			if strings.Contains(m.LastReply, "4.4.1") {
				k++
			}
		}
		return k == n
	}, fmt.Sprintf("%d messages deferred with 4.4.1", n))
	return list.Messages
}

// flushAndWait flushes the messages query selects, once, and waits until
// cond holds. One flush must do: it ends the cool-down of a host that has
// just failed, so with a 10-minute backoff nothing else would deliver them.
func flushAndWait(t *testing.T, adminAddr, query string, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	resp, err := http.Post("http://"+adminAddr+"/api/queue/flush?"+query, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("flush %s: %s", query, resp.Status)
	}
	waitFor(t, timeout, cond, what)
}

func TestOpsListShowsDeferredMessagesWith441AndShowExplains(t *testing.T) {
	in := opsRelayq(t, downAddr(t))
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"a", "b"}, 100)
	msgs := waitDeferred(t, in.AdminAddr(), 2)

	out, errOut, code := runOps(t, in, "queue", "list")
	if code != 0 {
		t.Fatalf("queue list: exit %d: %s", code, errOut)
	}
	for _, m := range msgs {
		if !strings.Contains(out, m.ID) {
			t.Errorf("queue list lacks %s:\n%s", m.ID, out)
		}
	}
	if !strings.Contains(out, "user@dest.invalid  pending, 1 attempt: 451 4.4.1") || !strings.Contains(out, "in 2 messages") {
		t.Errorf("queue list does not say why:\n%s", out)
	}

	out, _, code = runOps(t, in, "queue", "list", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list) != 2 {
		t.Fatalf("queue list --json: exit %d, %v:\n%s", code, err, out)
	}
	for _, key := range []string{"id", "from", "recipients", "size", "created", "next_attempt", "state"} {
		if _, ok := list[0][key]; !ok {
			t.Errorf("queue list --json: no %q in %v", key, list[0])
		}
	}
	rcpt := list[0]["recipients"].([]any)[0].(map[string]any)
	for _, key := range []string{"address", "state", "attempts", "last_reply"} {
		if _, ok := rcpt[key]; !ok {
			t.Errorf("queue list --json: recipient has no %q: %v", key, rcpt)
		}
	}

	out, _, code = runOps(t, in, "queue", "show", msgs[0].ID)
	if code != 0 {
		t.Fatalf("queue show: exit %d", code)
	}
	for _, want := range []string{"From:         app@shop.invalid", "State:        deferred", "last reply: 451 4.4.1 connection refused (from 127.0.0.1:", "why:        4.4.1 No answer from host", "what to do:", "Next attempt: "} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q:\n%s", want, out)
		}
	}
	if _, errOut, code := runOps(t, in, "queue", "show", "0123456789abcdef01234567"); code != 1 || !strings.Contains(errOut, "no message") {
		t.Errorf("show of an unknown ID: exit %d %q", code, errOut)
	}
}

func TestOpsDeleteRemovesMessage(t *testing.T) {
	in := opsRelayq(t, downAddr(t))
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"a", "b"}, 100)
	msgs := waitDeferred(t, in.AdminAddr(), 2)
	out, errOut, code := runOps(t, in, "queue", "delete", msgs[0].ID)
	if code != 0 || !strings.Contains(out, "deleted 1 message") {
		t.Fatalf("queue delete: exit %d %q %q", code, out, errOut)
	}
	var list admin.ListResponse
	api(t, in.AdminAddr(), "/api/queue", &list)
	if len(list.Messages) != 1 || list.Messages[0].ID != msgs[1].ID || in.Store().Messages() != 1 {
		t.Fatalf("after delete: %+v", list.Messages)
	}
	if _, errOut, code := runOps(t, in, "queue", "delete", msgs[0].ID); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("second delete: exit %d %q", code, errOut)
	}
	if _, errOut, code := runOps(t, in, "queue", "delete"); code != 2 || !strings.Contains(errOut, "--all") {
		t.Fatalf("delete without a selection: exit %d %q", code, errOut)
	}
}

func TestOpsHoldKeepsMessageThroughFlushAndReleaseDelivers(t *testing.T) {
	dest := freeAddr(t)
	in := opsRelayq(t, dest)
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"held", "free"}, 100)
	msgs := waitDeferred(t, in.AdminAddr(), 2)
	held := msgs[0].ID
	if out, _, code := runOps(t, in, "queue", "hold", held); code != 0 || !strings.Contains(out, "held 1 message") {
		t.Fatalf("queue hold: exit %d %q", code, out)
	}
	dst := startSink(t, sink.Options{Addr: dest})
	if out, _, code := runOps(t, in, "queue", "flush", "--all"); code != 0 || !strings.Contains(out, "1 passed over") {
		t.Fatalf("queue flush --all: exit %d %q", code, out)
	}
	// The other message goes; the held one stays, through any number of flushes.
	flushAndWait(t, in.AdminAddr(), "all=true", 15*time.Second, func() bool { return dst.Count() >= 1 }, "the message not held to arrive")
	if ids := messageIDs(t, dst.Messages()); dst.Count() != 1 || ids["<free@test.invalid>"] != 1 {
		t.Fatalf("sink got %v", ids)
	}
	var m admin.Message
	api(t, in.AdminAddr(), "/api/queue/"+held, &m)
	if m.State != "held" {
		t.Fatalf("held message is %s", m.State)
	}
	if _, errOut, code := runOps(t, in, "queue", "flush", held); code != 1 || !strings.Contains(errOut, "held") {
		t.Fatalf("flush of the held ID: exit %d %q", code, errOut)
	}

	if out, _, code := runOps(t, in, "queue", "release", held); code != 0 || !strings.Contains(out, "released 1 message") {
		t.Fatalf("queue release: exit %d %q", code, out)
	}
	flushAndWait(t, in.AdminAddr(), "id="+held, 15*time.Second, func() bool { return dst.Count() >= 2 }, "the released message to arrive")
	if ids := messageIDs(t, dst.Messages()); ids["<held@test.invalid>"] != 1 {
		t.Fatalf("sink got %v", ids)
	}
	waitFor(t, 10*time.Second, func() bool { return in.Store().Messages() == 0 }, "the queue to empty")
}

func TestOpsFlushDeliversWithinSecondsDespiteTenMinuteBackoff(t *testing.T) {
	dest := freeAddr(t)
	in := opsRelayq(t, dest)
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"late"}, 100)
	msgs := waitDeferred(t, in.AdminAddr(), 1)
	if wait := time.Until(msgs[0].NextAttempt); wait < 7*time.Minute {
		t.Fatalf("next attempt in %v; the test needs a long backoff", wait)
	}
	dst := startSink(t, sink.Options{Addr: dest})
	start := time.Now()
	if out, _, code := runOps(t, in, "queue", "flush", msgs[0].ID); code != 0 || !strings.Contains(out, "flushed 1 message") {
		t.Fatalf("queue flush: exit %d %q", code, out)
	}
	flushAndWait(t, in.AdminAddr(), "id="+msgs[0].ID, 10*time.Second, func() bool { return dst.Count() == 1 }, "the flushed message to arrive")
	t.Logf("delivered %v after the flush (backoff was %v)", time.Since(start).Round(time.Millisecond), time.Until(msgs[0].NextAttempt).Round(time.Minute))
}

func TestOpsFiltersSelectTheRightMessages(t *testing.T) {
	in := opsRelayq(t, downAddr(t))
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@one.invalid", []string{"s1", "s2"}, 100)
	submit(t, in.Addrs()[0], "cron@ops.invalid", "u@two.invalid", []string{"o1"}, 100)
	submit(t, in.Addrs()[0], "cron@ops.invalid", "u@one.invalid", []string{"o2"}, 100)
	waitDeferred(t, in.AdminAddr(), 4)

	count := func(args ...string) int {
		t.Helper()
		out, errOut, code := runOps(t, in, append([]string{"queue", "list", "--json"}, args...)...)
		var list []admin.Message
		if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil {
			t.Fatalf("queue list %v: exit %d %v %s", args, code, err, errOut)
		}
		return len(list)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 4},
		{[]string{"--domain", "one.invalid"}, 3},
		{[]string{"--domain", "two.invalid"}, 1},
		{[]string{"--sender", "cron@ops.invalid"}, 2},
		{[]string{"--sender", "@shop.invalid", "--domain", "one.invalid"}, 2},
		{[]string{"--state", "deferred"}, 4},
		{[]string{"--state", "held"}, 0},
		{[]string{"--older-than", "1h"}, 0},
	} {
		if got := count(tc.args...); got != tc.want {
			t.Errorf("queue list %v: %d messages, want %d", tc.args, got, tc.want)
		}
	}
	out, _, code := runOps(t, in, "queue", "hold", "--sender", "cron@ops.invalid", "--domain", "one.invalid")
	if code != 0 || !strings.Contains(out, "held 1 message") {
		t.Fatalf("hold by filter: exit %d %q", code, out)
	}
	if got := count("--state", "held"); got != 1 {
		t.Fatalf("%d held after holding by filter, want 1", got)
	}
	if out, _, _ := runOps(t, in, "queue", "list", "--state", "held"); !strings.Contains(out, "(held)") || !strings.Contains(out, "cron@ops.invalid") {
		t.Fatalf("queue list --state held:\n%s", out)
	}
	if _, errOut, code := runOps(t, in, "queue", "list", "--state", "stuck"); code != 2 || !strings.Contains(errOut, "active, deferred, held") {
		t.Fatalf("bad state: exit %d %q", code, errOut)
	}
}

func TestOpsStatusShowsQueueAndPressure(t *testing.T) {
	in := opsRelayq(t, downAddr(t))
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@dest.invalid", []string{"a", "b", "c"}, 100)
	waitDeferred(t, in.AdminAddr(), 3)
	out, errOut, code := runOps(t, in, "status")
	if code != 0 || !strings.Contains(out, "Queue:") || !strings.Contains(out, "3 messages") || !strings.Contains(out, "Back pressure:") {
		t.Fatalf("status: exit %d %q\n%s", code, errOut, out)
	}
	out, _, _ = runOps(t, in, "status", "--json")
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Queue.Messages != 3 || st.Hostname != "relay.test.invalid" {
		t.Fatalf("status --json: %v %+v", err, st.Queue)
	}
}

func TestOpsMetricsMoveAsMailFlows(t *testing.T) {
	dest := freeAddr(t)
	in := opsRelayq(t, dest)
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + in.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	value := func(text, series string) float64 {
		t.Helper()
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			if name, v, ok := strings.Cut(sc.Text(), " "); ok && name == series {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		t.Fatalf("no %s in /metrics", series)
		return 0
	}
	if m := scrape(); value(m, "relayq_queue_messages") != 0 || value(m, "relayq_backpressure_level") != 0 {
		t.Fatalf("at start:\n%s", m)
	}
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@dest.invalid", []string{"a", "b"}, 2000)
	waitDeferred(t, in.AdminAddr(), 2)
	m := scrape()
	if value(m, "relayq_queue_messages") != 2 || value(m, "relayq_queue_bytes") < 4000 {
		t.Fatalf("queue gauges after 2 messages: %v messages, %v bytes", value(m, "relayq_queue_messages"), value(m, "relayq_queue_bytes"))
	}
	dst := startSink(t, sink.Options{Addr: dest})
	flushAndWait(t, in.AdminAddr(), "all=true", 15*time.Second, func() bool { return dst.Count() == 2 }, "both messages to arrive")
	waitFor(t, 10*time.Second, func() bool { return value(scrape(), "relayq_queue_messages") == 0 }, "relayq_queue_messages to fall to 0")
	if value(scrape(), "relayq_queue_bytes") != 0 {
		t.Fatal("relayq_queue_bytes is not 0 with an empty queue")
	}
	m = scrape()
	for series, want := range map[string]float64{
		"relayq_messages_received_total":              2,
		"relayq_accept_duration_seconds_count":        2,
		`relayq_deliveries_total{result="delivered"}`: 2,
	} {
		if got := value(m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := value(m, `relayq_deliveries_total{result="deferred"}`); got < 2 {
		t.Errorf(`relayq_deliveries_total{result="deferred"} = %v, want >= 2`, got)
	}
}

// startFromFile writes fc to path and runs relayq on it until the test
// ends, logging into the returned buffer; reloads read path again.
func startFromFile(t *testing.T, path string, fc fileConfig) (*server.Instance, *logBuffer) {
	t.Helper()
	writeConfig(t, path, fc)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	in, err := server.Start(cfg, zerolog.New(logs), serverOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })
	in.SetLoader(func() (*config.Config, error) { return config.Load(path) })
	return in, logs
}

// fileConfig is what writeConfig puts in a relayq config file; extra is
// TOML appended at the end (tables other than those written).
type fileConfig struct {
	dataDir, listen, admin, token, smarthost string
	extra                                    string
}

// writeConfig writes a relayq config file with a 10-minute backoff.
func writeConfig(t *testing.T, path string, c fileConfig) {
	t.Helper()
	text := fmt.Sprintf(`
hostname = "relay.test.invalid"
data_dir = %q
[[listener]]
address = %q
[admin]
address = %q
token = %q
[delivery.smarthost]
hosts = [%q]
tls = "none"
[retry]
min_backoff = "10m"
max_backoff = "1h"
%s
`, c.dataDir, c.listen, c.admin, c.token, c.smarthost, c.extra)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpsReloadSwitchesSmarthostLiveAndRejectsABadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relayq.toml")
	dataDir := filepath.Join(dir, "queue")
	fc := fileConfig{dataDir: dataDir, listen: "127.0.0.1:0", admin: "127.0.0.1:0", smarthost: freeAddr(t)}
	in, logs := startFromFile(t, path, fc)
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@dest.invalid", []string{"first"}, 100)
	waitDeferred(t, in.AdminAddr(), 1)

	dst := startSink(t, sink.Options{})
	fc.smarthost = dst.Addr()
	writeConfig(t, path, fc)
	resp, err := http.Post("http://"+in.AdminAddr()+"/api/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/reload = %d", resp.StatusCode)
	}
	flushAndWait(t, in.AdminAddr(), "all=true", 10*time.Second, func() bool { return dst.Count() == 1 }, "delivery through the new smart host")

	// A bad file is refused; the running configuration (the new smart host) stays.
	if err := os.WriteFile(path, []byte("[limits]\nmax_recipients = -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err = http.Post("http://"+in.AdminAddr()+"/api/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "max_recipients") {
		t.Fatalf("reload of a bad file = %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "config reload rejected") {
		t.Errorf("no log line for the rejected reload:\n%s", logs.String())
	}
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@dest.invalid", []string{"second"}, 100)
	waitFor(t, 10*time.Second, func() bool { return dst.Count() == 2 }, "delivery with the old configuration kept")
}

func TestOpsSIGHUPReloadsTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relayq.toml")
	dataDir := filepath.Join(dir, "queue")
	listen, adminAddr := freeAddr(t), freeAddr(t)
	fc := fileConfig{dataDir: dataDir, listen: listen, admin: adminAddr, smarthost: freeAddr(t),
		extra: "[limits]\nmax_recipients = 2\n"}
	writeConfig(t, path, fc)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
			serverOptions(func() (*config.Config, error) { return config.Load(path) }))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + adminAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, "the admin server")
	submit(t, listen, "app@shop.invalid", "u@dest.invalid", []string{"hup"}, 100)
	waitDeferred(t, adminAddr, 1)

	dst := startSink(t, sink.Options{})
	fc.smarthost = dst.Addr()
	fc.extra = "[limits]\nmax_recipients = 1\n"
	writeConfig(t, path, fc)
	c := dial(t, listen) // open across the reload
	// run() has handled SIGHUP since before the admin server answered.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The signal is handled asynchronously: the open connection's
	// transactions meet the new limit once the reload is done.
	waitFor(t, 5*time.Second, func() bool {
		c.cmd("MAIL FROM:<app@shop.invalid>", 250)
		c.cmd("RCPT TO:<a@dest.invalid>", 250)
		if err := c.tp.PrintfLine("RCPT TO:<b@dest.invalid>"); err != nil {
			t.Fatal(err)
		}
		code, msg, err := c.tp.ReadResponse(0)
		if code != 250 && code != 452 || code == 452 && !strings.HasPrefix(msg, "4.5.3 ") {
			t.Fatalf("2nd RCPT: %d %s %v", code, msg, err)
		}
		c.cmd("RSET", 250)
		return code == 452
	}, "max_recipients = 1 after SIGHUP on a connection opened before it")
	flushAndWait(t, adminAddr, "all=true", 10*time.Second, func() bool { return dst.Count() == 1 }, "delivery through the smart host named after SIGHUP")
}

// postReload POSTs /api/reload to the admin API at addr and returns the
// status and body of the answer.
func postReload(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/api/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestOpsReloadChangesALimitLiveWithoutDroppingConnections: max_recipients
// 2 → 1 by POST /api/reload while a client stays connected; its next
// transaction meets the new limit and its mail is still taken and
// delivered. A changed key that only a restart applies is named in the
// log, and a bad file leaves the limit as it was.
func TestOpsReloadChangesALimitLiveWithoutDroppingConnections(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relayq.toml")
	dst := startSink(t, sink.Options{})
	fc := fileConfig{dataDir: filepath.Join(dir, "queue"), listen: "127.0.0.1:0", admin: "127.0.0.1:0",
		smarthost: dst.Addr(), extra: "[limits]\nmax_recipients = 2\n"}
	in, logs := startFromFile(t, path, fc)

	c := dial(t, in.Addrs()[0])
	send := func(rcpts ...string) {
		t.Helper()
		c.cmd("MAIL FROM:<app@shop.invalid>", 250)
		for _, r := range rcpts {
			c.cmd("RCPT TO:<"+r+">", 250)
		}
		c.cmd("DATA", 354)
		c.raw("Subject: reload\r\n\r\nbody\r\n.\r\n")
		c.expect(250)
	}
	send("a@dest.invalid", "b@dest.invalid")

	fc.extra = "[limits]\nmax_recipients = 1\nmax_message_size = \"1MB\"\n"
	writeConfig(t, path, fc)
	if code, body := postReload(t, in.AdminAddr()); code != http.StatusOK {
		t.Fatalf("POST /api/reload = %d %s", code, body)
	}
	c.cmd("MAIL FROM:<app@shop.invalid>", 250)
	c.cmd("RCPT TO:<a@dest.invalid>", 250)
	if msg := c.cmd("RCPT TO:<b@dest.invalid>", 452); !strings.HasPrefix(msg, "4.5.3 ") {
		t.Errorf("2nd RCPT after the reload: 452 %s, want 452 4.5.3", msg)
	}
	c.cmd("RSET", 250)
	send("a@dest.invalid")
	waitFor(t, 10*time.Second, func() bool { return dst.Count() == 2 }, "both messages delivered")
	if !strings.Contains(logs.String(), `"key":"limits.max_message_size"`) {
		t.Errorf("no restart-only warning for limits.max_message_size:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), `"key":"limits.max_recipients"`) {
		t.Errorf("limits.max_recipients logged as restart-only")
	}

	// A bad file is refused and the limit stays at 1 for new connections.
	if err := os.WriteFile(path, []byte("[limits]\nmax_recipients = -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := postReload(t, in.AdminAddr()); code != http.StatusUnprocessableEntity {
		t.Fatalf("reload of a bad file = %d %s", code, body)
	}
	d := dial(t, in.Addrs()[0])
	d.cmd("MAIL FROM:<app@shop.invalid>", 250)
	d.cmd("RCPT TO:<a@dest.invalid>", 250)
	d.cmd("RCPT TO:<b@dest.invalid>", 452)
	c.cmd("NOOP", 250) // the first connection is still served
}

func TestOpsNonLoopbackAdminWithoutTokenRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relayq.toml")
	writeConfig(t, path, fileConfig{dataDir: filepath.Join(dir, "queue"), listen: "127.0.0.1:0", admin: "0.0.0.0:0", smarthost: freeAddr(t)})
	_, errOut, code := runOps(t, nil, "serve", "--config", path)
	if code != 2 || !strings.Contains(errOut, "admin.token: required") {
		t.Fatalf("serve with an open admin address and no token: exit %d %q", code, errOut)
	}
	_, errOut, code = runOps(t, nil, "serve", "--config", path, "--admin", "[::]:0")
	if code != 2 || !strings.Contains(errOut, "admin.token") {
		t.Fatalf("serve --admin [::]:0 without a token: exit %d %q", code, errOut)
	}

	// server.Start(, serverOptions(nil)) refuses too, for a config that skipped validation, and
	// leaves nothing open behind it: the same queue opens again at once.
	cfg := testConfig(t, freeAddr(t))
	cfg.Admin.Address = "0.0.0.0:0"
	if _, err := server.Start(cfg, zerolog.Nop(), serverOptions(nil)); err == nil || !strings.Contains(err.Error(), "admin.token") {
		t.Fatalf("start = %v, want the admin.token error", err)
	}
	cfg.Admin.Token = "s3cret"
	in := startRelayq(t, cfg)
	req, _ := http.NewRequest("GET", "http://"+in.AdminAddr()+"/api/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status without the token = %d, want 401", resp.StatusCode)
	}
	if _, errOut, code := runOps(t, in, "status", "--token", "wrong"); code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("status with a wrong token: exit %d %q", code, errOut)
	}
	if out, errOut, code := runOps(t, in, "status", "--token", "s3cret"); code != 0 || !strings.Contains(out, "Queue:") {
		t.Fatalf("status with the token: exit %d %q %q", code, out, errOut)
	}
}

func TestOpsCLIFindsTheAPIAndTokenThroughTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relayq.toml")
	writeConfig(t, path, fileConfig{dataDir: filepath.Join(dir, "queue"), listen: "127.0.0.1:0",
		admin: freeAddr(t), token: "from-the-file", smarthost: freeAddr(t)})
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	startRelayq(t, cfg)
	out, errOut, code := runOps(t, nil, "status", "--config", path)
	if code != 0 || !strings.Contains(out, "Queue:") {
		t.Fatalf("status --config: exit %d %q %q", code, out, errOut)
	}
	if _, errOut, code := runOps(t, nil, "status", "--config", path, "--token", "wrong"); code != 1 || !strings.Contains(errOut, "admin token required") {
		t.Fatalf("--token overrides the file's: exit %d %q", code, errOut)
	}
}
