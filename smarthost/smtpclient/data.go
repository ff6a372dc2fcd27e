package smtpclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"time"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// The body of DATA is written here in large chunks, not through a
// net/textproto dotWriter (go-smtp's), which goes byte by byte through a
// 4 KiB bufio.Writer: for a large message that was most of the CPU of a
// delivery and one write syscall per 4 KiB.
//
// After the 354, writeBody writes the dot-stuffed body to the connection
// (the TLS connection when TLS is on), holding back the CRLF that ends the
// last line, and ends it with "\r\n.\r\n", which ends the last line and
// the data (RFC 5321 §4.1.1.4), in the same write as the last chunk: when
// that chunk is small it is left, ended, in Conn.out, for the transaction
// (pipeline.go) to write, and then to read the reply.
// The bytes on the wire are those go-smtp would have sent for a CRLF-only
// body.

const (
	// bodyChunk is how much of the body is read at a time: the queue's
	// chunk size, so one read takes one stored chunk. The body is never
	// held whole (memory does not grow with message size).
	bodyChunk = 64 << 10
	// maxHeld bounds the end of a body that is left in Conn.out (copied)
	// to go out with whatever the transaction writes next; a longer one is
	// written, ended, from the body buffer.
	maxHeld = 4 << 10
)

// bodyBufs holds the buffers of writeBody between messages: allocating
// them per message would make ~200 KB of garbage per message, however
// small.
var bodyBufs = sync.Pool{New: func() any {
	return &bodyBuf{in: make([]byte, bodyChunk), out: make([]byte, 0, 2*bodyChunk+2)}
}}

type bodyBuf struct{ in, out []byte }

// endOfData ends the body's last line and the data.
const endOfData = "\r\n.\r\n"

// writeBody writes r dot-stuffed to the connection after a 354, ended by
// "\r\n.\r\n" (see above), except that it leaves the last chunk and the
// ending in c.out when that chunk is at most maxHeld bytes: the caller
// then writes c.out. Each write has its own deadline (RFC
// 5321 §4.5.3.2.5: a timeout per chunk sent, not for the whole body). It
// returns nil, or the reply that breaks the connection.
func (c *Conn) writeBody(ctx context.Context, r io.Reader) *smtpreply.Reply {
	buf := bodyBufs.Get().(*bodyBuf)
	defer bodyBufs.Put(buf)
	enc := dotStuffer{out: buf.out[:0]}
	c.out = c.out[:0]
	// Each encoded chunk is written once the next read has shown that it
	// is not the last, so that the last one can go out with the final ".".
	var pending []byte
	write := func(p []byte) *smtpreply.Reply {
		_ = c.raw.SetWriteDeadline(time.Now().Add(c.timeout))
		if _, err := c.wire.Write(p); err != nil {
			return c.reply(ctx.Err(), retry.StageBody, err)
		}
		return nil
	}
	for {
		n, rerr := r.Read(buf.in)
		if n > 0 {
			if len(pending) > 0 {
				if rep := write(pending); rep != nil {
					return rep
				}
			}
			pending = enc.encode(buf.in[:n])
		}
		if rerr == io.EOF {
			if len(pending) <= maxHeld {
				c.out = append(append(c.out, pending...), endOfData...)
				return nil
			}
			// One write for the last chunk and the end: a syscall fewer per
			// large message (appending may grow pending in the worst case).
			return write(append(pending, endOfData...))
		}
		if rerr != nil {
			// The only way to abort DATA without delivering a truncated
			// message is to drop the connection (RFC 5321 §4.1.1.4 has no
			// abort). The fault is ours: 451 4.3.0, not the next hop's.
			c.broken = true
			c.raw.Close()
			if ctx.Err() != nil {
				return retry.FromError(retry.StageBody, ctx.Err())
			}
			return localReply(451, 4, 3, 0, "reading the queued message: "+rerr.Error())
		}
	}
}

// dotStuffer encodes a message body for DATA in chunks: every line break
// (CRLF, and also a bare CR or bare LF) becomes CRLF, and a line that starts
// with "." gets another "." in front (RFC 5321 §4.5.2). Stored bodies have
// CRLF line endings only (relay normalises them), but the encoding does
// not rely on it: a bare CR or LF cannot carry a line starting with "."
// past the stuffing, nor make a "\r\n.\r\n" that ends the data early at the
// next hop (SMTP smuggling).
//
// The CRLF that ends the last line is held back: encode keeps a trailing
// CRLF for the start of the next chunk's output, and at the end of the body
// it is left to the "\r\n.\r\n" that ends the data.
type dotStuffer struct {
	mid  bool   // in the middle of a line: a "." is not at a line start
	cr   bool   // the last byte was a CR, its CRLF already written
	held bool   // a CRLF is held back from the last chunk's output
	out  []byte // reused for every chunk
}

// encode returns the encoding of the next chunk b of the body, without a
// CRLF at its end. The result is valid until the next call.
func (d *dotStuffer) encode(b []byte) []byte {
	d.out = d.out[:0]
	if d.held {
		d.out = append(d.out, '\r', '\n')
		d.held = false
	}
	pos, lf := 0, -1 // lf: the next LF at or after pos, len(b) if none
	for pos < len(b) {
		if d.cr {
			d.cr = false
			if b[pos] == '\n' {
				pos++ // the LF of a CRLF whose line break is written
				continue
			}
		}
		if !d.mid && b[pos] == '.' {
			d.out = append(d.out, '.')
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
		d.out = append(d.out, b[pos:end]...)
		if end == len(b) {
			d.mid = true
			break
		}
		d.out = append(d.out, '\r', '\n')
		d.mid = false
		switch {
		case b[end] == '\n':
			pos = end + 1 // bare LF
		case end+1 < len(b) && b[end+1] == '\n':
			pos = end + 2 // CRLF, the common case
		default:
			d.cr = true // a bare CR, or a CR whose LF is in the next chunk
			pos = end + 1
		}
	}
	if !d.mid && len(d.out) >= 2 {
		d.out = d.out[:len(d.out)-2]
		d.held = true
	}
	return d.out
}

// replayConn is the connection the session is read and written through.
// It hands go-smtp's client the greeting that startTLS already read (the
// client insists on reading a 220 first and cannot be told that the
// session is greeted).
type replayConn struct {
	net.Conn
	pending []byte // read before the client's reads
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
