package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"relayq/queued"
)

// receivedEnd returns the stored body after relay's Received header.
func afterReceived(t *testing.T, body []byte) []byte {
	t.Helper()
	_, rest, ok := bytes.Cut(body, []byte(" +0000\r\n"))
	if !ok {
		t.Fatalf("no Received header in %q", body)
	}
	return rest
}

// checkCRLFOnly fails if b has a CR not followed by LF or an LF not
// preceded by CR.
func checkCRLFOnly(t *testing.T, b []byte) {
	t.Helper()
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			t.Fatalf("bare CR or LF at %d in %q", i, b)
		}
	}
}

func TestBareLineEndingsBecomeCRLF(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: mixed\nX-A: 1\r\n\r\nlf\ncr\rcrcrlf\r\r\nend\r\n.\r\n")
	r.expect(250)
	got := afterReceived(t, q.only(t).body)
	want := "Subject: mixed\r\nX-A: 1\r\n\r\nlf\r\ncr\r\ncrcrlf\r\n\r\nend\r\n"
	if string(got) != want {
		t.Errorf("stored\n%q\nwant\n%q", got, want)
	}
}

// TestSmugglingPayloadsStayInOneMessage sends the end-of-data look-alikes of
// SMTP smuggling (bare LF or CR around a dot) followed by a second
// transaction's commands, inside one DATA. The relay must queue one message
// that holds the smuggled text as text, and its stored form, dot-stuffed
// for the next hop as an SMTP client does, must read back as that one
// message: nothing in it can end the next hop's DATA early.
func TestSmugglingPayloadsStayInOneMessage(t *testing.T) {
	payloads := map[string]string{
		`LF dot LF`:     "\n.\n",
		`LF dot CRLF`:   "\n.\r\n",
		`CRLF dot LF`:   "\r\n.\n",
		`CR dot CR`:     "\r.\r",
		`CR dot CRLF`:   "\r.\r\n",
		`CRLF dot CR`:   "\r\n.\r",
		`LF dot CR LF`:  "\n.\r\r\n",
		`CRLF dot LFCR`: "\r\n.\n\r",
	}
	const smuggled = "MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nwire money\r\n"
	for name, p := range payloads {
		t.Run(name, func(t *testing.T) {
			q := &memQueue{}
			_, addr := startServer(t, testConfig(), q)
			r := dialRaw(t, addr, "")
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			r.cmd("DATA", 354)
			r.send("Subject: smuggle\r\n\r\nhello" + p + smuggled + ".\r\n")
			r.expect(250)
			r.cmd("QUIT", 221) // the smuggled commands were not commands

			body := q.only(t).body
			checkCRLFOnly(t, body)
			if !bytes.Contains(body, []byte("wire money")) {
				t.Errorf("smuggled text missing from the one message: %q", body)
			}
			// Relay it on as the next hop's client would and read it back.
			var wire bytes.Buffer
			w := textproto.NewWriter(bufio.NewWriter(&wire)).DotWriter()
			if _, err := w.Write(body); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(&wire)
			back, err := io.ReadAll(textproto.NewReader(br).DotReader())
			if err != nil {
				t.Fatal(err)
			}
			// DotReader turns CRLF into LF; body has CRLF only (checked above).
			if want := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")); !bytes.Equal(back, want) {
				t.Errorf("next hop reads\n%q\nwant the whole message\n%q", back, want)
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("next hop sees %q after the end of data", rest)
			}
		})
	}
}

// streamQueue reads the body as a real queue does, chunk by chunk into a
// small buffer, and counts it. It signals started once it has read the
// first MiB, which a server that buffered the whole message first could
// only do after the client sent all of it.
type streamQueue struct {
	memQueue
	started chan struct{}
	n       atomic.Int64
	head    []byte // the first bytes, read before n is stored
}

func (q *streamQueue) Put(ctx context.Context, id queued.ID, env *queued.Envelope, body io.Reader) error {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, err := body.Read(buf)
		if len(q.head) < 1024 {
			q.head = append(q.head, buf[:min(m, 1024-len(q.head))]...)
		}
		n += int64(m)
		if n >= 1<<20 && n-int64(m) < 1<<20 {
			close(q.started)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	q.n.Store(n)
	env.Size = n
	return nil
}

func TestTenMegabyteMessageIsStreamedToTheQueue(t *testing.T) {
	const size = 10 << 20
	q := &streamQueue{started: make(chan struct{})}
	cfg := testConfig()
	cfg.MaxMessageSize = 2 * size
	_, addr := startServer(t, cfg, q)
	c := newClient(t, addr, "")
	if err := c.Mail("s@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := message(size)
	if _, err := io.WriteString(w, msg[:size/2]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.started:
	case <-time.After(testTimeout):
		t.Fatal("queue got no data while the client was half way: the body is not streamed")
	}
	if _, err := io.WriteString(w, msg[size/2:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	hdr := bytes.Index(q.head, []byte("Subject: sized"))
	if hdr <= 0 || !bytes.HasPrefix(q.head, []byte("Received: ")) {
		t.Fatalf("stored body starts %q", q.head)
	}
	if got := q.n.Load(); got != int64(size+hdr) {
		t.Errorf("queue read %d bytes, want %d", got, size+hdr)
	}
}

func TestStalledBodyGets451_4_4_2AndClose(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.ReadTimeout = 200 * time.Millisecond
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: stall\r\n\r\npart of a body\r\n") // and then nothing
	if msg := r.expect(451); !strings.HasPrefix(msg, "4.4.2 ") {
		t.Errorf("reply 451 %s, want 451 4.4.2", msg)
	}
	if _, err := r.tp.ReadLine(); !errors.Is(err, io.EOF) {
		t.Errorf("connection not closed after a stalled body: %v", err)
	}
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages queued from a stalled body", n)
	}
}

func TestSlowSteadyBodyOutlivesReadTimeout(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.ReadTimeout = 300 * time.Millisecond
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.cmd("DATA", 354)
	// 8 lines, one every 100ms: the body takes about 800ms, well over the
	// timeout, but never stalls for as long as it.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	r.send("Subject: slow\r\n\r\n")
	for range 8 {
		<-tick.C
		r.send("a slow line\r\n")
	}
	r.send(".\r\n")
	r.expect(250)
	if got := afterReceived(t, q.only(t).body); !bytes.HasSuffix(got, []byte(strings.Repeat("a slow line\r\n", 8))) {
		t.Errorf("stored %q", got)
	}
}

// go-smtp always offers CHUNKING; a BDAT body goes through the same reader.
func TestBDATBodyIsNormalisedAndChecked(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   int
	}{
		{"bare LF across chunks is normalised", []string{"Subject: b\n\nline\r", "\nlast\n"}, 250},
		{"hop limit applies", []string{strings.Repeat("Received: x\r\n", 31), "\r\nbody\r\n"}, 554},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &memQueue{}
			_, addr := startServer(t, testConfig(), q)
			r := dialRaw(t, addr, "")
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			code := 0
			for i, c := range tt.chunks {
				last := ""
				if i == len(tt.chunks)-1 {
					last = " LAST"
				}
				r.send(fmt.Sprintf("BDAT %d%s\r\n%s", len(c), last, c))
				if code, _ = r.reply(); code != 250 {
					break
				}
			}
			if code != tt.want {
				t.Fatalf("got %d, want %d", code, tt.want)
			}
			if code == 250 {
				if got := afterReceived(t, q.only(t).body); string(got) != "Subject: b\r\n\r\nline\r\nlast\r\n" {
					t.Errorf("stored %q", got)
				}
			} else if n := len(q.messages()); n != 0 {
				t.Errorf("%d messages queued", n)
			}
			r.cmd("NOOP", 250)
		})
	}
}

// TestRSETDuringBDATLeavesTheSessionUsable: RSET ends a BDAT transfer
// (RFC 3030 §3: the chunks sent are discarded); the session goes on, and
// the next transaction is accepted and queued alone. go-smtp ends the
// Data it runs for BDAT with ErrDataReset, which once read as a client
// gone away and made every later MAIL 451 4.4.2.
func TestRSETDuringBDATLeavesTheSessionUsable(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	r := dialRaw(t, addr, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	r.send("BDAT 9\r\nSubject: ")
	r.expect(250)
	r.cmd("RSET", 250)
	// The aborted Data ends in its own goroutine: some rounds give it time.
	for range 5 {
		r.cmd("MAIL FROM:<s@example.org>", 250)
		r.cmd("RSET", 250)
	}
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<x@example.com>", 250)
	const msg = "Subject: second\r\n\r\nbody\r\n"
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg), msg))
	r.expect(250)
	if got := afterReceived(t, q.only(t).body); string(got) != msg {
		t.Errorf("stored %q, want %q", got, msg)
	}
}

func TestBareLineEndingsRejectedWith550_5_5_2(t *testing.T) {
	payloads := map[string]string{
		"LF dot LF":   "hello\n.\nMAIL FROM:<e@x>\r\n",
		"LF dot CRLF": "hello\n.\r\nMAIL FROM:<e@x>\r\n",
		"CRLF dot LF": "hello\r\n.\nMAIL FROM:<e@x>\r\n",
		"CR dot CR":   "hello\r.\rMAIL FROM:<e@x>\r\n",
		"bare LF":     "a\nb\r\n",
	}
	for name, p := range payloads {
		t.Run(name, func(t *testing.T) {
			q := &memQueue{}
			cfg := testConfig()
			cfg.BareLineEndings = BareReject
			_, addr := startServer(t, cfg, q)
			r := dialRaw(t, addr, "")
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			r.cmd("DATA", 354)
			r.send("Subject: bare\r\n\r\n" + p + ".\r\n")
			if msg := r.expect(550); !strings.HasPrefix(msg, "5.5.2 ") {
				t.Errorf("reply 550 %s, want 550 5.5.2", msg)
			}
			if n := len(q.messages()); n != 0 {
				t.Errorf("%d messages queued", n)
			}
			// In step: a clean message goes through.
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			r.cmd("DATA", 354)
			r.send("Subject: clean\r\n\r\nok\r\n.\r\n")
			r.expect(250)
			q.only(t)
		})
	}
}
