package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// refDecode is go-smtp's dataReader state machine (data.go, from
// net/textproto, CRLF kept), byte by byte, with its lineLimitReader's count
// over the bytes consumed: what fastData must agree with. It returns the
// body, what follows the end-of-data line, and io.EOF,
// smtp.ErrTooLongLine or io.ErrUnexpectedEOF.
func refDecode(in []byte) (body, rest []byte, err error) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	state, lineLen := beginLine, 1
	for i, c := range in {
		if c == '\n' {
			lineLen = 0
		}
		lineLen++
		if lineLen > fastLineLimit {
			return body, nil, smtp.ErrTooLongLine
		}
		switch state {
		case beginLine:
			if c == '.' {
				state = dot
				continue
			}
			if c == '\r' {
				state = cr
				break
			}
			state = data
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			if c == '\n' {
				return body, in[i+1:], io.EOF
			}
			state = data
		case cr:
			if c == '\n' {
				state = beginLine
				break
			}
			state = data
		case data:
			if c == '\r' {
				state = cr
			}
		}
		body = append(body, c)
	}
	return body, nil, io.ErrUnexpectedEOF
}

// fastDecode runs in through a fastData over a net.Pipe, written in pieces
// of chunk bytes and read with reads of readSize, and returns what the
// reference returns, the rest being what the trackedConn then gives go-smtp.
func fastDecode(t testing.TB, in []byte, chunk, readSize int) (body, rest []byte, err error) {
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		defer client.Close()
		for p := in; len(p) > 0; {
			n := min(chunk, len(p))
			if _, err := client.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
	}()
	_ = server.SetDeadline(time.Now().Add(testTimeout))
	tc := &trackedConn{Conn: server, fastState: fastArmed}
	r := tc.takeFast(0)
	buf := make([]byte, readSize)
	for range len(in) + 2 {
		n, rerr := r.Read(buf)
		body = append(body, buf[:n]...)
		if rerr != nil {
			err = rerr
			break
		}
	}
	if err == io.EOF {
		// What the trackedConn now hands go-smtp: ".\r\n", then the
		// bytes after the body that it had read.
		var got []byte
		for tc.fastState != fastOff {
			n, rerr := tc.Read(buf)
			if rerr != nil {
				t.Fatalf("read after the body: %v", rerr)
			}
			got = append(got, buf[:n]...)
		}
		if !bytes.HasPrefix(got, []byte(".\r\n")) {
			t.Fatalf("after the body go-smtp got %q, want it to start with .\\r\\n", got)
		}
		rest = got[3:]
		// The pipe still holds what the reads did not take.
		_ = server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		more, _ := io.ReadAll(server)
		rest = append(rest, more...)
	}
	if errors.Is(err, io.ErrClosedPipe) {
		err = io.ErrUnexpectedEOF
	}
	return body, rest, err
}

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

func TestFastDataDecodesLikeGoSMTP(t *testing.T) {
	for i, in := range fastCases {
		for _, chunk := range []int{1, 2, 7, 1 << 20} {
			for _, readSize := range []int{1, 3, 4096} {
				if len(in) > 10000 && (chunk < 7 || readSize < 4096) {
					continue // byte-sized steps over 40 KB add nothing but time
				}
				t.Run(fmt.Sprintf("%d/chunk%d/read%d", i, chunk, readSize), func(t *testing.T) {
					checkAgainstRef(t, []byte(in), chunk, readSize)
				})
			}
		}
	}
}

func checkAgainstRef(t *testing.T, in []byte, chunk, readSize int) {
	t.Helper()
	wantBody, wantRest, wantErr := refDecode(in)
	body, rest, err := fastDecode(t, in, chunk, readSize)
	if err != wantErr {
		t.Fatalf("error %v, want %v", err, wantErr)
	}
	if !bytes.Equal(body, wantBody) && wantErr == io.EOF {
		t.Fatalf("body\n%q\nwant\n%q", body, wantBody)
	}
	if !bytes.HasPrefix(wantBody, body) {
		t.Fatalf("body before the error\n%q\nis not a prefix of\n%q", body, wantBody)
	}
	if wantErr == io.EOF && !bytes.Equal(rest, wantRest) {
		t.Fatalf("after the body go-smtp got %q, want %q", rest, wantRest)
	}
}

func FuzzFastData(f *testing.F) {
	for _, c := range fastCases {
		f.Add([]byte(c), uint8(5))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		checkAgainstRef(t, in, int(chunk%64)+1, 4096)
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
// so: go-smtp checks line lengths per socket read, and refuses the DATA
// command itself when the body came in the same read.)
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
