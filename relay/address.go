package relay

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// RFC 5321 §4.5.3.1: size limits of the parts of a path.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxPath      = 256
)

// checkAddress validates a mailbox as go-smtp parsed it (local@domain, the
// local part unquoted) and returns it in the form relay stores and sends on:
// the local part quoted again if it is not a dot-string (RFC 5321 §4.1.2),
// the domain as given. Non-ASCII is allowed only with SMTPUTF8 (RFC 6531 §3.3).
func checkAddress(addr string, utf8OK bool) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", errors.New("want local@domain")
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.IndexByte(local, '@') >= 0 {
		// go-smtp hands a quoted local part over unquoted, so "x@y"@z and
		// the malformed x@y@z reach here alike; neither is accepted, as a
		// next hop could split either at its first @.
		return "", errors.New("@ in the local part")
	}
	if !utf8.ValidString(addr) {
		return "", errors.New("invalid UTF-8")
	}
	if !utf8OK && !isASCII(addr) {
		return "", errors.New("non-ASCII address without SMTPUTF8")
	}
	if err := checkDomain(domain); err != nil {
		return "", err
	}
	if !isDotString(local) {
		var err error
		if local, err = quoteLocal(local); err != nil {
			return "", err
		}
	}
	if len(local) > maxLocalPart {
		return "", errors.New("local part too long")
	}
	out := local + "@" + domain
	if len(out)+2 > maxPath { // the path includes its angle brackets
		return "", errors.New("path too long")
	}
	return out, nil
}

// routingLocal reports whether the local part of a checked address carries
// routing that a next hop might act on: the percent hack (user%host@relay),
// a UUCP bang path (host!user@relay) or an @, and their full-width and
// small-form look-alikes, which a next hop applying Unicode compatibility
// normalisation (NFKC) would turn into them. Source routes (@a,@b:u@c) never
// get here: go-smtp drops them, as RFC 5321 §4.1.1.3 lets a server do, and
// the mailbox alone is queued.
func routingLocal(addr string) bool {
	local := addr[:strings.LastIndexByte(addr, '@')]
	return strings.ContainsAny(local, "%!@\uFF05\uFE6A\uFF01\uFE57\uFF20\uFE6B")
}

// checkDomain accepts a domain name (RFC 5321 §4.1.2 Domain, with U-labels
// when non-ASCII is allowed at all) or an address literal (§4.1.3).
func checkDomain(d string) error {
	if len(d) > maxDomain {
		return errors.New("domain too long")
	}
	if strings.HasPrefix(d, "[") {
		return checkAddressLiteral(d)
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("bad domain label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("domain label starts or ends with a hyphen")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !isLetDig(c) && c != '-' && c < 0x80 {
				return errors.New("bad character in domain")
			}
		}
	}
	return nil
}

// checkAddressLiteral accepts "[192.0.2.1]" and "[IPv6:2001:db8::1]".
func checkAddressLiteral(d string) error {
	if !strings.HasSuffix(d, "]") {
		return errors.New("unterminated address literal")
	}
	inner := d[1 : len(d)-1]
	v6, isV6 := cutPrefixFold(inner, "IPv6:")
	if isV6 {
		if a, err := netip.ParseAddr(v6); err == nil && a.Is6() && a.Zone() == "" {
			return nil
		}
		return errors.New("bad IPv6 address literal")
	}
	if a, err := netip.ParseAddr(inner); err == nil && a.Is4() {
		return nil
	}
	return errors.New("bad address literal")
}

// isDotString reports whether s is an RFC 5321 Dot-string: atoms of atext
// joined by single dots. UTF-8 is allowed in atext (RFC 6531 §3.3).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '.' && !isAtext(c) {
			return false
		}
	}
	return true
}

// quoteLocal returns s as an RFC 5321 Quoted-string; control characters
// cannot be sent in one.
func quoteLocal(s string) (string, error) {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return "", errors.New("control character in local part")
		}
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String(), nil
}

func isLetDig(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// isAtext: RFC 5322 §3.2.3 atext, plus UTF-8 octets (RFC 6532 §3.2).
func isAtext(c byte) bool {
	return isLetDig(c) || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 || c >= 0x80
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}
