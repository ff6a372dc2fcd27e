package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/maildrop"
	"relayq/internal/sink"
)

// sendmailRun is one run of the sendmail command line.
type sendmailRun struct {
	bin   string // the binary, or a link to it named sendmail
	stdin string
	input *os.File            // stdin instead of the string stdin, when set
	user  string              // $USER
	cred  *syscall.Credential // nil: the test's own user
	args  []string
}

// run runs the binary with r's stdin and returns its stdout, stderr and
// exit status. The environment holds no RELAYQ_ variable.
func (r sendmailRun) run(t *testing.T) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.bin, r.args...)
	cmd.Stdin = strings.NewReader(r.stdin)
	if r.input != nil {
		cmd.Stdin = r.input
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "USER=" + r.user, "HOME=/"}
	if r.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), 0
}

// sendmailLink returns a link named sendmail to the relayq binary, as
// /usr/sbin/sendmail would be.
func sendmailLink(t *testing.T) string {
	t.Helper()
	link := filepath.Join(t.TempDir(), "sendmail")
	if err := os.Symlink(relayqBinary(t), link); err != nil {
		t.Fatal(err)
	}
	return link
}

// relayqForSendmail starts a relayq child delivering to a new sink and
// returns it, the sink and the config's path.
func relayqForSendmail(t *testing.T, extra string) (*child, *sink.Server, string) {
	t.Helper()
	dst := startSink(t, sink.Options{})
	cfg := childConfig(t, filepath.Join(t.TempDir(), "queue"), freeAddr(t), dst.Addr(), extra)
	c := startChild(t, cfg)
	c.waitLog(20*time.Second, 1, msgIs("maildrop: picking up"))
	return c, dst, cfg
}

func waitSink(t *testing.T, dst *sink.Server, n int) []sink.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, n); err != nil {
		t.Fatalf("the sink got %d messages, want %d: %v", dst.Count(), n, err)
	}
	return dst.Messages()
}

func parseMessage(t *testing.T, m sink.Message) *mail.Message {
	t.Helper()
	parsed, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("unparseable message at the sink: %v\n%s", err, m.Data)
	}
	return parsed
}

func TestSendmailDeliversToTheSinkWithTheFieldsAMessageLacks(t *testing.T) {
	_, dst, cfg := relayqForSendmail(t, "")
	bin := relayqBinary(t)

	// -oi: a lone "." is a line of the message.
	stdout, stderr, code := sendmailRun{bin: bin, user: "cron", stdin: "Subject: nightly report\n\nall good\n.\nstill the body\n",
		args: []string{"sendmail", "--config", cfg, "-oi", "-F", "Cron Daemon", "-f", "app@example.org", "ops@dest.invalid"}}.run(t)
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and silence", code, stdout, stderr)
	}
	m := waitSink(t, dst, 1)[0]
	if m.From != "app@example.org" || !slices.Equal(m.To, []string{"ops@dest.invalid"}) {
		t.Errorf("envelope %s → %v", m.From, m.To)
	}
	parsed := parseMessage(t, m)
	if from, err := mail.ParseAddress(parsed.Header.Get("From")); err != nil || from.Name != "Cron Daemon" || from.Address != "app@example.org" {
		t.Errorf("From: %q", parsed.Header.Get("From"))
	}
	if _, err := parsed.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	if parsed.Header.Get("Message-ID") == "" || parsed.Header.Get("Received") == "" {
		t.Errorf("no Message-ID or no Received:\n%s", m.Data)
	}
	body, _ := io.ReadAll(parsed.Body)
	if string(body) != "all good\r\n.\r\nstill the body\r\n" {
		t.Errorf("body %q", body)
	}

	// Without -i a lone "." ends the input; the sender is $USER at the
	// configured hostname, and so is a recipient without a domain.
	_, stderr, code = sendmailRun{bin: bin, user: "cron", stdin: "Subject: s\n\nkept\n.\ndropped\n",
		args: []string{"sendmail", "--config", cfg, "root"}}.run(t)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	m = waitSink(t, dst, 2)[1]
	if m.From != "cron@relay.test.invalid" || !slices.Equal(m.To, []string{"root@relay.test.invalid"}) {
		t.Errorf("envelope %s → %v, want cron@relay.test.invalid → root@relay.test.invalid", m.From, m.To)
	}
	if body, _ := io.ReadAll(parseMessage(t, m).Body); string(body) != "kept\r\n" {
		t.Errorf("body %q, want what came before the lone dot", body)
	}
}

func TestSendmailLinkWithTTakesRecipientsFromTheHeaderAndRemovesBcc(t *testing.T) {
	_, dst, cfg := relayqForSendmail(t, "")
	in := "To: a@dest.invalid\nCc: \"Bee\" <b@dest.invalid>\nBcc: secret@dest.invalid\nSubject: t\n\nbody\n"
	if _, stderr, code := (sendmailRun{bin: sendmailLink(t), user: "app", stdin: in, args: []string{"-ti", "--config", cfg}}).run(t); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	m := waitSink(t, dst, 1)[0]
	if want := []string{"a@dest.invalid", "b@dest.invalid", "secret@dest.invalid"}; !slices.Equal(m.To, want) {
		t.Errorf("recipients %v, want %v", m.To, want)
	}
	if bytes.Contains(m.Data, []byte("secret@")) || bytes.Contains(bytes.ToLower(m.Data), []byte("\nbcc:")) {
		t.Errorf("the Bcc reached the recipients:\n%s", m.Data)
	}
	if h := parseMessage(t, m).Header; h.Get("To") != "a@dest.invalid" || h.Get("Cc") != `"Bee" <b@dest.invalid>` {
		t.Errorf("To %q, Cc %q", h.Get("To"), h.Get("Cc"))
	}
}

func TestSendmailBadUsageExits64WithAUsageLine(t *testing.T) {
	bin := relayqBinary(t)
	for _, args := range [][]string{{"-X", "a@x"}, {"-bs"}, {"-f"}, {"--config", "/dev/null"}} {
		_, stderr, code := sendmailRun{bin: bin, user: "app", args: append([]string{"sendmail"}, args...)}.run(t)
		if code != exUsage || !strings.Contains(stderr, "usage: relayq sendmail") {
			t.Errorf("%q: exit %d, stderr %q; want 64 and a usage line", args, code, stderr)
		}
	}
}

func TestSendmailExits66WhenStdinCannotBeRead(t *testing.T) {
	dir, err := os.Open(t.TempDir()) // reading a directory fails: EISDIR
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	_, stderr, code := sendmailRun{bin: relayqBinary(t), user: "app", input: dir,
		args: []string{"sendmail", "--config", "/dev/null", "a@dest.invalid"}}.run(t)
	if code != exNoInput || !strings.Contains(stderr, "reading the message") {
		t.Errorf("exit %d, stderr %q; want 66 saying the message cannot be read", code, stderr)
	}
}

// A sink stands in for relayq and answers as a policy or a mailbox would.
func TestSendmailPermanentRefusalExitsWithTheReplyOnStderr(t *testing.T) {
	dst := startSink(t, sink.Options{OnRcpt: func(to string) error {
		switch {
		case strings.HasPrefix(to, "gone@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case strings.HasPrefix(to, "denied@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relaying denied"}
		}
		return nil
	}})
	cfg := childConfig(t, filepath.Join(t.TempDir(), "queue"), freeAddr(t), downAddr(t), "")
	for _, tc := range []struct {
		rcpts    []string
		code     int
		reply    string
		received int // messages the sink holds after this case
	}{
		{[]string{"gone@dest.invalid"}, exUnavailable, "<gone@dest.invalid>: 550 5.1.1 no such user", 0},
		{[]string{"denied@dest.invalid"}, exNoPerm, "<denied@dest.invalid>: 550 5.7.1 relaying denied", 0},
		{[]string{"ok@dest.invalid", "gone@dest.invalid"}, exUnavailable, "went to the other recipients", 1},
	} {
		_, stderr, code := sendmailRun{bin: relayqBinary(t), user: "app", stdin: "Subject: x\n\nbody\n",
			args: append([]string{"sendmail", "--config", cfg, "--server", dst.Addr()}, tc.rcpts...)}.run(t)
		if code != tc.code || !strings.Contains(stderr, tc.reply) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.rcpts, code, stderr, tc.code, tc.reply)
		}
		if n := dst.Count(); n != tc.received {
			t.Errorf("%v: the sink holds %d messages, want %d", tc.rcpts, n, tc.received)
		}
	}
}

// maildropFiles lists the messages waiting in a maildrop directory: final
// names start with their time.
func maildropFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestSendmailWhileRelayqIsDownLeavesMailInTheMaildropAndServeDeliversItOnce(t *testing.T) {
	dst := startSink(t, sink.Options{})
	dataDir := filepath.Join(t.TempDir(), "queue")
	cfg := childConfig(t, dataDir, freeAddr(t), dst.Addr(), "")
	dropDir := filepath.Join(dataDir, "maildrop")

	// relayq ran once (it made the maildrop) and is stopped now.
	first := startChild(t, cfg)
	first.waitLog(20*time.Second, 1, msgIs("maildrop: picking up"))
	first.kill()

	bin := relayqBinary(t)
	for _, tok := range []string{"one", "two"} {
		stdout, stderr, code := sendmailRun{bin: bin, user: "app", stdin: "Message-ID: <" + tok + "@test.invalid>\nSubject: " + tok + "\n\nbody\n",
			args: []string{"sendmail", "--config", cfg, "-i", "rcpt@dest.invalid"}}.run(t)
		if code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("relayq down: exit %d, stdout %q, stderr %q; want 0 and silence, as Postfix", code, stdout, stderr)
		}
	}
	if files := maildropFiles(t, dropDir); len(files) != 2 {
		t.Fatalf("the maildrop holds %v, want 2 messages", files)
	}
	// A 4xx from relayq (here a sink answering as relayq under back
	// pressure) leaves the message in the maildrop too.
	busy := startSink(t, sink.Options{OnMail: func(string) error {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system resources"}
	}})
	if _, stderr, code := (sendmailRun{bin: bin, user: "app", stdin: "Message-ID: <three@test.invalid>\n\nbody\n",
		args: []string{"sendmail", "--config", cfg, "--server", busy.Addr(), "rcpt@dest.invalid"}}).run(t); code != 0 {
		t.Fatalf("452: exit %d, %s", code, stderr)
	}
	if files := maildropFiles(t, dropDir); len(files) != 3 {
		t.Fatalf("the maildrop holds %v, want 3 messages", files)
	}

	// relayq starts: it picks the files up and delivers each once.
	second := startChild(t, cfg)
	msgs := waitSink(t, dst, 3)
	second.waitLog(20*time.Second, 3, msgIs("delivered"))
	for _, l := range second.waitLog(5*time.Second, 3, msgIs("maildrop: submitted")) {
		if reply, _ := l["reply"].(string); !strings.Contains(reply, "queued as") {
			t.Errorf("maildrop: submitted without relayq's reply: %v", l)
		}
	}
	if files := maildropFiles(t, dropDir); len(files) != 0 {
		t.Errorf("files left in the maildrop after delivery: %v", files)
	}
	second.kill()
	third := startChild(t, cfg)
	if q := third.waitLog(20*time.Second, 1, msgIs("queue counted"))[0]["queued"]; q != float64(0) {
		t.Errorf("the queue reopened with %v messages, want 0", q)
	}
	third.waitLog(20*time.Second, 1, msgIs("maildrop: picking up"))
	ids := messageIDs(t, msgs)
	for _, tok := range []string{"one", "two", "three"} {
		if n := ids["<"+tok+"@test.invalid>"]; n != 1 {
			t.Errorf("message %s arrived %d times, want once", tok, n)
		}
	}
	if n := dst.Count(); n != 3 {
		t.Errorf("the sink holds %d messages, want 3", n)
	}
}

// A maildrop relayq cannot be reached nor written to: the message is not
// sent, and sendmail says so with EX_TEMPFAIL.
func TestSendmailExits75WhenTheMaildropCannotBeWritten(t *testing.T) {
	cfg := childConfig(t, filepath.Join(t.TempDir(), "queue"), downAddr(t), downAddr(t),
		"[sendmail]\nmaildrop = \""+filepath.Join(t.TempDir(), "missing", "maildrop")+"\"\n")
	_, stderr, code := sendmailRun{bin: relayqBinary(t), user: "app", stdin: "Subject: x\n\nbody\n",
		args: []string{"sendmail", "--config", cfg, "rcpt@dest.invalid"}}.run(t)
	if code != exTempFail || !strings.Contains(stderr, "cannot be left in the maildrop") || !strings.Contains(stderr, "connection refused") {
		t.Errorf("exit %d, stderr %q; want 75 saying why", code, stderr)
	}
}

// copyBinary copies the relayq binary to dir, mode 0755: relayqBinary's
// directory is private to the test's user.
func copyBinary(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(relayqBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "relayq")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// The maildrop works for a user who is not relayq's: a member of
// maildrop_group writes to it, anyone else cannot. The tests run as root,
// which relayq serve runs as here; sendmail runs as nobody.
func TestSendmailAsAnotherUserWritesToTheMaildropOfItsGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run sendmail as the user nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	group, err := user.LookupGroupId(nobody.Gid)
	if err != nil {
		t.Fatal(err)
	}
	// The other users must be able to reach the binary, the config and
	// the maildrop's parent; the queue itself stays private.
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	bin := copyBinary(t, base)
	dst := startSink(t, sink.Options{})
	dropDir := filepath.Join(base, "spool", "maildrop")
	cfg := childConfig(t, filepath.Join(base, "queue"), freeAddr(t), dst.Addr(),
		fmt.Sprintf("[sendmail]\nmaildrop = %q\nmaildrop_group = %q\n", dropDir, group.Name))
	pub := filepath.Join(base, "relayq.toml")
	if b, err := os.ReadFile(cfg); err != nil || os.WriteFile(pub, b, 0o644) != nil {
		t.Fatal("copying the config", err)
	}
	first := startChild(t, pub)
	first.waitLog(20*time.Second, 1, msgIs("maildrop: picking up"))
	first.kill()
	if st, err := os.Stat(dropDir); err != nil || st.Mode()&(os.ModePerm|os.ModeSticky) != maildrop.DirMode || st.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Fatalf("maildrop %v, %v; want mode %v and group %s", st.Mode(), err, maildrop.DirMode, group.Name)
	}

	run := func(g int) (string, int) {
		_, stderr, code := sendmailRun{bin: bin, user: "nobody", stdin: "Subject: from nobody\n\nbody\n",
			cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(g), NoSetGroups: true},
			args: []string{"sendmail", "--config", pub, "rcpt@dest.invalid"}}.run(t)
		return stderr, code
	}
	// Not in the group: refused by the directory's mode.
	if stderr, code := run(gid + 1); code != exTempFail || !strings.Contains(stderr, "permission denied") {
		t.Errorf("outside the group: exit %d, %q; want 75, permission denied", code, stderr)
	}
	// In the group: the message waits in the maildrop, as nobody's file.
	if stderr, code := run(gid); code != 0 {
		t.Fatalf("in the group: exit %d, %s", code, stderr)
	}
	files := maildropFiles(t, dropDir)
	if len(files) != 1 {
		t.Fatalf("the maildrop holds %v, want 1 message", files)
	}
	if st, err := os.Stat(files[0]); err != nil || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Errorf("the file is %v (%v), want it owned by nobody", st, err)
	}

	second := startChild(t, pub)
	m := waitSink(t, dst, 1)[0]
	second.waitLog(20*time.Second, 1, msgIs("maildrop: submitted"))
	if m.From != "nobody@relay.test.invalid" {
		t.Errorf("sender %q, want nobody@relay.test.invalid", m.From)
	}
	if files := maildropFiles(t, dropDir); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}
