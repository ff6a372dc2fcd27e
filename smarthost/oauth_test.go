package smarthost

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/sink"
	"relayq/queue"
)

const oauthUser = "relay@example.net"

// oauthHarness runs a worker whose only route, [[delivery.route]] 0 for
// dst.invalid, authenticates to a sink with auth's mechanism (XOAUTH2 when
// unset) and token source; the sink, started with opts, takes the tokens
// accept says it takes. Worker and router log at trace level into the
// returned buffer.
func oauthHarness(t *testing.T, opts sink.Options, auth config.AuthKeys, accept func(token string) bool) (*harness, *logBuffer) {
	t.Helper()
	opts.Bearer = func(user, token string) bool { return user == oauthUser && accept(token) }
	dst, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	if auth.Mechanism == "" {
		auth.Mechanism = config.AuthXOAuth2
	}
	d := config.Default().Delivery
	d.Routes = []config.Route{{
		Domains: []string{"dst.invalid"}, Via: config.ViaSmarthost, Hosts: []string{dst.Addr()},
		TLS: config.TLSNone, Username: oauthUser, AuthKeys: auth,
	}}
	logs := &logBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel)
	router := NewConfigRouter(d, nil)
	router.Log, router.Timeout = log, 5*time.Second
	h := startHarness(t, dst, router, func(w *Worker) {
		w.Log = log
		w.CoolDown, w.MaxCoolDown = 10*time.Millisecond, 20*time.Millisecond
	})
	return h, logs
}

// tokenCommand writes a command printing "secret-token-<n>" on its n-th
// run, and returns it and a counter of its runs.
func tokenCommand(t *testing.T) (config.Command, func() int) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	script := filepath.Join(dir, "m365-token")
	body := "#!/bin/sh\necho run >> " + runs + "\necho secret-token-$(wc -l < " + runs + " | tr -d ' ')\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return config.Command{script}, func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run\n")
	}
}

// The first token is refused with 535: the command runs again and the
// same attempt delivers with the new token.
func TestOAuthTokenCommandRunsAgainAfter535(t *testing.T) {
	cmd, runs := tokenCommand(t)
	h, logs := oauthHarness(t, sink.Options{}, config.AuthKeys{TokenCommand: cmd, TokenLifetime: config.Duration(time.Hour)},
		func(tok string) bool { return tok == "secret-token-2" })
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitSink(1)
	h.waitGone(id)
	if n := runs(); n != 2 {
		t.Fatalf("token_command ran %d times, want 2 (the first token, then one after the 535)", n)
	}
	if strings.Contains(logs.String(), "host failed") {
		t.Fatalf("the attempt failed instead of trying the new token:\n%s", logs)
	}
	// Within the lifetime, later deliveries use the token at hand.
	id = h.put("a@src.invalid", "c@dst.invalid")
	h.waitSink(2)
	h.waitGone(id)
	if n := runs(); n != 2 {
		t.Fatalf("token_command ran %d times for a second message within the lifetime, want still 2", n)
	}
	if strings.Contains(logs.String(), "secret-token") {
		t.Errorf("the log holds a token:\n%s", logs)
	}
}

// A token the smart host keeps refusing defers the mail with the host's
// reply (no bounce, no NDR) and the transient form of its status (the
// README: "A failing token defers the mail with the server's reply"), logs
// a warning naming the route, and no log line at any level holds the
// token. Google answers XOAUTH2 and OAUTHBEARER with an error challenge
// and 535 5.7.8, Microsoft 365 XOAUTH2 with 535 5.7.3 at once.
func TestOAuthRefusedTokenDefersAndWarnsNamingTheRoute(t *testing.T) {
	for _, c := range []struct {
		name      string
		mech      string
		microsoft bool
		reply, st string
	}{
		{"xoauth2 Google", config.AuthXOAuth2, false, "535 5.7.8", "4.7.8"},
		{"xoauth2 Microsoft", config.AuthXOAuth2, true, "535 5.7.3", "4.7.3"},
		{"oauthbearer", config.AuthOAuthBearer, false, "535 5.7.8", "4.7.8"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd, _ := tokenCommand(t)
			h, logs := oauthHarness(t, sink.Options{NoBearerChallenge: c.microsoft},
				config.AuthKeys{Mechanism: c.mech, TokenCommand: cmd}, func(string) bool { return false })
			id := h.put("a@src.invalid", "b@dst.invalid")
			m := h.waitAttempts(id, 2)
			r := m.Recipients[0]
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, c.reply) {
				t.Fatalf("recipient %s with %q, want pending with the smart host's %s", r.State, r.LastReply, c.reply)
			}
			if r.Status != c.st {
				t.Errorf("deferred recipient recorded with status %s, want the transient %s", r.Status, c.st)
			}
			if n := h.ndrs(id); n != 0 {
				t.Fatalf("%d NDRs for a refused token", n)
			}
			checkOAuthLog(t, logs.String(), c.st)
		})
	}
}

// checkOAuthLog fails t unless log warns that the token of
// delivery.route[0] was refused and logs each deferral with status st
// (never the 5.x.x of the server's reply), and fails it if any line holds
// a token.
func checkOAuthLog(t *testing.T, log, st string) {
	t.Helper()
	var warned, deferred bool
	for _, line := range strings.Split(log, "\n") {
		warned = warned || strings.Contains(line, `"level":"warn"`) &&
			strings.Contains(line, `"route":"delivery.route[0]"`) && strings.Contains(line, "refused the OAuth2 token")
		if !strings.Contains(line, `"message":"deferred"`) {
			continue
		}
		deferred = true
		if !strings.Contains(line, `"enhanced":"`+st+`"`) {
			t.Errorf("a deferral logged without the status %s: %s", st, line)
		}
	}
	if !warned {
		t.Errorf("no warning naming delivery.route[0]:\n%s", log)
	}
	if !deferred {
		t.Errorf("no deferral logged:\n%s", log)
	}
	// The token, or an AUTH exchange carrying it in base64: XOAUTH2's
	// initial response starts "user=", OAUTHBEARER's GS2 header "n,a=".
	for _, s := range []string{"secret-token", "dXNlcj1", "bixhP"} {
		if strings.Contains(log, s) {
			t.Errorf("the log holds a token (%q):\n%s", s, log)
		}
	}
}

// A token file is read again when it changes: mail deferred because the
// smart host refused its token goes once the file holds a good one.
func TestOAuthTokenFileIsReadAgainAfterItChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("secret-token-old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, logs := oauthHarness(t, sink.Options{}, config.AuthKeys{TokenFile: file}, func(tok string) bool { return tok == "secret-token-new" })
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitAttempts(id, 1)
	if h.sink.Count() != 0 {
		t.Fatal("delivered with the old token")
	}
	if err := os.WriteFile(file, []byte("secret-token-new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.waitSink(1)
	h.waitGone(id)
	if strings.Contains(logs.String(), "secret-token") {
		t.Errorf("the log holds a token:\n%s", logs)
	}
}

// A reload that keeps an account's keys keeps its token source (and so its
// token and its run of token_command); one that changes them starts anew.
func TestOAuthTokenSourceSurvivesAReloadThatKeepsTheAccount(t *testing.T) {
	cmd, _ := tokenCommand(t)
	d := config.Default().Delivery
	d.Routes = []config.Route{{
		Domains: []string{"dst.invalid"}, Via: config.ViaSmarthost, Hosts: []string{"127.0.0.1:1"},
		TLS: config.TLSNone, Username: oauthUser, AuthKeys: config.AuthKeys{Mechanism: config.AuthXOAuth2, TokenCommand: cmd},
	}}
	router := NewConfigRouter(d, nil)
	source := func() any {
		t.Helper()
		rt, err := router.Route(context.Background(), "a@src.invalid", "dst.invalid")
		if err != nil || len(rt.Targets) != 1 || rt.Targets[0].Token == nil {
			t.Fatalf("Route = %+v, %v; want one target with a token source", rt, err)
		}
		return rt.Targets[0].Token
	}
	first := source()
	router.Set(d)
	if source() != first {
		t.Fatal("a reload with the same keys made a new token source")
	}
	d.Routes[0].TokenLifetime = config.Duration(10 * time.Minute)
	router.Set(d)
	if source() == first {
		t.Fatal("a reload with another token_lifetime kept the old token source")
	}
}
