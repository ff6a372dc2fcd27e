package config

import (
	"strings"
	"testing"
)

func TestSubmitAddressFollowsTheFirstRelayListener(t *testing.T) {
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"defaults", "", "127.0.0.1:2525"},
		{"server set", "[sendmail]\nserver = \"10.0.0.5:25\"", "10.0.0.5:25"},
		{"every IPv4 address", "[[listener]]\naddress = \"0.0.0.0:25\"", "127.0.0.1:25"},
		{"every address", "[[listener]]\naddress = \":25\"", "127.0.0.1:25"},
		{"every IPv6 address", "[[listener]]\naddress = \"[::]:25\"", "[::1]:25"},
		{"a submission listener first", "[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\nallow_insecure_auth = true\n" +
			"[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'\n" +
			"[[listener]]\naddress = \"192.0.2.1:25\"", "192.0.2.1:25"},
		{"no relay listener", "[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\nallow_insecure_auth = true\n" +
			"[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.toml))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.SubmitAddress(); got != tc.want {
				t.Errorf("SubmitAddress() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMaildropDirDefaultsToDataDir(t *testing.T) {
	c, err := Parse([]byte("data_dir = \"/var/lib/relayq\""))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.MaildropDir(); got != "/var/lib/relayq/maildrop" {
		t.Errorf("MaildropDir() = %q, want /var/lib/relayq/maildrop", got)
	}
	c.Sendmail.Maildrop = "/var/spool/relayq/maildrop"
	if got := c.MaildropDir(); got != "/var/spool/relayq/maildrop" {
		t.Errorf("MaildropDir() = %q with sendmail.maildrop set", got)
	}
}

func TestSendmailServerMustBeHostPort(t *testing.T) {
	_, err := Parse([]byte("[sendmail]\nserver = \"localhost\""))
	if err == nil || !strings.Contains(err.Error(), `sendmail.server: "localhost" is not host:port`) {
		t.Errorf("err = %v, want sendmail.server: \"localhost\" is not host:port", err)
	}
}
