package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"strings"
	"time"
)

// readSendmailInput reads the message sendmail is given on r, with every
// line ending (LF, CRLF or a bare CR) made CRLF, as SMTP wants (RFC 5321
// §2.3.8). Unless ignoreDots (-i), a line holding only "." ends the input,
// as in sendmail. Input beyond max bytes is errTooBig.
func readSendmailInput(r io.Reader, ignoreDots bool, max int64) ([]byte, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, max+1), 64<<10)
	var out bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		content := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if !ignoreDots && string(content) == "." && len(content) < len(line) {
			break
		}
		if len(line) > 0 {
			out.Write(bytes.ReplaceAll(content, []byte("\r"), []byte("\r\n")))
			out.WriteString("\r\n")
		}
		if out.Len() > int(max) {
			return nil, errTooBig
		}
		if err != nil { // io.EOF
			break
		}
	}
	return out.Bytes(), nil
}

// composeOptions say how composeMessage completes a message.
type composeOptions struct {
	from     string // envelope sender, for a missing From:
	fullName string // -F, the display name of that From:
	host     string // right-hand side of a new Message-ID
	extract  bool   // -t: return the addresses of To, Cc and Bcc
	now      time.Time
}

// headerField is one field of a header section, as it was written: its
// lines with their CRLFs.
type headerField struct {
	name string
	raw  []byte
}

// composeMessage completes the message msg (CRLF line endings) as
// sendmail does: the Bcc fields are removed (RFC 5322 §3.6.3), and From,
// Date and Message-ID are added when missing, after the fields it has. A
// first line "From …" (an mbox separator) is dropped; a header section
// ended by a line that is not a field gets the empty line it lacked. With
// extract (-t) it also returns the addresses of To, Cc and Bcc.
func composeMessage(msg []byte, o composeOptions) ([]byte, []string) {
	fields, body := splitHeader(msg)
	var out bytes.Buffer
	var rcpts []string
	has := map[string]bool{}
	for _, f := range fields {
		name := strings.ToLower(f.name)
		has[name] = true
		if o.extract && (name == "to" || name == "cc" || name == "bcc") {
			rcpts = append(rcpts, parseAddressArg(unfold(f))...)
		}
		if name == "bcc" || name == "resent-bcc" {
			continue
		}
		out.Write(f.raw)
	}
	if !has["from"] {
		from := o.from
		if from == "" {
			from = "MAILER-DAEMON@" + o.host
		}
		out.WriteString("From: " + (&mail.Address{Name: o.fullName, Address: from}).String() + "\r\n")
	}
	if !has["date"] {
		out.WriteString("Date: " + o.now.Format(time.RFC1123Z) + "\r\n")
	}
	if !has["message-id"] {
		out.WriteString("Message-ID: " + newMessageID(o.host) + "\r\n")
	}
	out.WriteString("\r\n")
	out.Write(body)
	return out.Bytes(), rcpts
}

// splitHeader cuts msg into its header fields and its body (after the
// empty line, or from the first line that is neither a field nor a
// continuation).
func splitHeader(msg []byte) ([]headerField, []byte) {
	var fields []headerField
	rest := msg
	if bytes.HasPrefix(rest, []byte("From ")) {
		_, rest, _ = bytes.Cut(rest, []byte("\r\n"))
	}
	for len(rest) > 0 {
		line, after, _ := bytes.Cut(rest, []byte("\r\n"))
		switch {
		case len(line) == 0:
			return fields, after
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := &fields[len(fields)-1]
			f.raw = append(append(f.raw, line...), "\r\n"...)
		case isFieldLine(line):
			name, _, _ := bytes.Cut(line, []byte(":"))
			fields = append(fields, headerField{name: string(bytes.TrimRight(name, " \t")), raw: append(append([]byte(nil), line...), "\r\n"...)})
		default:
			return fields, rest
		}
		rest = after
	}
	return fields, nil
}

// isFieldLine reports whether line starts a header field: a name of
// printable ASCII but ':' (RFC 5322 §2.2), then ':', with the blanks
// before the colon that the obsolete syntax allows (RFC 5322 §4.5): such a
// "Bcc :" is a field that must go, not the start of the body.
func isFieldLine(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// unfold returns a field's value on one line (RFC 5322 §2.2.3).
func unfold(f headerField) string {
	_, v, _ := strings.Cut(string(f.raw), ":")
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(v))
}

// parseAddressArg returns the addresses of a recipient argument or of a
// To, Cc or Bcc value: an RFC 5322 address list ("A <a@x>, b@y", groups
// included). Where the list as a whole does not parse — bare local parts
// such as "root", as cron and scripts write them, next to full addresses
// — it is cut into its elements (at commas outside quotes, comments and
// angle brackets; a group's "name:" and ";" dropped), and each element
// gives its address, the part in angle brackets, or the element itself:
// no recipient is dropped silently, and one that is no address is then
// refused by the server, which sendmail reports.
func parseAddressArg(s string) []string {
	var out []string
	if list, err := mail.ParseAddressList(s); err == nil {
		for _, a := range list {
			out = append(out, a.Address)
		}
		return out
	}
	for _, e := range splitAddressList(s) {
		if a, err := mail.ParseAddress(e); err == nil {
			out = append(out, a.Address)
			continue
		}
		if i := strings.LastIndexByte(e, '<'); i >= 0 && strings.HasSuffix(e, ">") {
			e = e[i+1 : len(e)-1]
		}
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// splitAddressList cuts an address list into its elements, without their
// comments, at the commas outside quoted strings, angle brackets and
// domain literals; a group's display name ("undisclosed-recipients:") and
// its end (";") are dropped.
func splitAddressList(s string) []string {
	var (
		out              []string
		cur              strings.Builder
		quoted, escaped  bool
		comment          int
		angle, bracketed bool
	)
	flush := func() {
		if w := strings.TrimSpace(cur.String()); w != "" {
			out = append(out, w)
		}
		cur.Reset()
	}
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && (quoted || comment > 0):
			escaped = true
		case quoted:
			quoted = r != '"'
		case comment > 0 && r == '(':
			comment++
		case comment > 0:
			if r == ')' {
				comment--
			}
			continue
		case r == '(' && !bracketed:
			comment++
			continue
		case r == '"':
			quoted = true
		case bracketed:
			bracketed = r != ']'
		case r == '[':
			bracketed = true
		case r == '<':
			angle = true
		case r == '>':
			angle = false
		case angle:
		case r == ',' || r == ';':
			flush()
			continue
		case r == ':':
			cur.Reset() // a group's display name
			continue
		}
		if comment == 0 {
			cur.WriteRune(r)
		}
	}
	flush()
	return out
}
