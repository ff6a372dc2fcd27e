package faultproxy

import "bytes"

// event is what the scanner found at the end of the bytes it consumed.
type event int

const (
	evNone      event = iota
	evDataStart       // the DATA command line ended
	evMark            // the mark-th byte of this message's data
	evDataEnd         // the CRLF "." CRLF that ends the data
)

// endOfData ends a message's data (RFC 5321 §4.1.1.4). Its first CRLF is
// the end of the last line of data, or of the DATA command itself for an
// empty message.
const endOfData = "\r\n.\r\n"

// maxCommandLine bounds what the scanner keeps of a command line; only
// "DATA" matters.
const maxCommandLine = 64

// scanner follows the client's side of an SMTP session far enough to know
// whether a byte is command or message data, and where the data ends.
// It takes every DATA command to be accepted (a client sends DATA only
// after a recipient was), and does not follow BDAT (RFC 3030): the clients
// under test use DATA.
type scanner struct {
	mark   int64 // evMark after this many data bytes of a message; 0: never
	inData bool
	line   []byte // the command line so far
	data   int64  // data bytes of the current message so far
	match  int    // bytes of endOfData matched
}

// feed consumes p up to and including the byte at which the first event
// happens, and returns how many bytes that is and the event; evNone when
// it consumed all of p without one.
func (s *scanner) feed(p []byte) (int, event) {
	for i, b := range p {
		if !s.inData {
			if len(s.line) < maxCommandLine {
				s.line = append(s.line, b)
			}
			if b != '\n' {
				continue
			}
			cmd := bytes.TrimRight(s.line, "\r\n")
			s.line = s.line[:0]
			if bytes.EqualFold(cmd, []byte("DATA")) {
				// The client sends the data after the 354; it is the next
				// thing in its stream either way. The CRLF of the command
				// counts as the first of endOfData.
				s.inData, s.data, s.match = true, 0, 2
				return i + 1, evDataStart
			}
			continue
		}
		s.data++
		switch {
		case b == endOfData[s.match]:
			s.match++
		case b == '\r':
			s.match = 1
		default:
			s.match = 0
		}
		if s.match == len(endOfData) {
			s.inData, s.match = false, 0
			return i + 1, evDataEnd
		}
		if s.data == s.mark {
			return i + 1, evMark
		}
	}
	return len(p), evNone
}
