package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relayq/queued"
)

func TestEHLOAdvertisesExtensions(t *testing.T) {
	cfg := testConfig()
	_, addr := startServer(t, cfg, &memQueue{})
	c := newClient(t, addr, "")
	for _, ext := range []string{"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO does not advertise %s", ext)
		}
	}
	if size, ok := c.MaxMessageSize(); !ok || int64(size) != cfg.MaxMessageSize {
		t.Errorf("SIZE = %d, %v; want %d", size, ok, cfg.MaxMessageSize)
	}
}

func TestAcceptedMessageReachesQueueWithReceivedAndEnvelope(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	c := newClient(t, addr, "")

	if err := c.Mail("sender@example.org", &smtp.MailOptions{
		Return: smtp.DSNReturnHeaders, EnvelopeID: "env-1", Size: 100,
	}); err != nil {
		t.Fatal(err)
	}
	rcpts := []struct {
		to   string
		opts *smtp.RcptOptions
	}{
		{"a@example.com", &smtp.RcptOptions{
			Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
			OriginalRecipientType: smtp.DSNAddressTypeRFC822,
			OriginalRecipient:     "orig+tag@example.net",
		}},
		{"b@example.com", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}},
		{"a@EXAMPLE.com", nil}, // the same mailbox again: collapsed
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r.to, r.opts); err != nil {
			t.Fatalf("RCPT %s: %v", r.to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	const msg = "From: sender@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}

	got := q.only(t)
	if want := "2.0.0 OK queued as " + string(got.id); resp.StatusText != want {
		t.Errorf("reply %q, want %q", resp.StatusText, want)
	}
	wantEnv := queued.Envelope{
		From: "sender@example.org",
		Recipients: []queued.Recipient{
			{Addr: "a@example.com", Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;orig+tag@example.net"},
			{Addr: "b@example.com", Notify: "NEVER"},
		},
		EnvID:    "env-1",
		Ret:      "HDRS",
		Body8Bit: true, // go-smtp's client sends BODY=8BITMIME when offered
		Client:   "[127.0.0.1] client.test",
		Size:     got.env.Size,
		Received: got.env.Received,
		Subject:  "hi",
	}
	if fmt.Sprintf("%+v", got.env) != fmt.Sprintf("%+v", wantEnv) {
		t.Errorf("envelope\n got %+v\nwant %+v", got.env, wantEnv)
	}
	wantBody := "Received: from client.test ([127.0.0.1])\r\n" +
		"\tby relay.test (relayq) with ESMTP id " + string(got.id) + ";\r\n" +
		"\tFri, 02 Jan 2026 15:04:05 +0000\r\n" + msg
	if string(got.body) != wantBody {
		t.Errorf("body\n got %q\nwant %q", got.body, wantBody)
	}
	if got.env.Size != int64(len(wantBody)) {
		t.Errorf("size %d, want %d", got.env.Size, len(wantBody))
	}
}

func TestReceivedNamesSingleRecipientAndReverseName(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.LookupAddr = func(_ context.Context, addr string) ([]string, error) {
		if addr != "127.0.0.1" {
			return nil, errors.New("no PTR")
		}
		return []string{"client.ptr.test."}, nil
	}
	_, addr := startServer(t, cfg, q)
	c := newClient(t, addr, "")
	if err := c.SendMail("", []string{"one@example.com"}, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	got := q.only(t)
	want := "Received: from client.test (client.ptr.test [127.0.0.1])\r\n" +
		"\tby relay.test (relayq) with ESMTP id " + string(got.id) + "\r\n" +
		"\tfor <one@example.com>; Fri, 02 Jan 2026 15:04:05 +0000\r\n"
	if !bytes.HasPrefix(got.body, []byte(want)) {
		t.Errorf("body starts\n%q\nwant\n%q", got.body, want)
	}
	if got.env.From != "" {
		t.Errorf("null sender stored as %q", got.env.From)
	}
}

func TestRelayPolicy(t *testing.T) {
	tests := []struct {
		name    string
		allowed []netip.Prefix
		from    string // local address of the client
		want    int
	}{
		{"allowed network relays", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "127.0.0.1", 250},
		{"other address is denied", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "127.0.0.2", 550},
		{"no allowed networks denies everyone", nil, "127.0.0.1", 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &memQueue{}
			cfg := testConfig()
			cfg.AllowedNetworks = tt.allowed
			_, addr := startServer(t, cfg, q)
			r := dialRaw(t, addr, tt.from)
			r.cmd("MAIL FROM:<s@example.org>", 250)
			msg := r.cmd("RCPT TO:<x@example.com>", tt.want)
			if tt.want == 550 {
				if msg != "5.7.1 Relaying denied" {
					t.Errorf("reply %q, want 550 5.7.1 Relaying denied", msg)
				}
				r.cmd("DATA", 502) // no recipient: no way to send a body
				if n := len(q.messages()); n != 0 {
					t.Errorf("%d messages queued from a denied client", n)
				}
			}
		})
	}
}

func TestMalformedAddressGets501_5_1_3(t *testing.T) {
	tests := []struct {
		name string
		mail string
		rcpt string // sent after a good MAIL when mail is ""
	}{
		{"double dot in sender domain", "MAIL FROM:<a@ex..ample.org>", ""},
		{"hyphen-edged recipient label", "", "RCPT TO:<b@-bad-.example>"},
		{"bad IPv4 literal", "", "RCPT TO:<b@[300.1.1.1]>"},
		{"underscore in domain", "", "RCPT TO:<b@under_score.example>"},
		{"non-ASCII without SMTPUTF8", "", "RCPT TO:<jörg@example.com>"},
		{"local part too long", "", "RCPT TO:<" + strings.Repeat("x", 65) + "@example.com>"},
	}
	_, addr := startServer(t, testConfig(), &memQueue{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, addr, "")
			line := tt.mail
			if line == "" {
				r.cmd("MAIL FROM:<s@example.org>", 250)
				line = tt.rcpt
			}
			if msg := r.cmd(line, 501); !strings.HasPrefix(msg, "5.1.3 ") {
				t.Errorf("reply 501 %s, want 501 5.1.3", msg)
			}
		})
	}
}

func TestWellFormedUnusualAddressesAccepted(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org> SMTPUTF8", 250)
	for _, rcpt := range []string{"jörg@bücher.example", "b@[192.0.2.1]", "c@[IPv6:2001:db8::1]", `"d e"@example.com`} {
		r.cmd("RCPT TO:<"+rcpt+">", 250)
	}
	r.cmd("DATA", 354)
	r.send("Subject: x\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	got := q.only(t)
	var addrs []string
	for _, rc := range got.env.Recipients {
		addrs = append(addrs, rc.Addr)
	}
	want := []string{"jörg@bücher.example", "b@[192.0.2.1]", "c@[IPv6:2001:db8::1]", `"d e"@example.com`}
	if fmt.Sprint(addrs) != fmt.Sprint(want) || !got.env.SMTPUTF8 {
		t.Errorf("recipients %q SMTPUTF8 %v, want %q true", addrs, got.env.SMTPUTF8, want)
	}
}

func TestSizeParamAboveLimitGets552_5_3_4AtMail(t *testing.T) {
	cfg := testConfig()
	_, addr := startServer(t, cfg, &memQueue{})
	r := dialRaw(t, addr, "")
	msg := r.cmd("MAIL FROM:<s@example.org> SIZE="+strconv.FormatInt(cfg.MaxMessageSize+1, 10), 552)
	if !strings.HasPrefix(msg, "5.3.4 ") {
		t.Errorf("reply 552 %s, want 552 5.3.4", msg)
	}
	// RFC 1870 §4: SIZE is the largest message accepted.
	r.cmd("MAIL FROM:<s@example.org> SIZE="+strconv.FormatInt(cfg.MaxMessageSize, 10), 250)
}

// TestBodySizeLimitCountsOctetsAsRFC1870 sends messages around the limit
// by each way a body is read: relay's fast path (DATA, the 354, then the
// body), go-smtp's reader in the clear (the body sent with DATA) and
// inside TLS (after STARTTLS). RFC 1870 counts a message as the client
// sends it, CRLFs included, without the dot-stuffing and the final ".":
// exactly the limit is accepted, one octet more gets 552 5.3.4. Every line
// of these messages but the first starts with a dot, stuffed on the wire.
func TestBodySizeLimitCountsOctetsAsRFC1870(t *testing.T) {
	const limit = 64 << 10
	paths := []struct {
		name          string
		tls, withData bool
	}{
		{"fast path", false, false},
		{"go-smtp reader, body sent with DATA", false, true},
		{"go-smtp reader inside TLS", true, false},
	}
	sizes := []struct {
		name string
		size int // octets of the message the client sends
		want int
	}{
		{"one under the limit", limit - 1, 250},
		{"exactly the limit", limit, 250},
		{"one over the limit", limit + 1, 552},
		{"far over the limit", 4 * limit, 552},
	}
	for _, p := range paths {
		for _, sz := range sizes {
			t.Run(p.name+"/"+sz.name, func(t *testing.T) {
				q := &memQueue{}
				cfg, clientTLS := authConfig(t)
				cfg.MaxMessageSize = limit
				srv, addr := startServer(t, cfg, q)
				r := dialRaw(t, addr, "")
				if p.tls {
					r.startTLS(clientTLS)
					r.cmd("EHLO client.test", 250)
				}
				msg := strings.ReplaceAll(message(sz.size), "\r\nx", "\r\n.")
				sendMessage(r, dotStuff(msg), p.withData)
				code, text := r.reply()
				if code != sz.want {
					t.Fatalf("%d-octet message: got %d %s, want %d", sz.size, code, text, sz.want)
				}
				if fast := srv.fastBodies.Load() == 1; fast != (!p.tls && !p.withData) {
					t.Errorf("read by the fast path: %v", fast)
				}
				if code == 250 {
					if got := afterReceived(t, q.only(t).body); string(got) != msg {
						t.Fatalf("queued %d octets, not the %d sent", len(got), len(msg))
					}
				} else {
					if text != "5.3.4 Message size exceeds fixed maximum message size" {
						t.Errorf("reply text %q", text)
					}
					if n := len(q.messages()); n != 0 {
						t.Fatalf("%d messages queued after 552", n)
					}
				}
				// The rest of the body was drained: the session is in step.
				sendMessage(r, "Subject: small\r\n\r\nok\r\n", p.withData)
				r.expect(250)
			})
		}
	}
}

// sendMessage gives the envelope and the wire form of a message, with the
// DATA command in the same write when withData (before the 354, so that
// go-smtp reads the body), and leaves the reply to the body unread.
func sendMessage(r *rawConn, wire string, withData bool) {
	r.t.Helper()
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	if withData {
		r.send("DATA\r\n" + wire + ".\r\n")
		r.expect(354)
		return
	}
	r.cmd("DATA", 354)
	r.send(wire + ".\r\n")
}

// message returns a message of exactly n octets (n >= 20) in CRLF lines.
func message(n int) string {
	var b strings.Builder
	b.WriteString("Subject: sized\r\n\r\n")
	full := strings.Repeat("x", 76) + "\r\n"
	for n-b.Len()-len(full) >= 2 {
		b.WriteString(full)
	}
	b.WriteString(strings.Repeat("x", n-b.Len()-2) + "\r\n")
	return b.String()
}

func TestMessageHelperSizes(t *testing.T) {
	for _, n := range []int{20, 21, 100, 65535, 65537} {
		m := message(n)
		if len(m) != n || !strings.HasSuffix(m, "\r\n") {
			t.Errorf("message(%d): len %d, ends %q", n, len(m), m[len(m)-2:])
		}
	}
}

func TestRecipientsBeyondMaxGet452_4_5_3(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.MaxRecipients = 2
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<a@example.com>", 250)
	r.cmd("RCPT TO:<b@example.com>", 250)
	r.cmd("RCPT TO:<a@example.com>", 250) // a duplicate does not count
	if msg := r.cmd("RCPT TO:<c@example.com>", 452); !strings.HasPrefix(msg, "4.5.3 ") {
		t.Errorf("reply 452 %s, want 452 4.5.3", msg)
	}
	r.cmd("DATA", 354)
	r.send("Subject: x\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	if got := q.only(t).env.Recipients; len(got) != 2 {
		t.Errorf("queued %d recipients, want 2", len(got))
	}
}

func TestTooManyHopsGets554_5_4_6(t *testing.T) {
	tests := []struct {
		name     string
		received int
		want     int
	}{
		{"30 Received headers pass", 30, 250},
		{"31 Received headers are a loop", 31, 554},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &memQueue{}
			_, addr := startServer(t, testConfig(), q) // MaxHops: default 30
			r := dialRaw(t, addr, "")
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			r.cmd("DATA", 354)
			var b strings.Builder
			for i := range tt.received {
				fmt.Fprintf(&b, "Received: from hop%d.example by hop%d.example;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n", i, i+1)
			}
			b.WriteString("Subject: loop\r\n\r\nReceived: in the body does not count\r\n.\r\n")
			r.send(b.String())
			code, msg := r.reply()
			if code != tt.want {
				t.Fatalf("got %d %s, want %d", code, msg, tt.want)
			}
			if code == 554 {
				if msg != "5.4.6 Too many hops, mail loop detected" {
					t.Errorf("reply text %q", msg)
				}
				if n := len(q.messages()); n != 0 {
					t.Errorf("%d messages queued after 554", n)
				}
				r.cmd("NOOP", 250) // still in step
			}
		})
	}
}

func TestStoreFailureGets451_4_3_0(t *testing.T) {
	q := &memQueue{beforeCommit: func(context.Context) error { return errors.New("fsync: input/output error") }}
	_, addr := startServer(t, testConfig(), q)
	c := newClient(t, addr, "")
	err := c.SendMail("s@example.org", []string{"x@example.com"}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	se := smtpErr(t, err, 451, smtp.EnhancedCode{4, 3, 0})
	if !se.Temporary() {
		t.Error("store failure is not a temporary error for the client")
	}
	if strings.Contains(se.Message, "fsync") {
		t.Errorf("reply %q leaks the internal error", se.Message)
	}
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestNestedMailGets503(t *testing.T) {
	_, addr := startServer(t, testConfig(), &memQueue{})
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("MAIL FROM:<t@example.org>", 503)
	r.cmd("RSET", 250)
	r.cmd("MAIL FROM:<t@example.org>", 250)
}
