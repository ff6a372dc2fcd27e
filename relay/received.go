package relay

import (
	"net/netip"
	"strings"
	"time"

	"relayq/queued"
)

// trace is what the Received header of one message records.
type trace struct {
	helo     string     // as the client gave it
	rdns     string     // the client's reverse DNS name, "" if unknown
	ip       netip.Addr // the client's address
	hostname string     // ours
	tls      bool
	auth     bool
	id       queued.ID
	rcpts    []string
	date     time.Time
}

// receivedHeader formats the trace header field of RFC 5321 §4.4, folded
// before "by" and "for" and ending in CRLF:
//
//	Received: from helo (rdns [192.0.2.1])
//		by hostname (relayq) with ESMTPS id <id>
//		for <rcpt>; Mon, 02 Jan 2006 15:04:05 -0700
//
// The "for" clause names the recipient only when there is exactly one, so
// one copy does not disclose the other recipients (RFC 5321 §7.2). The
// protocol is ESMTP with "S" for TLS and "A" for AUTH (RFC 3848).
func receivedHeader(t trace) string {
	var b strings.Builder
	b.WriteString("Received: from ")
	b.WriteString(sanitizeTraceWord(t.helo))
	b.WriteString(" (")
	if t.rdns != "" {
		b.WriteString(sanitizeTraceWord(t.rdns))
		b.WriteByte(' ')
	}
	b.WriteString(addressLiteral(t.ip))
	b.WriteString(")\r\n\tby ")
	b.WriteString(sanitizeTraceWord(t.hostname))
	b.WriteString(" (relayq) with ESMTP")
	if t.tls {
		b.WriteByte('S')
	}
	if t.auth {
		b.WriteByte('A')
	}
	b.WriteString(" id ")
	b.WriteString(string(t.id))
	if len(t.rcpts) == 1 {
		b.WriteString("\r\n\tfor <")
		b.WriteString(t.rcpts[0])
		b.WriteString(">; ")
	} else {
		b.WriteString(";\r\n\t")
	}
	b.WriteString(t.date.Format(time.RFC1123Z)) // RFC 5322 §3.3 date-time
	b.WriteString("\r\n")
	return b.String()
}

// addressLiteral formats ip as RFC 5321 §4.1.3 does: "[192.0.2.1]",
// "[IPv6:2001:db8::1]".
func addressLiteral(ip netip.Addr) string {
	if !ip.IsValid() {
		return "[unknown]"
	}
	ip = ip.Unmap()
	if ip.Is6() {
		return "[IPv6:" + ip.WithZone("").String() + "]"
	}
	return "[" + ip.String() + "]"
}

// sanitizeTraceWord keeps a client-chosen name (HELO, a PTR record) from
// breaking the header: only printable ASCII outside comment syntax, at most
// a domain's length (RFC 5321 §4.5.3.1.2).
func sanitizeTraceWord(s string) string {
	s = strings.TrimSuffix(s, ".")
	if len(s) > maxDomain {
		s = s[:maxDomain]
	}
	if s == "" {
		return "unknown"
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '(' || c == ')' || c == '\\' || c == ';' {
			c = '?'
		}
		b.WriteByte(c)
	}
	return b.String()
}
