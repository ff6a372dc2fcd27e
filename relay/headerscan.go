package relay

import (
	"bytes"
	"io"
	"mime"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/encoding/htmlindex"
)

// Limits of headerScan.
const (
	// headerScanMax is how many bytes of a message headerScan looks at: a
	// Message-ID or Subject further on is not seen (a header section is a
	// few KiB; RFC 5322 sets no limit).
	headerScanMax = 64 << 10
	// maxMessageID is the longest Message-ID kept, the line limit of RFC
	// 5322 §2.1.1; a longer one is garbage and not kept at all.
	maxMessageID = 998
	// maxMessageIDRaw is how much of the Message-ID field as sent is
	// kept: the longest Message-ID and some white space around it.
	maxMessageIDRaw = maxMessageID + 64
	// maxSubjectRaw is how much of the Subject field as sent is kept for
	// decoding: RFC 2047 encoded words take up to 3 bytes per byte of text.
	maxSubjectRaw = 2048
	// MaxSubject is the longest Subject kept, in bytes of UTF-8.
	MaxSubject = 200
)

// headerScan finds the Message-ID and Subject fields of a message as its
// bytes stream past (scan), holding nothing but those two values: it looks
// at the header section only, up to its end at the first empty line (RFC
// 5322 §2.1) or headerScanMax bytes, whichever comes first. Field names
// match case-insensitively, with WSP allowed before the colon (the
// obsolete syntax of RFC 5322 §4.5.3); a folded field is unfolded by
// dropping its line breaks (§2.2.3). The first occurrence of each field
// counts. CRs are ignored, so that CRLF and bare LF lines both work.
type headerScan struct {
	seen  int  // bytes looked at
	done  bool // the header section ended, or headerScanMax was reached
	state int  // stLineStart…stValue: what the next byte of the line is
	// name and pos: the field name the current line may start with, and
	// how much of it has matched.
	name string
	pos  int
	// cur is the value being kept: the current line's field, or the one
	// a continuation line goes on; nil when none is.
	cur     *[]byte
	lineLen int // bytes of the current line so far; 0: none but CRs

	messageID, subject []byte
	gotMID, gotSubj    bool // the first occurrence was taken
}

const (
	stLineStart = iota
	stName      // matching the field name
	stSkip      // the rest of the line is of no interest
	stValue     // keeping the line's bytes in cur
)

const (
	fieldMessageID = "message-id"
	fieldSubject   = "subject"
)

// scan looks at the next bytes of the message. The bytes of a line that
// is skipped or kept go by runs up to the next LF (bytes.IndexByte); only
// the first bytes of a line, its field name, go one at a time.
func (h *headerScan) scan(b []byte) {
	if h.done {
		return
	}
	if left := headerScanMax - h.seen; len(b) > left {
		b = b[:left]
		defer h.finish()
	}
	h.seen += len(b)
	for i := 0; i < len(b) && !h.done; {
		c := b[i]
		switch {
		case c == '\n':
			h.endLine()
			i++
		case c == '\r':
			i++
		case h.state == stLineStart && (c == ' ' || c == '\t'):
			// A continuation: of the value kept, if one is; the run
			// below takes the WSP too (RFC 5322 §2.2.3 unfolding keeps
			// it).
			h.state = stSkip
			if h.cur != nil {
				h.state = stValue
			}
		case h.state == stSkip || h.state == stValue:
			end := bytes.IndexByte(b[i:], '\n')
			if end < 0 {
				end = len(b)
			} else {
				end += i
			}
			if h.state == stValue {
				h.keep(b[i:end])
			}
			h.lineLen += end - i
			i = end
		case h.state == stLineStart:
			h.lineLen++
			h.startField(c)
			i++
		default: // stName
			h.lineLen++
			h.matchName(c)
			i++
		}
	}
}

// endLine ends a line: the header section, if the line was empty.
func (h *headerScan) endLine() {
	if h.lineLen == 0 {
		h.finish()
		return
	}
	h.lineLen, h.state = 0, stLineStart
}

// startField takes the first byte c of a line that starts a field: the
// value kept so far is complete, and the field name is matched.
func (h *headerScan) startField(c byte) {
	h.cur, h.state = nil, stSkip
	switch c | 0x20 {
	case fieldMessageID[0]:
		if !h.gotMID {
			h.name, h.pos, h.state = fieldMessageID, 1, stName
		}
	case fieldSubject[0]:
		if !h.gotSubj {
			h.name, h.pos, h.state = fieldSubject, 1, stName
		}
	}
}

// matchName advances the match of the line against h.name *WSP ":" and,
// at the colon, starts keeping the value.
func (h *headerScan) matchName(c byte) {
	switch {
	case h.pos < len(h.name):
		if c|0x20 == h.name[h.pos] {
			h.pos++
			return
		}
		h.state = stSkip
	case c == ' ' || c == '\t':
	case c == ':':
		h.state = stValue
		if h.name == fieldMessageID {
			h.cur, h.gotMID = &h.messageID, true
		} else {
			h.cur, h.gotSubj = &h.subject, true
		}
	default:
		h.state = stSkip
	}
}

// keep appends run, without its CRs, to the value being kept, up to its
// limit; a Message-ID over its limit is dropped whole (MessageID).
func (h *headerScan) keep(run []byte) {
	limit := maxSubjectRaw
	if h.cur == &h.messageID {
		limit = maxMessageIDRaw + 1 // one more: over the limit
	}
	for len(run) > 0 && len(*h.cur) < limit {
		part := run[:min(len(run), limit-len(*h.cur))]
		run = run[len(part):]
		for len(part) > 0 {
			k := bytes.IndexByte(part, '\r')
			if k < 0 {
				*h.cur = append(*h.cur, part...)
				break
			}
			*h.cur = append(*h.cur, part[:k]...)
			part = part[k+1:]
		}
	}
}

func (h *headerScan) finish() {
	h.done, h.cur = true, nil
}

// MessageID returns the Message-ID field's value without surrounding
// white space or control characters, "" when the message had none (or
// one longer than a line may be).
func (h *headerScan) MessageID() string {
	id := strings.TrimSpace(string(h.messageID))
	if len(id) > maxMessageID {
		return ""
	}
	return displayText(id, maxMessageID)
}

// Subject returns the Subject field's value for display: RFC 2047 encoded
// words decoded (in any charset the WHATWG Encoding Standard names; a word
// in another is left as sent), control characters dropped (tabs become
// spaces), invalid UTF-8 replaced, white space trimmed, and cut to
// MaxSubject bytes at a character boundary.
func (h *headerScan) Subject() string {
	s := string(h.subject)
	if strings.Contains(s, "=?") {
		if dec, err := subjectDecoder.DecodeHeader(s); err == nil {
			s = dec
		}
	}
	return displayText(s, MaxSubject)
}

var subjectDecoder = &mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
	enc, err := htmlindex.Get(charset)
	if err != nil {
		return nil, err
	}
	return enc.NewDecoder().Reader(input), nil
}}

// displayText makes s safe to show in a terminal or a log line: valid
// UTF-8, no control characters (C0, DEL, C1) nor bidirectional formatting
// characters that could reorder what follows, tabs as spaces, trimmed, at
// most max bytes.
func displayText(s string, max int) string {
	if printableASCII(s) {
		return cut(strings.TrimSpace(s), max)
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\t':
			return ' '
		case unicode.Is(unicode.Cc, r), unicode.Is(unicode.Bidi_Control, r):
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	return cut(strings.TrimSpace(s), max)
}

// printableASCII reports whether s is only printable ASCII and spaces,
// which displayText leaves as they are (the common case).
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// cut cuts the trimmed UTF-8 s to at most max bytes at a character
// boundary.
func cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	n := max
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.TrimSpace(s[:n])
}
