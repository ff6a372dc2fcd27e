package relay

import (
	"bytes"
	"io"
	"sync"

	"github.com/emersion/go-smtp"
)

// The DATA fast path.
//
// go-smtp reads a DATA body through two byte-at-a-time loops: its
// dataReader takes the body one bufio.ReadByte at a time to undo the dot
// stuffing, and its lineLimitReader looks at every byte for the line
// length. At 100 KiB per message they were half of relayq's CPU (make
// bench). On a plaintext connection, trackedConn can read the body itself,
// by runs (bytes.IndexByte), with the same decoding and the same limits,
// and hand go-smtp an empty body in its place:
//
//  1. trackedConn hands go-smtp the client's bytes up to and including
//     each DATA command line, never past one in the same read (dataScan):
//     what followed it stays in trackedConn (pending). So when go-smtp
//     answers a DATA, it holds no unread byte after that line. (go-smtp
//     reads commands by lines, the lines dataScan follows. Only a BDAT
//     chunk can end inside a line, and go-smtp never answers a DATA that
//     follows a chunk directly with 354: the transfer is still open, 502,
//     or it ended with the transaction.)
//  2. go-smtp writes "354 …" through trackedConn.Write. If the last bytes
//     handed to go-smtp ended with a DATA line and nothing after it has
//     been read from the socket, every byte of the body is still in the
//     socket: trackedConn arms the fast path. Otherwise — a client that
//     sent (part of) the body before the 354, not allowed by RFC 2920
//     §3.1 but done, or a TLS connection, whose bytes trackedConn sees
//     encrypted — it does not, and go-smtp reads the body as usual,
//     pending first.
//  3. session.Data takes the armed fastData (takeFast) and reads the body
//     from it instead of go-smtp's reader.
//  4. Once fastData has read the end-of-data line, trackedConn's next reads
//     give go-smtp ".\r\n" — an empty body, which its dataReader ends at
//     once — and then whatever the client sent after the body (a
//     pipelined QUIT). If Data stopped reading early (a refused body),
//     go-smtp's drain of its reader makes trackedConn read the rest of the
//     body to its end first, as go-smtp's own drain would.
//
// fastData decodes exactly as go-smtp's dataReader (taken from
// net/textproto, keeping CRLF): a "." at the start of a line (after CRLF,
// or at the start of the data) is dropped; ".\r\n" there ends the data; a
// bare CR or LF does not start a line. It fails with go-smtp's errors: the
// input line length limit (smtp.ErrTooLongLine, counted like go-smtp's
// lineLimitReader) and the message size (smtp.ErrDataTooLarge once more
// than max bytes were decoded; exactly max and then the end-of-data line
// is a whole message). Reads of the socket go through
// trackedConn's sliding deadline. TestFastDataReadsLikeGoSMTP and
// FuzzFastData hold relay to this against a real go-smtp server.

// fastArmed and the other states of trackedConn's fast path.
const (
	fastOff    = iota // no fast path: reads pass through
	fastArmed         // a 354 was written with nothing of the body read
	fastActive        // session.Data reads the body from fastData
)

// fastChunk is how much of the socket fastData reads at a time.
const fastChunk = 32 << 10

// fastLineLimit is go-smtp's default Server.MaxLineLength, which relay
// keeps for commands.
const fastLineLimit = 2000

var fastBufs = sync.Pool{New: func() any { b := make([]byte, fastChunk); return &b }}

// dataScan follows the lines of the client's bytes as they are handed to
// go-smtp, to find the DATA command lines among them. A DATA command line
// is what go-smtp reads as the command DATA with no argument: "DATA" in
// any case, then only CRs, then LF (its reader drops the line ending and
// its parser trailing CRs). Each line is looked at up to where it stops
// matching, so a run of ordinary lines costs one IndexByte per line.
type dataScan struct {
	n     int  // bytes of the current line so far (while it may match)
	other bool // the current line is not a DATA line
	// afterData: the last byte scanned ended a DATA line.
	afterData bool
}

// dataLineEnd scans b, the next bytes for go-smtp, and returns the end of
// the first DATA line that ends in it (the index after its LF), or -1 when
// none does; then all of b was scanned, else b up to that end.
func (s *dataScan) dataLineEnd(b []byte) int {
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		end := len(b)
		if j >= 0 {
			end = i + j
		}
		for _, c := range b[i:end] {
			if s.other {
				break
			}
			if s.n < len(dataWord) {
				s.other = c|0x20 != dataWord[s.n]
			} else {
				s.other = c != '\r'
			}
			s.n++
		}
		if j < 0 {
			s.afterData = false
			return -1
		}
		s.afterData = !s.other && s.n >= len(dataWord)
		s.n, s.other = 0, false
		if s.afterData {
			return end + 1
		}
		i = end + 1
	}
	return -1
}

// dataWord is the DATA command, lower case.
const dataWord = "data"

// fastData reads one DATA body from a trackedConn's socket.
type fastData struct {
	c       *trackedConn
	bufp    *[]byte
	raw     []byte // read from the socket, not yet consumed: raw[off:]
	off     int
	state   int   // go-smtp's dataReader state, below
	lineLen int   // as go-smtp's lineLimitReader counts
	limited bool  // max applies (go-smtp lifts it for its drain)
	max     int64 // bytes that may still be decoded
	err     error // sticky; io.EOF after the end-of-data line
}

// The states of go-smtp's dataReader.
const (
	stBeginLine = iota // at the start of a line; the initial state
	stDot              // read "." at the start of a line
	stDotCR            // read ".\r" at the start of a line
	stCR               // read "\r"
	stData             // in the middle of a line
)

func newFastData(c *trackedConn, max int64) *fastData {
	bufp := fastBufs.Get().(*[]byte)
	// The DATA line's LF counts as the first byte of the next line, as in
	// go-smtp's lineLimitReader.
	return &fastData{c: c, bufp: bufp, lineLen: 1, limited: max > 0, max: max}
}

// Read decodes the body into p.
func (f *fastData) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.limited {
		if f.max <= 0 {
			return 0, f.atLimit()
		}
		if int64(len(p)) > f.max {
			p = p[:f.max]
		}
	}
	n := 0
	for n < len(p) && f.err == nil {
		if f.off == len(f.raw) {
			if n > 0 {
				break // give what there is before blocking on the socket
			}
			m, err := f.c.readRaw((*f.bufp)[:fastChunk])
			f.raw, f.off = (*f.bufp)[:m], 0
			if m == 0 {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				f.err = err
				break
			}
		}
		n += f.decode(p[n:])
	}
	if f.limited {
		f.max -= int64(n)
	}
	if n > 0 && f.err != nil && f.err != io.EOF {
		return n, nil // the error comes with the next Read
	}
	return n, f.err
}

// atLimit is Read once max bytes have been decoded: a message of exactly
// max octets is within the limit (RFC 1870 §4), so the end-of-data line
// may still follow, at the start of a line; anything else is
// smtp.ErrDataTooLarge. go-smtp's reader, as relayq builds it
// (third_party/go-smtp), decides the same on the same bytes.
func (f *fastData) atLimit() error {
	f.err = smtp.ErrDataTooLarge
	if f.state == stBeginLine && string(f.peek(3)) == ".\r\n" {
		f.off += 3
		f.err = io.EOF
	}
	return f.err
}

// peek returns the next n bytes of the socket without consuming them,
// fewer if the socket fails first.
func (f *fastData) peek(n int) []byte {
	for len(f.raw)-f.off < n {
		buf := (*f.bufp)[:fastChunk]
		kept := copy(buf, f.raw[f.off:])
		m, err := f.c.readRaw(buf[kept:])
		f.raw, f.off = buf[:kept+m], 0
		if m == 0 && err != nil {
			break
		}
	}
	return f.raw[f.off:min(len(f.raw), f.off+n)]
}

// decode moves bytes from raw to dst and returns how many it wrote. It
// sets err to io.EOF at the end-of-data line and to ErrTooLongLine.
func (f *fastData) decode(dst []byte) int {
	n := 0
	for n < len(dst) && f.off < len(f.raw) {
		src := f.raw[f.off:]
		if f.state == stData {
			// The bulk: a run up to the next CR, which is the only byte
			// that can change the state; with the CRLF that usually ends
			// it, when both are there, the run ends a line (stBeginLine).
			run, next := src, stData
			if i := bytes.IndexByte(src, '\r'); i >= 0 {
				run = src[:i]
				if i+1 < len(src) && src[i+1] == '\n' && i+2 <= len(dst)-n {
					run, next = src[:i+2], stBeginLine
				}
			}
			run = run[:min(len(run), len(dst)-n)]
			if len(run) > 0 {
				if !f.count(run) {
					return n
				}
				n += copy(dst[n:], run)
				f.off += len(run)
				f.state = next
				continue
			}
		}
		c := src[0]
		if !f.count(src[:1]) {
			return n
		}
		f.off++
		emit := true
		switch f.state {
		case stBeginLine:
			switch c {
			case '.':
				f.state, emit = stDot, false
			case '\r':
				f.state = stCR
			default:
				f.state = stData
			}
		case stDot:
			if c == '\r' {
				f.state, emit = stDotCR, false
			} else {
				f.state = stData
			}
		case stDotCR:
			if c == '\n' {
				f.err = io.EOF
				return n
			}
			f.state = stData
		case stCR:
			if c == '\n' {
				f.state = stBeginLine
			} else {
				f.state = stData
			}
		case stData:
			f.state = stCR // c is the CR the run stopped at
		}
		if emit {
			dst[n] = c
			n++
		}
	}
	return n
}

// count adds the consumed bytes b to the line length as go-smtp's
// lineLimitReader does (an LF starts the count again at 1) and fails with
// ErrTooLongLine beyond the limit.
func (f *fastData) count(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			f.lineLen += len(b)
			break
		}
		if f.lineLen+i > fastLineLimit {
			f.lineLen += i
			break
		}
		f.lineLen, b = 1, b[i+1:]
	}
	if f.lineLen > fastLineLimit {
		f.err = smtp.ErrTooLongLine
		return false
	}
	return true
}

// drain reads the rest of the body, without the size limit (go-smtp lifts
// it for its own drain), and returns the error that ended it, io.EOF at a
// clean end.
func (f *fastData) drain() error {
	f.limited = false
	var scratch [4096]byte
	for {
		if _, err := f.Read(scratch[:]); err != nil {
			if err == smtp.ErrDataTooLarge {
				// Set by a Read before the drain; the body goes on.
				f.err = nil
				continue
			}
			return err
		}
	}
}

// rest returns what the client sent after the body, and gives the buffer
// back. f is done with after it.
func (f *fastData) rest() []byte {
	out := append([]byte(".\r\n"), f.raw[f.off:]...)
	fastBufs.Put(f.bufp)
	f.bufp, f.raw, f.off = nil, nil, 0
	return out
}
