package smtpreply

import (
	"fmt"
	"strconv"
	"strings"
)

// EnhancedCode is an RFC 3463 enhanced status code: class.subject.detail.
// The zero value means "no enhanced code".
type EnhancedCode [3]int

// Common enhanced codes. The table in doc.go says which outcome each leads to.
var (
	CodeOK               = EnhancedCode{2, 0, 0}
	CodeTempLocal        = EnhancedCode{4, 3, 0} // local storage failure: 451 4.3.0
	CodeTempResources    = EnhancedCode{4, 3, 1} // back pressure: 452 4.3.1
	CodeTooManyConns     = EnhancedCode{4, 3, 2} // 421 4.3.2, a per-source connection limit
	CodeNoAnswer         = EnhancedCode{4, 4, 1} // host not responding
	CodeConnDropped      = EnhancedCode{4, 4, 2} // connection dropped
	CodeDNSTemp          = EnhancedCode{4, 4, 3} // routing server failure
	CodeExpired          = EnhancedCode{4, 4, 7} // delivery time expired
	CodeTooManyRcpts     = EnhancedCode{4, 5, 3}
	CodeBadMailbox       = EnhancedCode{5, 1, 1}
	CodeBadDomain        = EnhancedCode{5, 1, 2}
	CodeBadSyntax        = EnhancedCode{5, 1, 3}
	CodeNullMX           = EnhancedCode{5, 1, 10}
	CodeTooBig           = EnhancedCode{5, 3, 4}
	CodeMailboxFull      = EnhancedCode{5, 2, 3} // message length exceeds administrative limit
	CodeLoop             = EnhancedCode{5, 4, 6}
	CodeRelayDenied      = EnhancedCode{5, 7, 1}
	CodePermGeneric      = EnhancedCode{5, 0, 0}
	CodeTempGeneric      = EnhancedCode{4, 0, 0}
	CodeSyntaxError      = EnhancedCode{5, 5, 2}
	CodeTooManyRcptsPerm = EnhancedCode{5, 5, 3}
)

// IsZero reports whether c carries no code.
func (c EnhancedCode) IsZero() bool { return c == EnhancedCode{} }

// Class is the first digit: 2 success, 4 persistent transient, 5 permanent.
func (c EnhancedCode) Class() int { return c[0] }

// String formats the code as "4.4.7", or "" for the zero code.
func (c EnhancedCode) String() string {
	if c.IsZero() {
		return ""
	}
	// Not fmt: this runs for every delivery's log line.
	b := make([]byte, 0, 11)
	b = strconv.AppendInt(b, int64(c[0]), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(c[1]), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(c[2]), 10)
	return string(b)
}

// ParseEnhanced parses "x.y.z" (RFC 3463 §2: class 2, 4 or 5; subject and
// detail 0-999).
func ParseEnhanced(s string) (EnhancedCode, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return EnhancedCode{}, fmt.Errorf("enhanced code %q: want class.subject.detail", s)
	}
	var c EnhancedCode
	for i, p := range parts {
		// Digits only: strconv.Atoi alone would take "+1" and "-0".
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return EnhancedCode{}, fmt.Errorf("enhanced code %q: bad field %q", s, p)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return EnhancedCode{}, fmt.Errorf("enhanced code %q: bad field %q", s, p)
		}
		c[i] = n
	}
	if c[0] != 2 && c[0] != 4 && c[0] != 5 {
		return EnhancedCode{}, fmt.Errorf("enhanced code %q: class must be 2, 4 or 5", s)
	}
	return c, nil
}

// Reply is an SMTP reply, local or remote. It is the project's one typed
// reply error: relay returns it to SMTP clients, smarthost builds one from
// every remote answer and from every local failure (connect, DNS, TLS), and
// retry.Classify turns it into an outcome. Wrap it with %w, find it with errors.As.
type Reply struct {
	Code     int          // basic code, e.g. 451
	Enhanced EnhancedCode // may be zero when the peer sent none
	Text     string       // one line; multi-line replies joined with "; "
	// Local is true when relayq made the reply up itself (a connection
	// failure, a DNS error) rather than receiving it from a peer.
	Local bool
}

// Error formats the reply as a reply line, "451 4.3.0 text".
func (r *Reply) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if !r.Enhanced.IsZero() {
		b.WriteByte(' ')
		b.WriteString(r.Enhanced.String())
	}
	if r.Text != "" {
		b.WriteByte(' ')
		b.WriteString(r.Text)
	}
	return b.String()
}

// Temporary reports whether the basic code is a 4xx. The basic code decides
// when basic and enhanced classes disagree (docs/design.md).
func (r *Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// Permanent reports whether the basic code is a 5xx.
func (r *Reply) Permanent() bool { return r.Code >= 500 && r.Code < 600 }

// Status returns the enhanced code to report for this reply: its own when
// present and of the same class as the basic code, else one derived from the
// basic code (RFC 3463 §3.1 generic codes).
func (r *Reply) Status() EnhancedCode {
	class := r.Code / 100
	if !r.Enhanced.IsZero() && r.Enhanced.Class() == class {
		return r.Enhanced
	}
	switch class {
	case 2:
		return CodeOK
	case 4:
		if !r.Enhanced.IsZero() {
			return EnhancedCode{4, r.Enhanced[1], r.Enhanced[2]}
		}
		return CodeTempGeneric
	default:
		if !r.Enhanced.IsZero() {
			return EnhancedCode{5, r.Enhanced[1], r.Enhanced[2]}
		}
		return CodePermGeneric
	}
}

// ClassMismatch reports whether the basic and enhanced codes disagree in
// class, as in "552 4.3.1". The basic code decides; callers log this.
func (r *Reply) ClassMismatch() bool {
	return !r.Enhanced.IsZero() && r.Enhanced.Class() != r.Code/100
}

// ParseReply parses a reply line such as "452 4.3.1 Insufficient system
// resources", "550 No such user" or "421-4.3.2 busy" (a continuation
// separator is accepted). A bare enhanced code, "4.4.7", is accepted too and
// gets the basic code of its class.
func ParseReply(line string) (*Reply, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, fmt.Errorf("empty reply")
	}
	if c, err := ParseEnhanced(firstField(line)); err == nil {
		basic := map[int]int{2: 250, 4: 451, 5: 550}[c.Class()]
		return &Reply{Code: basic, Enhanced: c, Text: strings.TrimSpace(line[len(firstField(line)):])}, nil
	}
	// The reply reader's own split (Read), so a line reads the same here
	// and on the wire; a final reply is 2xx to 5xx.
	code, _, rest, err := splitLine(line)
	if err != nil {
		return nil, fmt.Errorf("reply %q: %w", line, err)
	}
	if code < 200 || code > 599 {
		return nil, fmt.Errorf("reply %q: no basic code", line)
	}
	rest = strings.TrimSpace(rest)
	r := &Reply{Code: code, Text: rest}
	if f := firstField(rest); f != "" {
		if c, err := ParseEnhanced(f); err == nil {
			r.Enhanced = c
			r.Text = strings.TrimSpace(rest[len(f):])
		}
	}
	return r, nil
}

func firstField(s string) string {
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		return s[:i]
	}
	return s
}
