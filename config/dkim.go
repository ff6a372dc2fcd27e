package config

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// DKIM is one signing key ([[dkim]]): mail whose From: domain is Domain
// (or below it, with Subdomains) is signed at intake, before it is
// queued, with the key in KeyFile under Selector.
type DKIM struct {
	Domain   string `toml:"domain"`
	Selector string `toml:"selector"`
	// KeyFile is a PEM private key: RSA of 2048 bits or more (PKCS#1 or
	// PKCS#8) or Ed25519 (PKCS#8). Read at start; `relayq dkim keygen`
	// writes one.
	KeyFile string `toml:"key_file"`
	// Headers are the header fields signed; empty means
	// DefaultDKIMHeaders. From must be one of them; it is always
	// oversigned (named once more than it appears), so that no From can be
	// added to a signed message without breaking the signature.
	Headers    []string `toml:"headers"`
	Subdomains bool     `toml:"subdomains"`
}

// DefaultDKIMHeaders are the header fields signed when [[dkim]] headers
// is empty: those RFC 6376 §5.4.1 recommends and the MIME fields that say
// how the body is read.
var DefaultDKIMHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// SignedHeaders returns the header fields d signs, From oversigned.
func (d DKIM) SignedHeaders() []string {
	h := d.Headers
	if len(h) == 0 {
		h = DefaultDKIMHeaders
	}
	return append(append([]string(nil), h...), "From")
}

// ValidateDKIM is Validate for the [[dkim]] entries only.
func (c *Config) ValidateDKIM() error {
	var p problems
	c.validateDKIM(&p)
	return errors.Join(p...)
}

func (c *Config) validateDKIM(p *problems) {
	seen := map[string]int{}
	for i, d := range c.DKIM {
		key := fmt.Sprintf("dkim[%d]", i)
		if err := checkDomainPattern(d.Domain); err != nil || strings.HasPrefix(d.Domain, "*.") {
			p.add(key+".domain", "%q is not a domain (for the domains below it, set subdomains = true)", d.Domain)
		}
		if d.Selector == "" || strings.ContainsFunc(d.Selector, func(r rune) bool {
			return !(r == '.' || r == '-' || r == '_' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)))
		}) {
			p.add(key+".selector", "%q is not a selector (letters, digits, '-', '_' and '.')", d.Selector)
		}
		if d.KeyFile == "" {
			p.add(key+".key_file", "required (`relayq dkim keygen` writes one)")
		}
		hasFrom := len(d.Headers) == 0
		for _, h := range d.Headers {
			hasFrom = hasFrom || strings.EqualFold(h, "From")
			if h == "" || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == ':' || r >= unicode.MaxASCII }) {
				p.add(key+".headers", "%q is not a header field name", h)
			}
		}
		if !hasFrom {
			p.add(key+".headers", "must include From (RFC 6376 §5.4)")
		}
		id := strings.ToLower(d.Selector + "._domainkey." + strings.TrimSuffix(d.Domain, "."))
		if j, dup := seen[id]; dup {
			p.add(key, "domain and selector are also those of dkim[%d]", j)
		}
		seen[id] = i
	}
}
