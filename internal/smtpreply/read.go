package smtpreply

import (
	"bufio"
	"errors"
	"fmt"
	"net/textproto"
	"strings"
)

// MaxLine and MaxReply bound what one reply may make a reader hold:
// RFC 5321 §4.5.3.1.5 allows 512 bytes a line; servers send longer ones,
// never this long.
const (
	MaxLine  = 16 << 10
	MaxReply = 64 << 10
)

// Read reads one reply, the lines of a multi-line one joined with
// "\n" without their codes, as net/textproto's ReadResponse does (a
// continuation line with another code, or malformed, is kept whole). A
// reply line of only the code is taken too (RFC 5321 §4.2: the text is
// optional). An error is an I/O error or a *textproto.ProtocolError: no
// reply, the session is out of step.
func Read(br *bufio.Reader) (code int, msg string, err error) {
	line, err := readLine(br)
	if err != nil {
		return 0, "", err
	}
	code, more, text, err := splitLine(line)
	if err != nil {
		return 0, "", err
	}
	if !more {
		return code, text, nil
	}
	var b strings.Builder
	b.WriteString(text)
	for more {
		if line, err = readLine(br); err != nil {
			return 0, "", err
		}
		code2, more2, text2, perr := splitLine(line)
		if perr != nil || code2 != code {
			text2, more2 = line, true
		}
		if b.Len()+1+len(text2) > MaxReply {
			return 0, "", textproto.ProtocolError(fmt.Sprintf("reply longer than %d bytes", MaxReply))
		}
		b.WriteByte('\n')
		b.WriteString(text2)
		more = more2
	}
	return code, b.String(), nil
}

// readLine reads one line without its CRLF (or LF), at most MaxLine
// bytes.
func readLine(br *bufio.Reader) (string, error) {
	var long []byte
	for {
		frag, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if len(long)+len(frag) > MaxLine+2 { // +2: the CRLF
			return "", textproto.ProtocolError(fmt.Sprintf("reply line longer than %d bytes", MaxLine))
		}
		if err != nil { // the buffer is full: the line goes on
			long = append(long, frag...)
			continue
		}
		frag = frag[:len(frag)-1]
		if len(long) > 0 {
			frag = append(long, frag...)
		}
		if n := len(frag); n > 0 && frag[n-1] == '\r' {
			frag = frag[:n-1]
		}
		return string(frag), nil
	}
}

// splitLine splits "250-text" or "250 text" (or "250") into the code,
// whether more lines follow and the text; the errors are net/textproto's.
func splitLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' && line[3] != '-' {
		return 0, false, "", textproto.ProtocolError("short response: " + line)
	}
	for i := range 3 {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", textproto.ProtocolError("invalid response code: " + line)
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if code < 100 {
		return 0, false, "", textproto.ProtocolError("invalid response code: " + line)
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	return code, line[3] == '-', line[4:], nil
}
