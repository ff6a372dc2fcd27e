package relay

import (
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/retry"
)

// bodyChunk is how much of the client's data bodyReader takes per read; its
// output is at most twice that plus one line break.
const bodyChunk = 32 << 10

// bodyReader is the one streaming pass over a message body between go-smtp
// and the queue. Per input byte it
//
//   - turns a bare LF and a bare CR into CRLF, so the stored message has only
//     CRLF line endings and nothing in it can end the DATA of a later hop
//     early (SMTP smuggling; RFC 5321 §2.3.8 allows no other line ending);
//     with BareReject it fails with replyBareLineEnding at the first one
//     instead;
//   - counts the octets the client sent and fails with replyTooBig once they
//     exceed max (RFC 1870: CRs it inserts are not the client's octets);
//   - counts "Received:" fields in the header section, which ends at the
//     first empty line (RFC 5322 §2.1), and fails with replyLoop once there
//     are more than maxHops (RFC 5321 §6.3).
//
// A last line without a line break gets one. Errors are sticky: after one,
// every Read returns it, so the queue cannot commit a partial body.
type bodyReader struct {
	src     io.Reader
	max     int64 // octets allowed from src; <= 0: no limit
	maxHops int   // Received fields allowed; <= 0: no limit
	reject  bool  // a bare CR or LF fails the body

	n    int64 // octets read from src
	hops int

	cr       bool // the last byte was a CR, its CRLF already written
	body     bool // past the header section
	lineLen  int  // bytes in the current line so far
	nameMode int  // how far the current line matches "received" (see feedName)

	in    []byte
	out   []byte    // transformed, not yet returned
	off   int       // out[off:] is pending
	err   error     // sticky; io.EOF at the end
	cause error     // what src returned, when that caused err
	ended time.Time // when src reached its end: the client's final "."
}

const (
	nameNo      = -1        // the line is not a Received field
	nameColon   = len(rcvd) // "received" seen, only WSP then ':' may follow
	nameCounted = nameColon + 1
	rcvd        = "received" // RFC 5322 §3.6.7 field name, case-insensitive
)

func newBodyReader(src io.Reader, max int64, maxHops int, bare BareLineEndings) *bodyReader {
	return &bodyReader{
		src:     src,
		max:     max,
		maxHops: maxHops,
		reject:  bare == BareReject,
		in:      make([]byte, bodyChunk),
		out:     make([]byte, 0, 2*bodyChunk+2),
	}
}

// Read implements io.Reader.
func (r *bodyReader) Read(p []byte) (int, error) {
	for r.off == len(r.out) {
		if r.err != nil {
			return 0, r.err
		}
		r.fill()
	}
	n := copy(p, r.out[r.off:])
	r.off += n
	return n, nil
}

// Reply returns the reply for the failure that ended the body: nil while it
// is still being read and after a clean end.
func (r *bodyReader) Reply() *retry.Reply {
	reply, _ := r.err.(*retry.Reply)
	return reply
}

// Done reports whether the body was read to its end without error.
func (r *bodyReader) Done() bool { return r.err == io.EOF }

// Size is the number of octets read from the client so far.
func (r *bodyReader) Size() int64 { return r.n }

// fill reads one chunk from src and transforms it into out.
func (r *bodyReader) fill() {
	r.out, r.off = r.out[:0], 0
	n, err := r.src.Read(r.in)
	if n > 0 {
		r.n += int64(n)
		if r.max > 0 && r.n > r.max {
			r.fail(replyTooBig)
			return
		}
		if reply := r.transform(r.in[:n]); reply != nil {
			r.fail(reply)
			return
		}
	}
	switch {
	case err == io.EOF && r.cr && r.reject:
		r.fail(replyBareLineEnding) // the body ends in a bare CR
	case err == io.EOF:
		if r.lineLen > 0 {
			r.out = append(r.out, '\r', '\n')
		}
		r.err = io.EOF
		r.ended = time.Now()
	case err != nil:
		r.cause = err
		r.fail(srcError(err))
	}
}

// fail drops pending output and makes err sticky.
func (r *bodyReader) fail(err *retry.Reply) {
	r.out, r.off = r.out[:0], 0
	r.err = err
}

// transform appends the normalised form of b to out. It fails with
// replyLoop when the hop limit is exceeded and, in reject mode, with
// replyBareLineEnding at a bare CR or LF.
func (r *bodyReader) transform(b []byte) *retry.Reply {
	for _, c := range b {
		if r.cr {
			r.cr = false
			if c == '\n' {
				continue // the LF of a CRLF whose line break is written
			}
			if r.reject {
				return replyBareLineEnding // a CR not followed by LF
			}
		}
		switch c {
		case '\r':
			r.cr = true
			r.endLine()
		case '\n':
			if r.reject {
				return replyBareLineEnding
			}
			r.endLine() // bare LF
		default:
			r.out = append(r.out, c)
			if !r.body && !r.feedName(c) {
				return replyLoop
			}
			r.lineLen++
		}
	}
	return nil
}

// endLine writes CRLF and notes where the header section ends.
func (r *bodyReader) endLine() {
	r.out = append(r.out, '\r', '\n')
	if r.lineLen == 0 {
		r.body = true
	}
	r.lineLen, r.nameMode = 0, 0
}

// feedName advances the match of the line against `received *WSP ":"`
// (RFC 5322 §4.5.3 obsolete syntax allows WSP before the colon) and counts a
// Received field at its colon. It returns false when that is one too many.
func (r *bodyReader) feedName(c byte) bool {
	switch {
	case r.nameMode == nameNo || r.nameMode == nameCounted:
	case r.nameMode < nameColon:
		if c|0x20 == rcvd[r.nameMode] {
			r.nameMode++
		} else {
			r.nameMode = nameNo
		}
	case c == ' ' || c == '\t':
	case c == ':':
		r.nameMode = nameCounted
		r.hops++
		return r.maxHops <= 0 || r.hops <= r.maxHops
	default:
		r.nameMode = nameNo
	}
	return true
}

// srcError maps a failure reading the client's data to the reply for it.
// Anything but go-smtp's two policy errors means the client stalled past
// the read deadline or went away.
func srcError(err error) *retry.Reply {
	switch err {
	case smtp.ErrDataTooLarge:
		// go-smtp's own budget, MaxMessageBytes, equals ours (see doc.go).
		return replyTooBig
	case smtp.ErrTooLongLine:
		return replyLineTooLong
	default:
		return replyStalled
	}
}
