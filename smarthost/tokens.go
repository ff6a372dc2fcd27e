package smarthost

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/smarthost/bearer"
	"relayq/smarthost/smtpclient"
)

// tokenSources keeps one bearer.Source per OAuth2 account of the
// configuration ([delivery.smarthost] or [[delivery.route]] with auth =
// "xoauth2" or "oauthbearer"), so that a token and a run of token_command
// are shared by every delivery through it, and survive a reload that does
// not change the account's keys.
type tokenSources struct {
	mu struct {
		sync.Mutex
		names   map[tokenKey]string // the tables of the current configuration, for the log
		sources map[tokenKey]*bearer.Source
		named   map[tokenKey]string // the name each source was made with
	}
}

// tokenKey is what makes two accounts' tokens different.
type tokenKey struct {
	mech, user, file, command string
	lifetime                  time.Duration
}

func keyOf(user string, a config.AuthKeys) tokenKey {
	return tokenKey{
		mech: strings.ToLower(a.Mechanism), user: user, file: a.TokenFile,
		command: strings.Join(a.TokenCommand, "\x00"), lifetime: a.Lifetime(),
	}
}

// configure takes the accounts of d and forgets the sources of accounts
// no longer in it (or whose tables were renumbered).
func (ts *tokenSources) configure(d *config.Delivery) {
	names := map[tokenKey]string{}
	add := func(table, user string, a config.AuthKeys) {
		if !a.OAuth() {
			return
		}
		k := keyOf(user, a)
		if names[k] != "" {
			names[k] += ", " + table // one account, several tables: one token
		} else {
			names[k] = table
		}
	}
	add("delivery.smarthost", d.Smarthost.Username, d.Smarthost.AuthKeys)
	for i, r := range d.Routes {
		add(fmt.Sprintf("delivery.route[%d]", i), r.Username, r.AuthKeys)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.mu.names = names
	for k := range ts.mu.sources {
		if ts.mu.named[k] != names[k] {
			delete(ts.mu.sources, k)
			delete(ts.mu.named, k)
		}
	}
}

// source returns the token source of the resolved route rt, nil (a nil
// interface) when its auth takes no token.
func (ts *tokenSources) source(rt config.Route, log zerolog.Logger) smtpclient.TokenSource {
	if !rt.OAuth() {
		return nil
	}
	k := keyOf(rt.Username, rt.AuthKeys)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if s := ts.mu.sources[k]; s != nil {
		return s
	}
	name := ts.mu.names[k]
	if name == "" {
		name = "the smart host of user " + rt.Username // a reload raced the route
	}
	s := bearer.New(bearer.Options{
		Name: name, File: rt.TokenFile, Command: rt.TokenCommand, Lifetime: rt.Lifetime(), Log: log,
	})
	if ts.mu.sources == nil {
		ts.mu.sources, ts.mu.named = map[tokenKey]*bearer.Source{}, map[tokenKey]string{}
	}
	ts.mu.sources[k], ts.mu.named[k] = s, name
	return s
}
