package smtpreply

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxText bounds a reply's text as relayq keeps it (Reply.Text from
// FromError, the Diagnostic of a DSN): 1 KiB, on a rune boundary.
const MaxText = 1024

// runeCut returns the largest index <= n (and > 0) that does not split a
// UTF-8 sequence.
func runeCut(s string, n int) int {
	if n >= len(s) {
		return len(s)
	}
	for i := n; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}

// Sanitize makes text from outside safe for a header or a line of text:
// invalid UTF-8 becomes U+FFFD, every control character (CR and LF above all)
// a space, and runs of space one space (so that folding never leaves a line
// of only white space, RFC 5322 §3.2.2); surrounding space is trimmed.
func Sanitize(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// Truncate cuts s to at most n bytes on a rune boundary.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:runeCut(s, n)]
}
