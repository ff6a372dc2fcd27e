package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
	"relayq/internal/testlog"
)

// intakeTimeout bounds each wait of these tests.
const intakeTimeout = 10 * time.Second

// dialogue is a hand-driven SMTP client that sends exactly the bytes the
// test gives it.
type dialogue struct {
	t  *testing.T
	c  net.Conn
	tp *textproto.Conn
}

func dial(t *testing.T, addr string) *dialogue {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, intakeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(intakeTimeout))
	d := &dialogue{t: t, c: c, tp: textproto.NewConn(c)}
	t.Cleanup(func() { d.tp.Close() })
	d.expect(220)
	d.cmd("EHLO client.test.invalid", 250)
	return d
}

func (d *dialogue) expect(want int) string {
	d.t.Helper()
	code, msg, err := d.tp.ReadResponse(0)
	if err != nil && code == 0 {
		d.t.Fatalf("reading reply: %v", err)
	}
	if code != want {
		d.t.Fatalf("got %d %s, want %d", code, msg, want)
	}
	return msg
}

func (d *dialogue) cmd(line string, want int) string {
	d.t.Helper()
	if err := d.tp.PrintfLine("%s", line); err != nil {
		d.t.Fatal(err)
	}
	return d.expect(want)
}

func (d *dialogue) raw(b string) {
	d.t.Helper()
	if _, err := d.c.Write([]byte(b)); err != nil {
		d.t.Fatal(err)
	}
}

// bareLineEnding returns the offset of the first CR not followed by LF or
// LF not preceded by CR in b, or -1.
func bareLineEnding(b []byte) int {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return i
		}
	}
	return -1
}

// TestSmugglingPayloadsReachTheSinkAsOneMessageWithCRLFOnly sends the
// SMTP smuggling payloads as raw bytes through relayq to a real go-smtp
// server: each DATA must arrive there as exactly one message, holding the
// smuggled commands as text, with nothing but CRLF line endings.
func TestSmugglingPayloadsReachTheSinkAsOneMessageWithCRLFOnly(t *testing.T) {
	payloads := []struct{ name, p string }{
		{"lf-dot-lf", "\n.\n"},
		{"lf-dot-crlf", "\n.\r\n"},
		{"crlf-dot-lf", "\r\n.\n"},
		{"cr-dot-cr", "\r.\r"},
	}
	const smuggled = "MAIL FROM:<evil@attacker.invalid>\r\nRCPT TO:<victim@dest.invalid>\r\nDATA\r\n" +
		"From: ceo@dest.invalid\r\nSubject: smuggled\r\n\r\nwire money\r\n"
	dst := startSink(t, sink.Options{})
	in := startRelayq(t, testConfig(t, dst.Addr()))
	d := dial(t, in.Addrs()[0])
	for _, pl := range payloads {
		d.cmd("MAIL FROM:<app@shop.invalid>", 250)
		d.cmd("RCPT TO:<user@dest.invalid>", 250)
		d.cmd("DATA", 354)
		d.raw("Message-ID: <" + pl.name + "@test.invalid>\r\nSubject: " + pl.name + "\r\n\r\nhello" + pl.p + smuggled + ".\r\n")
		d.expect(250)
	}
	d.cmd("QUIT", 221) // the smuggled commands were not commands

	ctx, cancel := context.WithTimeout(context.Background(), intakeTimeout)
	defer cancel()
	if err := dst.Wait(ctx, len(payloads)); err != nil {
		t.Fatalf("sink got %d of %d messages: %v", dst.Count(), len(payloads), err)
	}
	waitFor(t, intakeTimeout, func() bool { return in.Store().Messages() == 0 }, "the queue to empty")
	msgs := dst.Messages()
	if len(msgs) != len(payloads) {
		t.Fatalf("sink got %d messages for %d DATA commands", len(msgs), len(payloads))
	}
	ids := messageIDs(t, msgs)
	for i, m := range msgs {
		if len(m.To) != 1 || m.To[0] != "user@dest.invalid" || m.From != "app@shop.invalid" {
			t.Errorf("message %d envelope %s → %v", i, m.From, m.To)
		}
		if at := bareLineEnding(m.Data); at >= 0 {
			t.Errorf("message %d has a bare CR or LF at %d: %q", i, at, m.Data[max(0, at-20):min(len(m.Data), at+20)])
		}
		if !bytes.Contains(m.Data, []byte("wire money")) {
			t.Errorf("message %d lost the smuggled text: %q", i, m.Data)
		}
	}
	for _, pl := range payloads {
		if n := ids["<"+pl.name+"@test.invalid>"]; n != 1 {
			t.Errorf("payload %s arrived %d times", pl.name, n)
		}
	}
}

// TestBareLineEndingsRejectFromConfig: with [limits] bare_line_endings =
// "reject" a smuggling payload is refused with 550 5.5.2 and nothing
// reaches the next hop.
func TestBareLineEndingsRejectFromConfig(t *testing.T) {
	dst := startSink(t, sink.Options{})
	cfg := testConfig(t, dst.Addr())
	cfg.Limits.BareLineEndings = config.BareLineEndingsReject
	in := startRelayq(t, cfg)
	d := dial(t, in.Addrs()[0])
	d.cmd("MAIL FROM:<app@shop.invalid>", 250)
	d.cmd("RCPT TO:<user@dest.invalid>", 250)
	d.cmd("DATA", 354)
	d.raw("Subject: bare\r\n\r\nhello\n.\nMAIL FROM:<evil@attacker.invalid>\r\n.\r\n")
	if msg := d.expect(550); !strings.HasPrefix(msg, "5.5.2 ") {
		t.Errorf("bare LF in reject mode: 550 %s, want 550 5.5.2", msg)
	}
	if n := in.Store().Messages(); n != 0 {
		t.Errorf("%d messages queued", n)
	}
}

// logBuffer is the test's view of the log.
type logBuffer = testlog.Buffer

// TestBackPressureHighRefusesMailWhileQueuedMailIsDelivered: a message is
// queued while its destination is down; relayq restarts with
// free_disk_high = "1000TB", so back pressure is high at once; MAIL gets
// 452 4.3.1 naming the resource, the log says which resource, reading and
// threshold, and when the destination comes up the queued message is
// delivered all the same.
func TestBackPressureHighRefusesMailWhileQueuedMailIsDelivered(t *testing.T) {
	dstAddr := freeAddr(t)
	dataDir := filepath.Join(t.TempDir(), "queue")
	doc := func(extra string) string {
		return fmt.Sprintf(`hostname = "relay.test.invalid"
data_dir = %q
[[listener]]
address = "127.0.0.1:0"
[admin]
address = ""
[delivery.smarthost]
hosts = [%q]
tls = "none"
[retry]
min_backoff = "50ms"
max_backoff = "200ms"
%s`, dataDir, dstAddr, extra)
	}
	normal, err := config.Parse([]byte(doc("")))
	if err != nil {
		t.Fatal(err)
	}
	first, err := server.Start(normal, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), serverOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	submit(t, first.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"queued-before"}, 200)
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	forced, err := config.Parse([]byte(doc("[back_pressure]\nfree_disk_medium = \"1000TB\"\nfree_disk_high = \"1000TB\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	in, err := server.Start(forced, zerolog.New(&logs).Level(zerolog.WarnLevel), serverOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })
	<-in.Store().Counted()
	if in.Store().Messages() != 1 {
		t.Fatalf("%d messages queued after the restart, want 1", in.Store().Messages())
	}
	d := dial(t, in.Addrs()[0])
	if msg := d.cmd("MAIL FROM:<app@shop.invalid>", 452); msg != "4.3.1 Insufficient system resources (queue disk space)" {
		t.Errorf("MAIL at high pressure: 452 %s", msg)
	}
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "back pressure level changed") {
			line = l
		}
	}
	for _, want := range []string{`"resource":"free_disk"`, `"pressure":"high"`, `"threshold":"1000TB"`, `"reading":`, `452 4.3.1`} {
		if !strings.Contains(line, want) {
			t.Errorf("level-change log line %q lacks %s", line, want)
		}
	}

	dst := startSink(t, sink.Options{Addr: dstAddr})
	ctx, cancel := context.WithTimeout(context.Background(), intakeTimeout)
	defer cancel()
	if err := dst.Wait(ctx, 1); err != nil {
		t.Fatalf("queued message not delivered under back pressure: %v", err)
	}
	if ids := messageIDs(t, dst.Messages()); ids["<queued-before@test.invalid>"] != 1 {
		t.Errorf("sink got %v", ids)
	}
	d.cmd("RSET", 250)
	d.cmd("MAIL FROM:<app@shop.invalid>", 452) // still refused: delivery went on, intake did not
	waitFor(t, intakeTimeout, func() bool { return in.Store().Messages() == 0 }, "the queue to empty")
}

// TestBackPressureDisabledNeverRefuses: enabled = false turns the
// monitor off, whatever the thresholds say.
func TestBackPressureDisabledNeverRefuses(t *testing.T) {
	cfg, err := config.Parse([]byte(fmt.Sprintf(`data_dir = %q
[[listener]]
address = "127.0.0.1:0"
[admin]
address = ""
[back_pressure]
enabled = false
free_disk_medium = "1000TB"
free_disk_high = "1000TB"
`, filepath.Join(t.TempDir(), "queue"))))
	if err != nil {
		t.Fatal(err)
	}
	in := startRelayq(t, cfg)
	if in.Pressure() != nil {
		t.Error("a monitor runs with enabled = false")
	}
	dial(t, in.Addrs()[0]).cmd("MAIL FROM:<app@shop.invalid>", 250)
}

// TestTLSListenersAndAuthFromRelayqCertAndPasswd wires what `relayq cert`
// and `relayq passwd` make into a config: STARTTLS with AUTH on a relay
// listener lets a client outside allowed_networks relay, an smtps listener
// speaks TLS from the first byte, and a submission listener wants AUTH
// before MAIL.
func TestTLSListenersAndAuthFromRelayqCertAndPasswd(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeSelfSigned([]string{"relay.test.invalid", "127.0.0.1"}, certFile, keyFile, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	hash, err := hashPassword("s3cret", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	dst := startSink(t, sink.Options{})
	cfg := testConfig(t, dst.Addr())
	cfg.Listeners = []config.Listener{
		{Address: "127.0.0.1:0", Mode: config.ModeRelay},
		{Address: "127.0.0.1:0", Mode: config.ModeSMTPS},
		{Address: "127.0.0.1:0", Mode: config.ModeSubmission},
	}
	cfg.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile}
	cfg.Relay.Users = []config.User{{Name: "app1", PasswordHash: hash}}
	cfg.Relay.AllowedNetworks = []string{"192.0.2.0/24"} // not loopback: AUTH is the only way
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	in := startRelayq(t, cfg)
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "relay.test.invalid"}
	addrs := in.Addrs()

	send := func(c *smtp.Client, token string) error {
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", "app1", "s3cret")); err != nil {
			return fmt.Errorf("AUTH: %w", err)
		}
		return c.SendMail("app@shop.invalid", []string{"user@dest.invalid"},
			bytes.NewReader(message(token, "app@shop.invalid", "user@dest.invalid", 100)))
	}

	// relay: without TLS no AUTH, and no relaying from loopback.
	plain, err := smtp.Dial(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Hello("client.test.invalid"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Error("AUTH offered without TLS")
	}
	if ok, _ := plain.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not offered with [tls] set")
	}
	err = plain.SendMail("app@shop.invalid", []string{"user@dest.invalid"}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("unauthenticated relaying: %v, want 550 5.7.1", err)
	}
	plain.Close()

	// relay + STARTTLS + AUTH.
	conn, err := net.DialTimeout("tcp", addrs[0], intakeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClientStartTLS(conn, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	if err := send(c, "via-starttls"); err != nil {
		t.Errorf("STARTTLS + AUTH: %v", err)
	}

	// smtps.
	tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: intakeTimeout}, "tcp", addrs[1], clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	if err := send(smtp.NewClient(tconn), "via-smtps"); err != nil {
		t.Errorf("smtps + AUTH: %v", err)
	}

	// submission: MAIL before AUTH is refused.
	sub := dial(t, addrs[2])
	if msg := sub.cmd("MAIL FROM:<app@shop.invalid>", 530); msg != "5.7.0 Authentication required" {
		t.Errorf("submission MAIL before AUTH: 530 %s", msg)
	}

	ctx, cancel := context.WithTimeout(context.Background(), intakeTimeout)
	defer cancel()
	if err := dst.Wait(ctx, 2); err != nil {
		t.Fatalf("sink got %d of 2: %v", dst.Count(), err)
	}
	ids := messageIDs(t, dst.Messages())
	for _, tok := range []string{"via-starttls", "via-smtps"} {
		if ids["<"+tok+"@test.invalid>"] != 1 {
			t.Errorf("%s not delivered once: %v", tok, ids)
		}
	}
	for _, m := range dst.Messages() {
		if !bytes.Contains(m.Data, []byte("with ESMTPSA id")) {
			t.Errorf("Received does not record TLS and AUTH: %q", m.Data[:min(len(m.Data), 300)])
		}
	}
}

func TestCertRefusesToOverwriteWithoutForce(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := writeSelfSigned([]string{"a.invalid"}, certFile, keyFile, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(keyFile)
	if err := writeSelfSigned([]string{"b.invalid"}, certFile, keyFile, time.Hour, false); err == nil {
		t.Error("existing files overwritten without --force")
	}
	if after, _ := os.ReadFile(keyFile); !bytes.Equal(before, after) {
		t.Error("key changed")
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if err := writeSelfSigned([]string{"b.invalid"}, certFile, keyFile, time.Hour, true); err != nil {
		t.Errorf("--force: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := pair.Leaf; leaf == nil || leaf.DNSNames[0] != "b.invalid" {
		t.Errorf("certificate names %v", leaf.DNSNames)
	}
}

func TestPasswdHashesTheFirstLineOfStdin(t *testing.T) {
	for in, want := range map[string]string{
		"s3cret\n":           "s3cret",
		"s3cret\r\n":         "s3cret",
		"s3cret":             "s3cret",
		" with spaces \nx\n": " with spaces ",
	} {
		pass, err := readPassword(strings.NewReader(in))
		if err != nil || pass != want {
			t.Errorf("readPassword(%q) = %q, %v; want %q", in, pass, err, want)
			continue
		}
		hash, err := hashPassword(pass, bcrypt.MinCost)
		if err != nil || bcrypt.CompareHashAndPassword([]byte(hash), []byte(want)) != nil {
			t.Errorf("hash of %q does not check: %v", want, err)
		}
		// The hash is what [[relay.user]] password_hash takes.
		if _, err := config.Parse([]byte("[[relay.user]]\nname = \"a\"\npassword_hash = '" + hash + "'\n")); err != nil {
			t.Errorf("config refuses the hash: %v", err)
		}
	}
	if _, err := readPassword(strings.NewReader("\n")); err == nil {
		t.Error("empty password accepted")
	}
	if _, err := hashPassword(strings.Repeat("x", 73), bcrypt.MinCost); err == nil {
		t.Error("password over bcrypt's 72 bytes accepted")
	}
}
