package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"

	"relayq/internal/sink"
	"relayq/internal/smtptest"
)

// textprotoWire is the reference for what goes on the wire after the 354:
// the body with every line break made CRLF, written through net/textproto's
// DotWriter (what go-smtp's DataCommand uses) and closed.
func textprotoWire(body []byte) []byte {
	s := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
	s = bytes.ReplaceAll(s, []byte("\r"), []byte("\n"))
	s = bytes.ReplaceAll(s, []byte("\n"), []byte("\r\n"))
	var buf bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&buf))
	dw := w.DotWriter()
	dw.Write(s)
	dw.Close()
	return buf.Bytes()
}

// stuffedWire is what writeBody and the end of the data put on the wire
// when body is read in pieces of the given sizes (cycled; the last one
// repeats).
func stuffedWire(body []byte, sizes ...int) []byte {
	var d dotStuffer
	var wire []byte
	for i := 0; len(body) > 0; i++ {
		n := min(sizes[min(i, len(sizes)-1)], len(body))
		wire = append(wire, d.encode(body[:n])...)
		body = body[n:]
	}
	// What txn.body appends: the held CRLF and the ".".
	return append(wire, "\r\n.\r\n"...)
}

func TestDotStufferStuffsLineStartDotsAndEndsWithCRLFDot(t *testing.T) {
	tests := []struct{ name, body, wire string }{
		{"CRLF body", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"line starting with a dot", "a\r\n.b\r\n", "a\r\n..b\r\n.\r\n"},
		{"first line starting with a dot", ".a\r\n", "..a\r\n.\r\n"},
		{"line of two dots", "..\r\n", "...\r\n.\r\n"},
		{"body that is a lone dot line", ".\r\n", "..\r\n.\r\n"},
		{"CRLF dot CRLF inside", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"dot not at a line start", "a.b\r\n", "a.b\r\n.\r\n"},
		{"last line without CRLF gets one", "a\r\nb", "a\r\nb\r\n.\r\n"},
		{"last line a dot without CRLF", "a\r\n.", "a\r\n..\r\n.\r\n"},
		{"empty body is one empty line (as go-smtp sends it)", "", "\r\n.\r\n"},
		{"one empty line", "\r\n", "\r\n.\r\n"},
		{"bare LF dot is a line start", "x\n.\nMAIL", "x\r\n..\r\nMAIL\r\n.\r\n"},
		{"bare CR dot is a line start", "x\r.\rMAIL", "x\r\n..\r\nMAIL\r\n.\r\n"},
		{"trailing bare CR", "a\r", "a\r\n.\r\n"},
	}
	for _, tt := range tests {
		for _, k := range []int{1, 2, 3, bodyChunk} {
			got := stuffedWire([]byte(tt.body), k)
			if string(got) != tt.wire {
				t.Errorf("%s (pieces of %d): wire %q, want %q", tt.name, k, got, tt.wire)
			}
		}
		if ref := textprotoWire([]byte(tt.body)); string(ref) != tt.wire {
			t.Errorf("%s: the test's want %q differs from textproto's %q", tt.name, tt.wire, ref)
		}
	}
}

// FuzzDotStuffer checks the chunked encoder against textproto's DotWriter
// (over the body with its line breaks made CRLF), and that the next hop's
// reading of the wire (textproto's DotReader, as go-smtp's server reads
// DATA) gives back the body, whatever the input and however it is split.
func FuzzDotStuffer(f *testing.F) {
	f.Add([]byte("a\r\n.\r\n.b\r\n"), uint8(1), uint8(1))
	f.Add([]byte("x\n.\nMAIL\r\r\n.\r"), uint8(2), uint8(3))
	f.Add([]byte(".."), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, k1, k2 uint8) {
		got := stuffedWire(body, int(k1)+1, int(k2)+1)
		if want := textprotoWire(body); !bytes.Equal(got, want) {
			t.Fatalf("wire\n%q\nwant (textproto)\n%q", got, want)
		}
		read, err := io.ReadAll(textproto.NewReader(bufio.NewReader(bytes.NewReader(got))).DotReader())
		if err != nil {
			t.Fatal(err)
		}
		norm := bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\r"), []byte("\n"))
		if len(norm) == 0 || norm[len(norm)-1] != '\n' {
			norm = append(norm, '\n')
		}
		// DotReader turns CRLF into LF.
		if !bytes.Equal(read, norm) {
			t.Fatalf("the next hop reads\n%q\nwant\n%q", read, norm)
		}
	})
}

// piecesReader returns its data in reads of the given sizes, cycled.
type piecesReader struct {
	b     []byte
	sizes []int
	i     int
}

func (r *piecesReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.sizes[r.i%len(r.sizes)])], r.b)
	r.b, r.i = r.b[n:], r.i+1
	return n, nil
}

// dottedBody is a body of about size bytes whose lines start with ".",
// "..", or are ".", so that "\r\n." falls across every read boundary.
func dottedBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: dots\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%s%s\r\n", [...]string{".", "..", "", "x"}[i%4], strings.Repeat("y", i%7))
	}
	return b.Bytes()
}

func TestBodiesArriveByteIdenticalThroughARealSink(t *testing.T) {
	srvTLS, roots, err := sink.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	big := dottedBody(300 << 10)
	bodies := []struct {
		name   string
		body   []byte
		pieces []int
		want   []byte // nil: body
	}{
		{"lines starting with dots", []byte("Subject: x\r\n\r\n.a\r\n..b\r\n.\r\n...\r\nend\r\n"), []int{bodyChunk}, nil},
		{"final line without CRLF", []byte("Subject: x\r\n\r\nno end"), []int{bodyChunk}, []byte("Subject: x\r\n\r\nno end\r\n")},
		{"exactly a dot line", []byte(".\r\n"), []int{bodyChunk}, nil},
		{"empty body", nil, []int{bodyChunk}, []byte("\r\n")},
		{"large, whole chunks", big, []int{bodyChunk}, nil},
		{"large, reads split anywhere", big, []int{bodyChunk - 1, 1, 2, 3, 5, 7, 4096}, nil},
	}
	for _, mode := range []TLSMode{TLSNone, TLSStartTLS} {
		t.Run(string(mode), func(t *testing.T) {
			s := smtptest.StartSink(t, sink.Options{TLS: srvTLS})
			tg := target(s.Addr(), mode)
			tg.RootCAs = roots
			c := mustDial(t, tg) // every body on the one connection
			for _, b := range bodies {
				e := Envelope{From: "a@example.org", Rcpts: []string{"b@example.net"}, Size: int64(len(b.body))}
				res, err := c.Send(testCtx(t), e, &piecesReader{b: b.body, sizes: b.pieces})
				if err != nil {
					t.Fatalf("%s: %v", b.name, err)
				}
				checkResults(t, res, delivered())
			}
			msgs := s.Messages()
			if len(msgs) != len(bodies) {
				t.Fatalf("sink got %d messages, want %d", len(msgs), len(bodies))
			}
			for i, b := range bodies {
				want := b.want
				if want == nil {
					want = b.body
				}
				if !bytes.Equal(msgs[i].Data, want) {
					t.Errorf("%s: the sink got %d bytes that differ from the %d sent", b.name, len(msgs[i].Data), len(want))
				}
			}
		})
	}
}

// countingConn counts the writes to a real connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

type countingDialer struct{ writes atomic.Int64 }

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, writes: &d.writes}, nil
}

func TestSmallBodyGoesOutInOneWriteWithTheDot(t *testing.T) {
	s := smtptest.StartSink(t, sink.Options{})
	var d countingDialer
	c, err := Dial(testCtx(t), &d, target(s.Addr(), TLSNone), hello)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := dottedBody(1 << 10)
	for i := range 2 {
		before := d.writes.Load()
		res, err := c.Send(testCtx(t), env("b@example.net"), bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		checkResults(t, res, delivered())
		// MAIL, RCPT and DATA pipelined (the sink offers PIPELINING),
		// then the body and "." together.
		if n := d.writes.Load() - before; n != 2 {
			t.Errorf("message %d: %d writes, want 2", i, n)
		}
	}
	for i, m := range s.Messages() {
		if !bytes.Equal(m.Data, body) {
			t.Errorf("message %d differs from the body sent", i)
		}
	}
}
