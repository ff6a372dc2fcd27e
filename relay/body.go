package relay

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
	"relayq/queued"
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
//     are more than maxHops (RFC 5321 §6.3);
//   - finds the Message-ID and Subject fields in the header section
//     (headerscan.go) and, at the clean end of the body, sets them in env
//     if that is set (queue.Store.Put reads the envelope only after the
//     end of the body).
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
	hdr  headerScan
	env  *queued.Envelope // gets MessageID and Subject at the end; may be nil

	cr       bool // the last byte was a CR, its CRLF already written
	body     bool // past the header section
	lineLen  int  // bytes in the current line so far
	nameMode int  // how far the current line matches "received" (see feedName)

	buf   *bodyBuf // pooled: in and out are its, until release
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

// bodyBufs holds the buffers of finished bodyReaders: a new pair for every
// message would be ~100 KB of garbage per message however small it is.
var bodyBufs = sync.Pool{New: func() any {
	return &bodyBuf{in: make([]byte, bodyChunk), out: make([]byte, 0, 2*bodyChunk+2)}
}}

type bodyBuf struct{ in, out []byte }

// newBodyReader returns a reader of src's normalised body. Call release
// once it is no longer read.
func newBodyReader(src io.Reader, max int64, maxHops int, bare BareLineEndings) *bodyReader {
	buf := bodyBufs.Get().(*bodyBuf)
	return &bodyReader{
		src:     src,
		max:     max,
		maxHops: maxHops,
		reject:  bare == BareReject,
		buf:     buf,
		in:      buf.in,
		out:     buf.out[:0],
	}
}

// release hands r's buffers to the next bodyReader. Reply, Done and Size
// keep working; a Read fails.
func (r *bodyReader) release() {
	if r.buf == nil {
		return
	}
	r.buf.out = r.out[:0]
	bodyBufs.Put(r.buf)
	r.buf, r.in, r.out, r.off = nil, nil, nil, 0
	if r.err == nil {
		r.err = errReleased
	}
}

var errReleased = errors.New("relay: body reader used after release")

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
func (r *bodyReader) Reply() *smtpreply.Reply {
	reply, _ := r.err.(*smtpreply.Reply)
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
		r.hdr.scan(r.out)
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
		if r.env != nil {
			r.env.MessageID, r.env.Subject = r.hdr.MessageID(), r.hdr.Subject()
		}
	case err != nil:
		r.cause = err
		r.fail(srcError(err))
	}
}

// fail drops pending output and makes err sticky.
func (r *bodyReader) fail(err *smtpreply.Reply) {
	r.out, r.off = r.out[:0], 0
	r.err = err
}

// transform appends the normalised form of b to out. It fails with
// replyLoop when the hop limit is exceeded and, in reject mode, with
// replyBareLineEnding at a bare CR or LF.
//
// The header section goes byte by byte (it is short, and each byte feeds
// the Received match); the body section, where only line endings matter,
// goes by runs in transformBody.
func (r *bodyReader) transform(b []byte) *smtpreply.Reply {
	for i, c := range b {
		if r.body {
			return r.transformBody(b[i:])
		}
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

// transformBody is transform past the header section: it copies the runs
// between line breaks whole and writes CRLF for each CRLF, bare CR and bare
// LF, exactly as the byte loop of transform does. A CR at the end of b
// leaves r.cr set, so that an LF at the start of the next chunk is taken as
// the second half of its CRLF.
//
// The runs are found with the vectorised bytes.IndexByte: the next LF, then
// a CR before it. A body line ends in CRLF, so that is two fast scans per
// line instead of a step per byte. The LF found is kept until passed, so
// bare CRs cannot make the scan quadratic.
func (r *bodyReader) transformBody(b []byte) *smtpreply.Reply {
	pos, lf := 0, -1 // lf: the next LF at or after pos, len(b) if none
	for pos < len(b) {
		if r.cr {
			r.cr = false
			if b[pos] == '\n' {
				pos++ // the LF of a CRLF whose line break is written
				continue
			}
			if r.reject {
				return replyBareLineEnding // a CR not followed by LF
			}
		}
		if lf < pos {
			if lf = bytes.IndexByte(b[pos:], '\n'); lf < 0 {
				lf = len(b)
			} else {
				lf += pos
			}
		}
		end := lf // where the run ends: the first CR or LF, or len(b)
		if cr := bytes.IndexByte(b[pos:lf], '\r'); cr >= 0 {
			end = pos + cr
		}
		r.out = append(r.out, b[pos:end]...)
		r.lineLen += end - pos
		switch {
		case end == len(b):
			return nil
		case b[end] == '\n' && r.reject:
			return replyBareLineEnding
		case b[end] == '\n':
			pos = end + 1 // bare LF
		case end+1 < len(b) && b[end+1] == '\n':
			pos = end + 2 // CRLF, the common case
		default:
			r.cr = true // a bare CR, or a CR whose LF is in the next chunk
			pos = end + 1
		}
		r.endLine()
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
// Anything but go-smtp's two policy errors and the end of a BDAT transfer
// by the client means the client stalled past the read deadline or went
// away.
func srcError(err error) *smtpreply.Reply {
	switch err {
	case smtp.ErrDataTooLarge:
		// go-smtp's own budget, MaxMessageBytes, equals ours (see doc.go).
		return replyTooBig
	case smtp.ErrTooLongLine:
		return replyLineTooLong
	case smtp.ErrDataReset:
		return replyDataReset
	default:
		return replyStalled
	}
}
