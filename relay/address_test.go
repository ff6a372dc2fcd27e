package relay

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestCheckAddress(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		utf8OK bool
		want   string // "" means refused
	}{
		{"plain", "user@example.com", false, "user@example.com"},
		{"dots and atext", "first.last+tag!#$@sub.example.com", false, "first.last+tag!#$@sub.example.com"},
		{"unquoted space is quoted again", "a b@example.com", false, `"a b"@example.com`},
		{"quote and backslash escaped", `a"b\c@example.com`, false, `"a\"b\\c"@example.com`},
		{"leading dot needs quotes", ".a@example.com", false, `".a"@example.com`},
		{"IPv4 literal", "u@[192.0.2.1]", false, "u@[192.0.2.1]"},
		{"IPv6 literal", "u@[IPv6:2001:db8::1]", false, "u@[IPv6:2001:db8::1]"},
		{"UTF-8 with SMTPUTF8", "jörg@bücher.example", true, "jörg@bücher.example"},
		{"UTF-8 without SMTPUTF8", "jörg@example.com", false, ""},
		{"invalid UTF-8", "j\xffrg@example.com", true, ""},
		{"no domain", "user", false, ""},
		{"empty label", "u@example..com", false, ""},
		{"trailing dot", "u@example.com.", false, ""},
		{"hyphen at label start", "u@-x.example", false, ""},
		{"label too long", "u@" + strings.Repeat("a", 64) + ".example", false, ""},
		{"domain too long", "u@" + strings.Repeat("abcdefghi.", 26) + "example", false, ""},
		{"bad IPv4 literal", "u@[1.2.3]", false, ""},
		{"IPv6 literal without tag", "u@[2001:db8::1]", false, ""},
		{"general literal", "u@[x400:foo]", false, ""},
		{"control character", "a\x01b@example.com", false, ""},
		{"local part too long", strings.Repeat("l", 65) + "@example.com", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := checkAddress(tt.in, tt.utf8OK)
			if tt.want == "" {
				if err == nil {
					t.Errorf("checkAddress(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("checkAddress(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestReceivedHeader(t *testing.T) {
	date := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("", -5*3600))
	tests := []struct {
		name string
		tr   trace
		want string
	}{
		{
			"one recipient, reverse name, TLS and AUTH",
			trace{helo: "mx.client.example", rdns: "ptr.client.example.", ip: netip.MustParseAddr("192.0.2.7"),
				hostname: "relay.example", tls: true, auth: true, id: "0123", rcpts: []string{"a@example.com"}, date: date},
			"Received: from mx.client.example (ptr.client.example [192.0.2.7])\r\n" +
				"\tby relay.example (relayq) with ESMTPSA id 0123\r\n" +
				"\tfor <a@example.com>; Wed, 04 Mar 2026 05:06:07 -0500\r\n",
		},
		{
			"two recipients are not named, IPv6",
			trace{helo: "[IPv6:2001:db8::5]", ip: netip.MustParseAddr("2001:db8::5"),
				hostname: "relay.example", id: "0124", rcpts: []string{"a@x.example", "b@x.example"}, date: date},
			"Received: from [IPv6:2001:db8::5] ([IPv6:2001:db8::5])\r\n" +
				"\tby relay.example (relayq) with ESMTP id 0124;\r\n" +
				"\tWed, 04 Mar 2026 05:06:07 -0500\r\n",
		},
		{
			"hostile HELO cannot break the header",
			trace{helo: "evil)\r\nX-Injected:(", ip: netip.MustParseAddr("::ffff:198.51.100.1"),
				hostname: "relay.example", id: "0125", rcpts: []string{"a@x.example"}, date: date},
			"Received: from evil???X-Injected:? ([198.51.100.1])\r\n" +
				"\tby relay.example (relayq) with ESMTP id 0125\r\n" +
				"\tfor <a@x.example>; Wed, 04 Mar 2026 05:06:07 -0500\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := receivedHeader(tt.tr); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}
