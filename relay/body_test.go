package relay

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-smtp"
)

// chunked returns b at most k bytes per Read; with eofWithData the last
// Read returns io.EOF along with the data, as io.Reader allows.
type chunked struct {
	b           []byte
	k           int
	eofWithData bool
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.k)], c.b)
	c.b = c.b[n:]
	if c.eofWithData && len(c.b) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// normalise is the reference for bodyReader's output, written the obvious
// (several-pass) way.
func normalise(in []byte) []byte {
	s := bytes.ReplaceAll(in, []byte("\r\n"), []byte("\n"))
	s = bytes.ReplaceAll(s, []byte("\r"), []byte("\n"))
	if len(s) > 0 && s[len(s)-1] != '\n' {
		s = append(s, '\n')
	}
	return bytes.ReplaceAll(s, []byte("\n"), []byte("\r\n"))
}

var receivedField = regexp.MustCompile(`(?i)^received[ \t]*:`)

// countHops is the reference hop count of a normalised message: Received
// fields before the first empty line.
func countHops(norm []byte) int {
	n := 0
	for line := range strings.SplitSeq(string(norm), "\r\n") {
		if line == "" {
			break
		}
		if receivedField.MatchString(line) {
			n++
		}
	}
	return n
}

func TestBodyReaderNormalisesLineEndings(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"CRLF kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare LF", "a\nb\n", "a\r\nb\r\n"},
		{"bare CR", "a\rb\r", "a\r\nb\r\n"},
		{"CR CR LF is two line breaks", "a\r\r\nb\r\n", "a\r\n\r\nb\r\n"},
		{"LF CR is two line breaks", "a\n\rb", "a\r\n\r\nb\r\n"},
		{"unterminated last line gets CRLF", "a\r\nb", "a\r\nb\r\n"},
		{"empty stays empty", "", ""},
		{"smuggling LF dot LF", "x\n.\nMAIL", "x\r\n.\r\nMAIL\r\n"},
		{"smuggling CR dot CR", "x\r.\rMAIL", "x\r\n.\r\nMAIL\r\n"},
	}
	for _, tt := range tests {
		// Without a header section every line is a header line; behind one
		// the body's run-copying path does the work.
		for _, head := range []string{"", headSection} {
			for _, k := range []int{1, 2, 3, bodyChunk} {
				r := newBodyReader(&chunked{b: []byte(head + tt.in), k: k}, 0, 0, BareNormalize)
				got, err := io.ReadAll(r)
				if want := head + tt.want; err != nil || string(got) != want {
					t.Errorf("%s (chunks of %d, header %q): got %q, %v; want %q", tt.name, k, head, got, err, want)
				}
			}
		}
	}
}

// headSection is a header section with its empty line, to put the lines
// of a test in the body.
const headSection = "Subject: x\r\n\r\n"

func TestBodyReaderCopiesLongBodiesAcrossChunks(t *testing.T) {
	// Every line break kind, at every offset relative to the chunk size.
	var in, want strings.Builder
	in.WriteString(headSection)
	want.WriteString(headSection)
	for i := range 3000 {
		line := strings.Repeat("x", i%97)
		in.WriteString(line + [...]string{"\r\n", "\n", "\r", "\r\r\n"}[i%4])
		want.WriteString(line + [...]string{"\r\n", "\r\n", "\r\n", "\r\n\r\n"}[i%4])
	}
	in.WriteString(".last")
	want.WriteString(".last\r\n")
	for _, k := range []int{1, 7, 4096, bodyChunk, 1 << 20} {
		r := newBodyReader(&chunked{b: []byte(in.String()), k: k}, 0, 0, BareNormalize)
		got, err := io.ReadAll(r)
		if err != nil || string(got) != want.String() {
			t.Errorf("chunks of %d: %v, output differs from the reference: %t", k, err, string(got) != want.String())
		}
	}
}

func TestBodyReaderCountsReceivedInHeaderSection(t *testing.T) {
	tests := []struct {
		name string
		in   string
		hops int
	}{
		{"plain", "Received: a\r\nReceived: b\r\nSubject: x\r\n\r\n", 2},
		{"case and space before colon", "RECEIVED : a\r\nreceived\t: b\r\n\r\n", 2},
		{"continuation line is not a field", "X-A: 1\r\n Received: a\r\n\r\n", 0},
		{"longer name is not Received", "Received-SPF: pass\r\nReceivedx: a\r\n\r\n", 0},
		{"body does not count", "Subject: x\r\n\r\nReceived: a\r\n", 0},
		{"bare LF ends the header section too", "Received: a\n\nReceived: b\n", 1},
		{"no body: every line is header", "Received: a\r\nReceived: b", 2},
	}
	for _, tt := range tests {
		for _, max := range []int{tt.hops, tt.hops - 1} {
			r := newBodyReader(iotest.OneByteReader(strings.NewReader(tt.in)), 0, max, BareNormalize)
			_, err := io.ReadAll(r)
			wantLoop := max > 0 && tt.hops > max
			if wantLoop != (err == replyLoop) || !wantLoop && err != nil {
				t.Errorf("%s, MaxHops %d: err %v, want loop %v", tt.name, max, err, wantLoop)
			}
		}
	}
}

func TestBodyReaderSizeLimitCountsClientOctets(t *testing.T) {
	in := strings.Repeat("line\n", 20) // 100 octets, 120 once normalised
	tests := []struct {
		max     int64
		wantErr error
	}{
		{100, nil},
		{99, replyTooBig},
		{0, nil}, // no limit
	}
	for _, tt := range tests {
		r := newBodyReader(&chunked{b: []byte(in), k: 7}, tt.max, 0, BareNormalize)
		got, err := io.ReadAll(r)
		if err != tt.wantErr {
			t.Errorf("max %d: err %v, want %v", tt.max, err, tt.wantErr)
		}
		if err == nil && (len(got) != 120 || r.Size() != 100) {
			t.Errorf("max %d: %d bytes out, size %d; want 120, 100", tt.max, len(got), r.Size())
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestBodyReaderMapsSourceErrors(t *testing.T) {
	tests := []struct {
		name string
		src  error
		want error
	}{
		{"go-smtp size limit", smtp.ErrDataTooLarge, replyTooBig},
		{"go-smtp line limit", smtp.ErrTooLongLine, replyLineTooLong},
		{"read deadline", os.ErrDeadlineExceeded, replyStalled},
		{"net timeout", timeoutErr{}, replyStalled},
		{"client went away", io.ErrUnexpectedEOF, replyStalled},
		{"RSET during BDAT", smtp.ErrDataReset, replyDataReset},
	}
	for _, tt := range tests {
		src := io.MultiReader(strings.NewReader("Subject: x\r\n"), iotest.ErrReader(tt.src))
		r := newBodyReader(src, 0, 0, BareNormalize)
		_, err := io.ReadAll(r)
		if err != tt.want || r.Reply() != tt.want {
			t.Errorf("%s: err %v, Reply() %v; want %v", tt.name, err, r.Reply(), tt.want)
		}
		if _, again := r.Read(make([]byte, 8)); again != tt.want {
			t.Errorf("%s: error is not sticky: %v", tt.name, again)
		}
		if r.cause != tt.src {
			t.Errorf("%s: cause %v, want %v", tt.name, r.cause, tt.src)
		}
	}
}

// FuzzBodyReader checks the streaming transformer against the several-pass
// reference: only CRLF line endings come out, output is the normalised
// input (or a prefix of it when the reader fails), and it fails exactly
// when the input is over the size limit or has too many Received fields.
func FuzzBodyReader(f *testing.F) {
	f.Add([]byte("Received: a\r\nSubject: x\r\n\r\nbody\r\n"), uint8(3), uint16(0), uint8(1))
	f.Add([]byte("x\n.\nMAIL FROM:<a@b>\r\n"), uint8(1), uint16(10), uint8(0))
	f.Add([]byte("a\r\r\n\r.\r\n.\n"), uint8(2), uint16(0), uint8(0))
	// chunk: bits 0-5 the read size - 1, bit 6 reject mode, bit 7 EOF with
	// the last data.
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, max uint16, maxHops uint8) {
		src := &chunked{b: in, k: int(chunk%64) + 1, eofWithData: chunk&0x80 != 0}
		mode := BareNormalize
		if chunk&0x40 != 0 {
			mode = BareReject
		}
		r := newBodyReader(src, int64(max), int(maxHops), mode)
		out, err := io.ReadAll(r)
		checkCRLFOnly(t, out)

		ref := normalise(in)
		tooBig := max > 0 && len(in) > int(max)
		loop := maxHops > 0 && countHops(ref) > int(maxHops)
		bare := hasBareLineEnding(in)
		switch err {
		case nil:
			if tooBig || loop {
				t.Fatalf("accepted: %d octets (max %d), %d hops (max %d)", len(in), max, countHops(ref), maxHops)
			}
			if mode == BareReject && bare {
				t.Fatalf("reject mode accepted a bare CR or LF in %q", in)
			}
			if !bytes.Equal(out, ref) {
				t.Fatalf("output\n%q\nwant\n%q", out, ref)
			}
			if r.Size() != int64(len(in)) {
				t.Fatalf("Size %d, want %d", r.Size(), len(in))
			}
		case replyTooBig:
			if !tooBig {
				t.Fatalf("too big at %d octets, max %d", len(in), max)
			}
		case replyLoop:
			if !loop {
				t.Fatalf("loop at %d hops, max %d", countHops(ref), maxHops)
			}
		case replyBareLineEnding:
			if mode != BareReject || !bare {
				t.Fatalf("bare line ending refused in mode %v of %q", mode, in)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if !bytes.HasPrefix(ref, out) {
			t.Fatalf("output %q is not a prefix of %q", out, ref)
		}
	})
}

// hasBareLineEnding reports whether b has a CR not followed by LF or an LF
// not preceded by CR.
func hasBareLineEnding(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func TestBodyReaderRejectMode(t *testing.T) {
	tests := []struct {
		name, in string
		refused  bool
	}{
		{"CRLF only passes", "a\r\nb\r\n", false},
		{"unterminated last line passes", "a\r\nb", false},
		{"bare LF", "a\nb\r\n", true},
		{"bare CR", "a\rb\r\n", true},
		{"CR CR LF", "a\r\r\n", true},
		{"LF first", "\nx", true},
		{"trailing bare CR", "a\r\nb\r", true},
		{"smuggling LF dot LF", "x\r\n\n.\nMAIL\r\n", true},
		{"smuggling CR dot CR", "x\r.\rMAIL\r\n", true},
	}
	for _, tt := range tests {
		for _, head := range []string{"", headSection} {
			for _, k := range []int{1, 2, 3, bodyChunk} {
				r := newBodyReader(&chunked{b: []byte(head + tt.in), k: k}, 0, 0, BareReject)
				_, err := io.ReadAll(r)
				if tt.refused && err != replyBareLineEnding || !tt.refused && err != nil {
					t.Errorf("%s (chunks of %d, header %q): err %v, refused want %v", tt.name, k, head, err, tt.refused)
				}
			}
		}
	}
}

func TestBodyReaderAfterReleaseKeepsItsResultsAndFailsReads(t *testing.T) {
	r := newBodyReader(strings.NewReader("Subject: x\r\n\r\nhi\r\n"), 0, 0, BareNormalize)
	if _, err := io.ReadAll(r); err != nil {
		t.Fatal(err)
	}
	r.release()
	r.release() // twice is harmless
	if !r.Done() || r.Reply() != nil || r.Size() != 18 {
		t.Errorf("after release: Done %v, Reply %v, Size %d", r.Done(), r.Reply(), r.Size())
	}
	if n, err := r.Read(make([]byte, 8)); n != 0 || err == nil {
		t.Errorf("Read after release: %d, %v", n, err)
	}

	unread := newBodyReader(strings.NewReader("x\r\n"), 0, 0, BareNormalize)
	unread.release()
	if n, err := unread.Read(make([]byte, 8)); n != 0 || err != errReleased {
		t.Errorf("Read of an unread body after release: %d, %v", n, err)
	}
}
