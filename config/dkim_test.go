package config

import (
	"slices"
	"strings"
	"testing"
)

func TestValidateDKIMNamesTheKey(t *testing.T) {
	for _, tc := range []struct{ name, toml, want string }{
		{"no key file", "[[dkim]]\ndomain = \"a.example\"\nselector = \"s1\"", "dkim[0].key_file: required"},
		{"wildcard domain", "[[dkim]]\ndomain = \"*.a.example\"\nselector = \"s1\"\nkey_file = \"k\"", "dkim[0].domain: \"*.a.example\" is not a domain"},
		{"bad selector", "[[dkim]]\ndomain = \"a.example\"\nselector = \"s 1\"\nkey_file = \"k\"", "dkim[0].selector: \"s 1\" is not a selector"},
		{"headers without From", "[[dkim]]\ndomain = \"a.example\"\nselector = \"s1\"\nkey_file = \"k\"\nheaders = [\"Subject\"]", "dkim[0].headers: must include From"},
		{"twice the same", "[[dkim]]\ndomain = \"a.example\"\nselector = \"s1\"\nkey_file = \"k\"\n[[dkim]]\ndomain = \"A.example\"\nselector = \"s1\"\nkey_file = \"k2\"", "dkim[1]: domain and selector are also those of dkim[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte("[[dkim]]\ndomain = \"a.example\"\nselector = \"s1\"\nkey_file = \"k\"\n[[dkim]]\ndomain = \"a.example\"\nselector = \"s2\"\nkey_file = \"k2\"\nsubdomains = true")); err != nil {
		t.Errorf("two selectors of one domain: %v", err)
	}
}

func TestDKIMSignedHeadersOversignFrom(t *testing.T) {
	h := DKIM{}.SignedHeaders()
	if !slices.Equal(h[:len(DefaultDKIMHeaders)], DefaultDKIMHeaders) || h[len(h)-1] != "From" || len(h) != len(DefaultDKIMHeaders)+1 {
		t.Errorf("default = %q", h)
	}
	if h := (DKIM{Headers: []string{"from", "Subject"}}).SignedHeaders(); !slices.Equal(h, []string{"from", "Subject", "From"}) {
		t.Errorf("own list = %q", h)
	}
}
