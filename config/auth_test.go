package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const oauthSmarthost = "[delivery.smarthost]\nhosts = [\"smtp.office365.com:587\"]\nusername = \"relay@example.net\"\n"

func TestValidateAuthKeys(t *testing.T) {
	tests := []struct{ name, file, want string }{
		{"unknown mechanism", oauthSmarthost + "auth = \"cram-md5\"", `delivery.smarthost.auth: "cram-md5" is not one of plain, login, xoauth2, oauthbearer`},
		{"oauth without a token source", oauthSmarthost + "auth = \"xoauth2\"", `delivery.smarthost.auth: "xoauth2" needs token_file or token_command`},
		{"oauth with both token sources", oauthSmarthost + "auth = \"xoauth2\"\ntoken_file = \"t\"\ntoken_command = \"get-token\"", "delivery.smarthost.token_file: set together with token_command"},
		{"oauth with a password", oauthSmarthost + "auth = \"oauthbearer\"\ntoken_file = \"t\"\npassword_env = \"E\"", `delivery.smarthost.password_file: not used with auth = "oauthbearer"`},
		{"oauth without a user", "[delivery.smarthost]\nauth = \"xoauth2\"\ntoken_file = \"t\"", `delivery.smarthost.username: required with auth = "xoauth2"`},
		{"token with a password mechanism", oauthSmarthost + "password_env = \"E\"\ntoken_file = \"t\"", `delivery.smarthost.auth: token_file and token_command are for auth = "xoauth2" or "oauthbearer"`},
		{"negative lifetime", oauthSmarthost + "auth = \"xoauth2\"\ntoken_file = \"t\"\ntoken_lifetime = \"-1m\"", "delivery.smarthost.token_lifetime: must not be negative"},
		{"quoted command string", oauthSmarthost + "auth = \"xoauth2\"\ntoken_command = \"sh -c 'get-token'\"", `give the arguments as an array`},
		{"route oauth without token", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\nhosts = [\"s.example:587\"]\nusername = \"u@a.example\"\nauth = \"xoauth2\"", `delivery.route[0].auth: "xoauth2" needs token_file or token_command`},
		{"hostless route with its own token", "[delivery.smarthost]\nhosts = [\"s.example:587\"]\n[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\ntoken_file = \"t\"", "delivery.route[0]: a route without hosts uses [delivery.smarthost]"},
		{"mx route with a token", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"mx\"\nauth = \"xoauth2\"", "delivery.route[0].username: credentials are only for via"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.file + "\n"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestTokenCommandFromStringOrArray(t *testing.T) {
	tests := []struct {
		cmd  string
		want Command
	}{
		{`"/usr/local/bin/m365-token  relay@example.net"`, Command{"/usr/local/bin/m365-token", "relay@example.net"}},
		{`["sh", "-c", "oauth2l fetch --json 'a b'"]`, Command{"sh", "-c", "oauth2l fetch --json 'a b'"}},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(oauthSmarthost + "auth = \"xoauth2\"\ntoken_command = " + tt.cmd + "\n"))
		if err != nil {
			t.Fatalf("%s: %v", tt.cmd, err)
		}
		if got := c.Delivery.Smarthost.TokenCommand; !slices.Equal(got, tt.want) {
			t.Errorf("%s: TokenCommand = %q, want %q", tt.cmd, got, tt.want)
		}
	}
	if _, err := Parse([]byte(oauthSmarthost + "auth = \"xoauth2\"\ntoken_command = [\"a\", 1]\n")); err == nil {
		t.Error("a number in the command's array was accepted")
	}
}

func TestRouteForCarriesTheSmarthostsTokenKeys(t *testing.T) {
	c, err := Parse([]byte(oauthSmarthost + "auth = \"XOAUTH2\"\ntoken_file = \"/run/token\"\ntoken_lifetime = \"10m\"\n" +
		"[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\n" +
		"[[delivery.route]]\ndomains = [\"b.example\"]\nvia = \"smarthost\"\nhosts = [\"b.example:587\"]\nusername = \"u@b.example\"\nauth = \"oauthbearer\"\ntoken_command = \"get-token\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := c.Delivery.RouteFor("", "a.example")
	if !a.OAuth() || a.TokenFile != "/run/token" || a.Lifetime() != 10*time.Minute || a.Username != "relay@example.net" {
		t.Errorf("hostless route: %+v, want the smart host's xoauth2 keys", a.AuthKeys)
	}
	b := c.Delivery.RouteFor("", "b.example")
	if !b.OAuth() || !slices.Equal(b.TokenCommand, Command{"get-token"}) || b.Lifetime() != DefaultTokenLifetime {
		t.Errorf("route with hosts: %+v, want its own oauthbearer keys and the default lifetime", b.AuthKeys)
	}
}
