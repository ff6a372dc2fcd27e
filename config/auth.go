package config

import (
	"fmt"
	"strings"
	"time"
)

// How relayq authenticates to a smart host (the auth key of
// [delivery.smarthost] and [[delivery.route]]).
const (
	// AuthPlain is the default: AUTH PLAIN, or LOGIN when the next hop
	// offers only LOGIN, with username and password.
	AuthPlain = "plain"
	// AuthLogin is AUTH LOGIN only, with username and password.
	AuthLogin = "login"
	// AuthXOAuth2 is Google's and Microsoft's AUTH XOAUTH2 with username
	// and a bearer token.
	AuthXOAuth2 = "xoauth2"
	// AuthOAuthBearer is AUTH OAUTHBEARER (RFC 7628) with username and a
	// bearer token.
	AuthOAuthBearer = "oauthbearer"
)

// DefaultTokenLifetime is token_lifetime: how long a token from
// token_command is used before the command is run again. Microsoft's and
// Google's access tokens live an hour; 50 minutes leaves room for a
// delivery that starts just before the end.
const DefaultTokenLifetime = 50 * time.Minute

// AuthKeys are the keys choosing the AUTH mechanism and, for OAuth2, where
// the bearer token comes from. [delivery.smarthost] and [[delivery.route]]
// both have them; username, password_file and password_env sit beside.
type AuthKeys struct {
	Mechanism string `toml:"auth"` // plain | login | xoauth2 | oauthbearer; "" = plain
	// TokenFile holds the bearer token (trailing white space removed); it
	// is read again whenever it changes.
	TokenFile string `toml:"token_file"`
	// TokenCommand prints a fresh bearer token on its standard output. It
	// is run directly, with no shell.
	TokenCommand Command `toml:"token_command"`
	// TokenLifetime is how long a token from TokenCommand is used; 0 means
	// DefaultTokenLifetime.
	TokenLifetime Duration `toml:"token_lifetime"`
}

// OAuth reports whether the mechanism takes a bearer token.
func (a AuthKeys) OAuth() bool {
	m := strings.ToLower(a.Mechanism)
	return m == AuthXOAuth2 || m == AuthOAuthBearer
}

// Lifetime is TokenLifetime with its default applied.
func (a AuthKeys) Lifetime() time.Duration {
	if a.TokenLifetime <= 0 {
		return DefaultTokenLifetime
	}
	return a.TokenLifetime.Std()
}

func (a AuthKeys) isZero() bool {
	return a.Mechanism == "" && a.TokenFile == "" && len(a.TokenCommand) == 0 && a.TokenLifetime == 0
}

// Command is a program and its arguments. In TOML it is an array of
// strings, given to the program as they are, or a string split at white
// space (no quoting: a string with quotes is an error, use the array).
// Nothing goes through a shell unless the command is one
// (["sh", "-c", "..."]).
type Command []string

// UnmarshalTOML implements toml.Unmarshaler.
func (c *Command) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		if strings.ContainsAny(v, `"'\`) {
			return fmt.Errorf("command %q: quotes and backslashes are not interpreted; give the arguments as an array, e.g. [\"sh\", \"-c\", \"...\"]", v)
		}
		*c = strings.Fields(v)
		return nil
	case []any:
		args := make([]string, len(v))
		for i, a := range v {
			s, ok := a.(string)
			if !ok {
				return fmt.Errorf("command: argument %d is %T, want a string", i, a)
			}
			args[i] = s
		}
		*c = args
		return nil
	}
	return fmt.Errorf("command: %T, want a string or an array of strings", v)
}

// checkCredentials checks the AUTH keys of one [delivery.smarthost] or
// [[delivery.route]] table (prefix names it).
func checkCredentials(p *problems, prefix, user, file, env string, a AuthKeys) {
	if a.Mechanism != "" {
		p.oneOf(prefix+".auth", strings.ToLower(a.Mechanism), AuthPlain, AuthLogin, AuthXOAuth2, AuthOAuthBearer)
	}
	if a.TokenLifetime < 0 {
		p.add(prefix+".token_lifetime", "must not be negative")
	}
	hasPassword := file != "" || env != ""
	if !a.OAuth() {
		if a.TokenFile != "" || len(a.TokenCommand) > 0 {
			p.add(prefix+".auth", "token_file and token_command are for auth = %q or %q", AuthXOAuth2, AuthOAuthBearer)
		}
		checkPassword(p, prefix, user, file, env)
		return
	}
	if user == "" {
		p.add(prefix+".username", "required with auth = %q: the account the token is for", a.Mechanism)
	}
	if hasPassword {
		p.add(prefix+".password_file", "not used with auth = %q, which sends a token", a.Mechanism)
	}
	switch {
	case a.TokenFile != "" && len(a.TokenCommand) > 0:
		p.add(prefix+".token_file", "set together with token_command; use one")
	case a.TokenFile == "" && len(a.TokenCommand) == 0:
		p.add(prefix+".auth", "%q needs token_file or token_command", a.Mechanism)
	}
}

func checkPassword(p *problems, prefix, user, file, env string) {
	if file != "" && env != "" {
		p.add(prefix+".password_file", "set together with password_env; use one")
	}
	if user != "" && file == "" && env == "" {
		p.add(prefix+".username", "set, but neither password_file nor password_env is")
	}
	if user == "" && (file != "" || env != "") {
		p.add(prefix+".username", "required when password_file or password_env is set")
	}
}
