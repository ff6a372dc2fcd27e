package relay

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fuzzSources are the client addresses FuzzSession picks from: one that
// may relay by address, and two that may only after AUTH.
var fuzzSources = []netip.Addr{
	netip.MustParseAddr("127.0.0.1"),
	netip.MustParseAddr("192.0.2.1"),
	netip.MustParseAddr("2001:db8::1"),
}

var (
	replyLineRe = regexp.MustCompile(`^([2-5])([0-9]{2})([ -])(.*)$`)
	enhancedRe  = regexp.MustCompile(`^([245])\.[0-9]{1,3}\.[0-9]{1,3}( |$)`)
)

// FuzzSession feeds arbitrary client input to a whole SMTP session (over
// in-memory pipes) and checks, whatever the input:
//
//   - no panic (go-smtp would turn one into "421 4.0.0 Internal server
//     error");
//   - every reply line is well formed: CRLF-terminated, a code 2xx-5xx, no
//     control characters, the lines of a multi-line reply share the code,
//     and an enhanced code has the class of the basic code;
//   - one message in, one message out: as many messages are queued as
//     "250 … OK queued as" replies were sent, each with CRLF line endings
//     only;
//   - no open relay: from a source outside the allowed networks, nothing
//     is queued unless AUTH succeeded (a 235 reply);
//   - the server ends the session when the input ends (no hang).
func FuzzSession(f *testing.F) {
	f.Add([]byte("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"), uint8(0))
	f.Add([]byte("EHLO c\r\nAUTH PLAIN "+b64(goodPlain)+"\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n"), uint8(1))
	f.Add([]byte("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nhello\n.\nMAIL FROM:<e@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nevil\r\n.\r\n"), uint8(0))
	f.Add([]byte("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c%d@e.example>\r\nRCPT TO:<@x:c@d.example>\r\nBDAT 5\r\nab\rcdBDAT 2 LAST\r\n\n.\r\n"), uint8(0))
	f.Add([]byte("EHLO c\r\nAUTH LOGIN\r\n"+b64("app1")+"\r\n"+b64("x")+"\r\nAUTH PLAIN "+b64("\x00a\x00b")+"\r\nAUTH PLAIN =\r\nMAIL FROM:<a@b>\r\n"), uint8(2))
	f.Add([]byte("HELO c\r\nMAIL FROM:<> SIZE=99999999\r\nRCPT TO:<x@y@z>\r\nVRFY x\r\nSTARTTLS\r\n\x00\xff\r\nEHLO a\rb\r\nRSET\r\nNOOP\r\n"), uint8(1))
	f.Add([]byte("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n.\r\n"), uint8(0))

	q := &memQueue{}
	cfg := testConfig()
	cfg.Users = testUsers(f)
	cfg.MaxMessageSize = 4 << 10
	cfg.MaxRecipients = 3
	cfg.MaxHops = 2
	cfg.ReadTimeout = 5 * time.Second
	cfg.AuthFailuresPerSource = 1 << 30 // every input may try AUTH
	s := New(cfg, q, zerolog.Nop())
	l := servePipes(f, s, ListenerConfig{AllowInsecureAuth: true})

	f.Fuzz(func(t *testing.T, input []byte, from uint8) {
		q.mu.Lock()
		q.msgs = nil
		q.mu.Unlock()
		src := fuzzSources[int(from)%len(fuzzSources)]
		c := l.dial(t, src)
		defer c.Close()
		go func() {
			c.Write(input) // fails once the server has hung up: fine
			c.closeWrite()
		}()
		out := c.readAll(t, testTimeout)

		authed, err := checkTranscript(out)
		if err != nil {
			t.Fatalf("%v in:\n%q", err, out)
		}
		msgs := q.messages()
		if queued := bytes.Count(out, []byte(" OK queued as ")); queued != len(msgs) {
			t.Fatalf("%d messages queued, %d acknowledged:\n%s", len(msgs), queued, out)
		}
		if len(msgs) > 0 && !s.mayRelayFrom(src) && !authed {
			t.Fatalf("%d messages queued from %s without AUTH:\n%s", len(msgs), src, out)
		}
		for _, m := range msgs {
			checkCRLFOnly(t, m.body)
		}
	})
}

// checkTranscript checks every reply line of a session and reports
// whether AUTH succeeded in it.
func checkTranscript(out []byte) (authed bool, err error) {
	if len(out) == 0 {
		return false, errors.New("no greeting")
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		return false, fmt.Errorf("output does not end in CRLF: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n")
	if !strings.HasPrefix(lines[0], "220 relay.test ") {
		return false, fmt.Errorf("greeting %q", lines[0])
	}
	cont := "" // the code of the multi-line reply in progress
	for _, line := range lines {
		m := replyLineRe.FindStringSubmatch(line)
		if m == nil {
			return false, fmt.Errorf("malformed reply line %q", line)
		}
		if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return false, fmt.Errorf("control character in reply line %q", line)
		}
		code := m[1] + m[2]
		if cont != "" && code != cont {
			return false, fmt.Errorf("line %q inside a %s reply", line, cont)
		}
		if m[3] == "-" {
			cont = code
			continue
		}
		cont = ""
		if e := enhancedRe.FindStringSubmatch(m[4]); e != nil && m[1] != "3" && e[1] != m[1] {
			return false, fmt.Errorf("enhanced code class differs from the basic code: %q", line)
		}
		if strings.HasPrefix(line, "421 4.0.0") {
			return false, fmt.Errorf("the server panicked: %q", line)
		}
		if code == "235" {
			authed = true
		}
	}
	if cont != "" {
		return false, fmt.Errorf("multi-line %s reply never ended", cont)
	}
	return authed, nil
}

// TestFuzzSessionChecksCatchViolations makes sure the checks of
// FuzzSession can fail.
func TestFuzzSessionChecksCatchViolations(t *testing.T) {
	for _, b := range []string{
		"",
		"220 relay.test ESMTP\r\n250-a\r\n251 b\r\n",
		"220 relay.test ESMTP\r\n250 5.0.0 mismatch\r\n",
		"220 relay.test ESMTP\r\nhello\r\n",
		"220 relay.test ESMTP\r\n250 a\rb\r\n",
		"220 relay.test ESMTP\r\n421 4.0.0 Internal server error\r\n",
		"220 relay.test ESMTP\r\n250-open\r\n",
		"220 relay.test ESMTP\r\n250 no CRLF",
	} {
		if _, err := checkTranscript([]byte(b)); err == nil {
			t.Errorf("checkTranscript accepted %q", b)
		}
	}
	authed, err := checkTranscript([]byte("220 relay.test ESMTP\r\n250-a\r\n250 b\r\n235 2.0.0 Authentication succeeded\r\n"))
	if !authed || err != nil {
		t.Errorf("good transcript: %v, %v", authed, err)
	}
}
