package relay

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

var fastCases = []string{
	"Subject: x\r\n\r\nhello\r\n.\r\n",
	".\r\n",
	"..leading dot\r\n...two\r\n.\r\n",
	".\rX quirk: the CR after a line-start dot is dropped\r\n.\r\n",
	"bare\nLF\n.\nstill body\r\n.\r\n",
	"bare\rCR\r.\rstill\r\n.\r\n",
	"cr cr lf\r\r\n.\r\n",
	"\r\n.\r\nQUIT\r\n",
	"body\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
	"ends with no end",
	"dot then eof\r\n.",
	strings.Repeat("x", 1997) + "\r\n.\r\n",
	strings.Repeat("x", 1998) + "\r\n.\r\n",
	"short\r\n" + strings.Repeat("y", 2500) + "\r\n.\r\n",
	strings.Repeat("line of text\r\n", 3000) + ".\r\nNOOP\r\n",
}

// issueBody is a body whose first part ends with a line that reads DATA:
// sent with the DATA command in one segment, it once made the fast path
// take the rest for the whole body.
const (
	issueHead = "Subject: x\r\n\r\nline1\r\nDATA\r\n"
	issueBody = issueHead + "tail\r\n.\r\n"
)

func TestFastDataReadsLikeGoSMTP(t *testing.T) {
	cases := append(fastCases, issueBody, "DATA\r\n.\r\n", "data\r\r\n.\r\n")
	for i, in := range cases {
		for _, chunk := range []int{1, 7, 1 << 20} {
			if len(in) > 10000 && chunk < 7 {
				continue // byte-sized steps over 40 KB add nothing but time
			}
			for _, split := range splitPoints(in) {
				for _, withBody := range []bool{false, true} {
					r := dataRun{in: []byte(in), split: split, chunk: chunk, withBody: withBody, limit: 1 << 20}
					t.Run(fmt.Sprintf("%d/chunk%d/split%d/with%v", i, chunk, split, withBody), func(t *testing.T) {
						checkFastAgainstGoSMTP(t, r, true)
					})
				}
			}
		}
	}
}

// splitPoints are where the first body segment ends: nothing, after each
// line that reads DATA (a segment boundary there is what once fooled the
// fast path), and one byte in.
func splitPoints(in string) []int {
	points := []int{0}
	for i := 0; ; {
		j := strings.Index(strings.ToUpper(in[i:]), "DATA\r\n")
		if j < 0 {
			break
		}
		i += j + len("DATA\r\n")
		points = append(points, i)
	}
	if len(in) > 1 {
		points = append(points, 1)
	}
	return points
}

// FuzzFastData sends a body (in) in segments that end at split and then
// every chunk bytes, with DATA alone or with the first segment, under a
// size limit (0: 1 MiB), and compares what relay queues and replies with
// go-smtp's reading of the same segments. The corpus in testdata holds a
// DATA line at a segment boundary and bodies at and over the limit.
func FuzzFastData(f *testing.F) {
	for _, c := range fastCases {
		f.Add([]byte(c), uint16(0), uint8(5), uint16(0), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint16, chunk uint8, limit uint16, withBody bool) {
		r := dataRun{
			in:       in,
			split:    int(split) % (len(in) + 1),
			chunk:    int(chunk%64) + 1,
			withBody: withBody,
			limit:    int64(limit),
		}
		if r.limit == 0 {
			r.limit = 1 << 20
		}
		checkFastAgainstGoSMTP(t, r, false)
	})
}

// dialSession opens a session to addr up to an accepted RCPT.
func dialSession(t *testing.T, addr string) (*textproto.Conn, net.Conn) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	tp := textproto.NewConn(nc)
	expect(t, tp, 220)
	send(t, tp, "EHLO client.test")
	expect(t, tp, 250)
	envelope(t, tp)
	return tp, nc
}

// envelope gives MAIL FROM and RCPT TO and expects both to be accepted.
func envelope(t *testing.T, tp *textproto.Conn) {
	t.Helper()
	send(t, tp, "MAIL FROM:<a@example.org>")
	expect(t, tp, 250)
	send(t, tp, "RCPT TO:<b@example.net>")
	expect(t, tp, 250)
}

func send(t *testing.T, tp *textproto.Conn, line string) {
	t.Helper()
	if err := tp.PrintfLine("%s", line); err != nil {
		t.Fatal(err)
	}
}

func expect(t *testing.T, tp *textproto.Conn, code int) string {
	t.Helper()
	_, msg, err := tp.ReadResponse(code)
	if err != nil {
		t.Fatalf("want %d: %v", code, err)
	}
	return msg
}

// TestFastPathStoresWhatGoSMTPWould sends each body twice: in lock step
// (DATA, wait for 354, then the body: the fast path) and with the body
// written together with DATA (go-smtp reads it itself), and compares what
// was queued and the replies. (A line over the limit cannot be compared
// so: go-smtp checks line lengths per socket read and fails the whole read
// that holds an over-long line, which may hold the end of the body too.)
func TestFastPathStoresWhatGoSMTPWould(t *testing.T) {
	bodies := []string{
		"Subject: a\r\n\r\nplain\r\n",
		"Subject: b\r\n\r\n..dot\r\n.\rquirk\r\nbare\nLF and \rCR\r\n",
		"Subject: c\r\n\r\n" + strings.Repeat("0123456789 .0123456789\r\n.", 5000) + "\r\n",
		"Subject: d\r\n\r\n" + strings.Repeat("z", 1990) + "\r\n",
	}
	for i, b := range bodies {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			q := &memQueue{}
			srv, addr := startServer(t, testConfig(), q)
			wire := dotStuff(b) + ".\r\n"

			tp, nc := dialSession(t, addr)
			send(t, tp, "DATA")
			expect(t, tp, 354)
			if _, err := io.WriteString(nc, wire); err != nil {
				t.Fatal(err)
			}
			fastCode, _, fastErr := tp.ReadResponse(0)
			if got := srv.fastBodies.Load(); got != 1 {
				t.Fatalf("fast bodies %d after a lock-step DATA, want 1", got)
			}

			tp2, nc2 := dialSession(t, addr)
			if _, err := io.WriteString(nc2, "DATA\r\n"+wire); err != nil {
				t.Fatal(err)
			}
			expect(t, tp2, 354)
			slowCode, _, slowErr := tp2.ReadResponse(0)
			if got := srv.fastBodies.Load(); got != 1 {
				t.Fatalf("fast bodies %d after a body sent with DATA, want still 1", got)
			}
			if fastCode != slowCode {
				t.Fatalf("fast path replied %d (%v), go-smtp's path %d (%v)", fastCode, fastErr, slowCode, slowErr)
			}
			msgs := q.messages()
			if fastCode != 250 {
				if len(msgs) != 0 {
					t.Fatalf("%d messages queued after %d", len(msgs), fastCode)
				}
				return
			}
			if len(msgs) != 2 {
				t.Fatalf("%d messages queued, want 2", len(msgs))
			}
			if a, b := afterReceived(t, msgs[0].body), afterReceived(t, msgs[1].body); !bytes.Equal(a, b) {
				t.Fatalf("fast path stored\n%.300q\ngo-smtp's path\n%.300q", a, b)
			}
		})
	}
}

// dotStuff is the DATA wire form of a CRLF body (RFC 5321 §4.5.2).
func dotStuff(b string) string {
	lines := strings.SplitAfter(b, "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") {
			lines[i] = "." + l
		}
	}
	return strings.Join(lines, "")
}

func TestFastPathKeepsPipelinedCommandsAfterTheBody(t *testing.T) {
	q := &memQueue{}
	srv, addr := startServer(t, testConfig(), q)
	tp, nc := dialSession(t, addr)
	for round := range 3 {
		send(t, tp, "DATA")
		expect(t, tp, 354)
		// The body, and the next transaction up to its DATA, in one write:
		// go-smtp must see those commands, and the fast path must arm
		// again for the next body.
		next := "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
		if _, err := io.WriteString(nc, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n.\r\n%s", round, next)); err != nil {
			t.Fatal(err)
		}
		expect(t, tp, 250)
		expect(t, tp, 250)
		expect(t, tp, 250)
	}
	send(t, tp, "RSET")
	expect(t, tp, 250)
	send(t, tp, "QUIT")
	expect(t, tp, 221)
	if got := len(q.messages()); got != 3 {
		t.Fatalf("%d messages queued, want 3", got)
	}
	if got := srv.fastBodies.Load(); got != 3 {
		t.Fatalf("fast bodies %d, want 3", got)
	}
	for i, m := range q.messages() {
		if want := fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i); string(afterReceived(t, m.body)) != want {
			t.Fatalf("message %d: %q, want %q", i, afterReceived(t, m.body), want)
		}
	}
}

func TestFastPathRefusedBodyIsDrainedAndTheSessionGoesOn(t *testing.T) {
	q := &memQueue{}
	cfg := testConfig()
	cfg.MaxMessageSize = 1000
	srv, addr := startServer(t, cfg, q)
	tp, nc := dialSession(t, addr)
	send(t, tp, "DATA")
	expect(t, tp, 354)
	w := bufio.NewWriter(nc)
	fmt.Fprintf(w, "Subject: big\r\n\r\n")
	for range 200 {
		fmt.Fprintf(w, "%s\r\n", strings.Repeat("b", 70))
	}
	fmt.Fprintf(w, ".\r\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg := expect(t, tp, 552); !strings.Contains(msg, "5.3.4") {
		t.Fatalf("552 without 5.3.4: %q", msg)
	}
	envelope(t, tp)
	send(t, tp, "DATA")
	expect(t, tp, 354)
	if _, err := io.WriteString(nc, "Subject: small\r\n\r\nok\r\n.\r\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, tp, 250)
	if got := srv.fastBodies.Load(); got != 2 {
		t.Fatalf("fast bodies %d, want 2", got)
	}
	if m := q.only(t); string(afterReceived(t, m.body)) != "Subject: small\r\n\r\nok\r\n" {
		t.Fatalf("queued %q", m.body)
	}
}

func TestFastPathTooLongLineClosesTheConnection(t *testing.T) {
	q := &memQueue{}
	srv, addr := startServer(t, testConfig(), q)
	tp, nc := dialSession(t, addr)
	send(t, tp, "DATA")
	expect(t, tp, 354)
	if _, err := io.WriteString(nc, "Subject: x\r\n\r\n"+strings.Repeat("L", 5000)+"\r\n.\r\n"); err != nil {
		t.Fatal(err)
	}
	code, msg, _ := tp.ReadResponse(0)
	if code/100 != 5 {
		t.Fatalf("a 5000-byte line got %d %s, want a 5xx", code, msg)
	}
	if srv.fastBodies.Load() != 1 {
		t.Fatal("the body did not go through the fast path")
	}
	_ = nc.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := tp.ReadLine(); err == nil {
		// go-smtp may say 500 5.4.0 before closing; then the close.
		if _, err := tp.ReadLine(); err == nil {
			t.Fatal("the connection stayed open after a too-long line")
		}
	}
	if n := len(q.messages()); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
}

// BenchmarkFastDataDecode decodes a 100 KiB body of 80-byte lines, the
// shape smtp-source sends in `make bench`.
func BenchmarkFastDataDecode(b *testing.B) {
	var sb strings.Builder
	for sb.Len() < 100<<10 {
		sb.WriteString(strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 2) + "ABCDEFGH\r\n")
	}
	sb.WriteString(".\r\n")
	in := []byte(sb.String())
	dst := make([]byte, 64<<10)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		f := &fastData{raw: in, lineLen: 1}
		for f.err == nil {
			f.decode(dst)
		}
		if f.err != io.EOF {
			b.Fatal(f.err)
		}
	}
}

// TestBodySentWithDataEndingInADataLineIsStoredWhole is a client that
// sends the start of the body together with DATA, before the 354, in a
// segment that ends with a body line reading "DATA": go-smtp has read that
// part of the body, so the fast path must not take the rest from the
// socket as if it were the whole body.
func TestBodySentWithDataEndingInADataLineIsStoredWhole(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	tp, nc := dialSession(t, addr)
	if _, err := io.WriteString(nc, "DATA\r\n"+issueHead); err != nil {
		t.Fatal(err)
	}
	expect(t, tp, 354)
	if _, err := io.WriteString(nc, strings.TrimPrefix(issueBody, issueHead)); err != nil {
		t.Fatal(err)
	}
	expect(t, tp, 250)
	if got, want := string(afterReceived(t, q.only(t).body)), strings.TrimSuffix(issueBody, ".\r\n"); got != want {
		t.Fatalf("queued body %q, want %q", got, want)
	}
}
