package smtpreply

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// FuzzReadReply: the reply reader reads what net/textproto's ReadResponse
// (go-smtp's reader) reads, the same code and text, except that it also
// takes a line of only a code (RFC 5321 §4.2) and wants every line ended.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 2.1.0 ok\r\n",
		"250-first\r\n250-second\r\n250 last\r\n",
		"550-5.1.1 no\r\n550 5.1.1 such user\r\n",
		"354 go on\n",
		"250-a\r\nnot a reply line\r\n251 other code\r\n250 end\r\n",
		"25 short\r\n",
		"abc def\r\n",
		"250\r\n",
		"250-x\r\n250\r\n250 y\r\n",
		"421 4.3.0 closing\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 8<<10 {
			return // textproto's joining of many lines is quadratic
		}
		code, msg, err := Read(bufio.NewReaderSize(bytes.NewReader(data), 16))
		wcode, wmsg, werr := textproto.NewReader(bufio.NewReader(bytes.NewReader(data))).ReadResponse(0)
		for _, l := range strings.Split(string(data), "\n") {
			if len(strings.TrimSuffix(l, "\r")) == 3 {
				return // a line of only a code: textproto refuses it
			}
		}
		switch {
		case err == nil && (werr != nil || code != wcode || msg != wmsg):
			t.Fatalf("read %d %q, textproto %d %q %v", code, msg, wcode, wmsg, werr)
		case err != nil && werr == nil && !errors.Is(err, io.EOF) && len(data) < MaxLine:
			t.Fatalf("refused (%v) what textproto reads as %d %q", err, wcode, wmsg)
		}
	})
}

// TestReplyReaderBoundsWhatItHolds: a reply line or a reply longer than
// any server sends is refused, not held: the session is then broken.
func TestReplyReaderBoundsWhatItHolds(t *testing.T) {
	line := "250-" + strings.Repeat("x", 1000) + "\r\n"
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"a long line within the bound", "250 " + strings.Repeat("x", MaxLine-8) + "\r\n", true},
		{"a line over the bound", "250 " + strings.Repeat("x", MaxLine) + "\r\n", false},
		{"many lines within the bound", strings.Repeat(line, MaxReply/len(line)-1) + "250 end\r\n", true},
		{"many lines over the bound", strings.Repeat(line, MaxReply/len(line)+1) + "250 end\r\n", false},
	}
	for _, tt := range tests {
		code, _, err := Read(bufio.NewReaderSize(strings.NewReader(tt.in), 4<<10))
		var pe textproto.ProtocolError
		switch {
		case tt.ok && (err != nil || code != 250):
			t.Errorf("%s: %d, %v", tt.name, code, err)
		case !tt.ok && !errors.As(err, &pe):
			t.Errorf("%s: %d, %v; want a protocol error", tt.name, code, err)
		}
	}
}
