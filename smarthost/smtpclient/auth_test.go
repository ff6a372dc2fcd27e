package smtpclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/internal/smtptest"
	"relayq/retry"
)

// A token as long as a real access token (about 1.5 KB), so that the AUTH
// line is as long as it is in production.
var (
	goodToken  = "good." + strings.Repeat("g", 1500)
	staleToken = "stale." + strings.Repeat("s", 1500)
)

// tokens is a TokenSource whose Refused hands out next (once).
type tokens struct {
	mu      sync.Mutex
	current string
	next    string
	err     error
	refused []string // "<tok> <reply>" per call of Refused
}

func (s *tokens) Token(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.err
}

func (s *tokens) Refused(_ context.Context, tok string, r *smtpreply.Reply) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused = append(s.refused, tok+" "+r.Error())
	s.current, s.next = s.next, ""
	return s.current, nil
}

func bearerSink(t *testing.T, noChallenge bool) *sink.Server {
	return smtptest.StartSink(t, sink.Options{NoBearerChallenge: noChallenge, Bearer: func(user, token string) bool {
		return user == "relay@example.net" && token == goodToken
	}})
}

func bearerTarget(addr string, mech Mechanism, src TokenSource) Target {
	tg := target(addr, TLSNone)
	tg.Username, tg.Auth, tg.Token = "relay@example.net", mech, src
	return tg
}

// dialCounter counts the connections Dial opens.
type dialCounter struct {
	net.Dialer
	n atomic.Int32
}

func (d *dialCounter) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return d.Dialer.DialContext(ctx, network, addr)
}

func TestBearerTokenAuthenticates(t *testing.T) {
	for _, mech := range []Mechanism{AuthXOAuth2, AuthOAuthBearer} {
		t.Run(string(mech), func(t *testing.T) {
			s := bearerSink(t, false)
			c := mustDial(t, bearerTarget(s.Addr(), mech, &tokens{current: goodToken}))
			res, err := send(t, c, env("a@x.example"))
			if err != nil {
				t.Fatal(err)
			}
			checkResults(t, res, delivered())
		})
	}
}

// Google answers a refused token with an error challenge and then 535
// 5.7.8, Microsoft with 535 5.7.3 at once: either way the error is the
// server's own reply, at the hello stage, with no token in it.
func TestRefusedTokenIsTheServersReply(t *testing.T) {
	tests := []struct {
		name        string
		mech        Mechanism
		noChallenge bool
		enhanced    string
	}{
		{"xoauth2 Google style", AuthXOAuth2, false, "5.7.8"},
		{"xoauth2 Microsoft style", AuthXOAuth2, true, "5.7.3"},
		{"oauthbearer", AuthOAuthBearer, false, "5.7.8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := bearerSink(t, tt.noChallenge)
			src := &tokens{current: staleToken}
			_, err := Dial(testCtx(t), &net.Dialer{}, bearerTarget(s.Addr(), tt.mech, src), hello)
			checkReply(t, err, 535, tt.enhanced, false)
			var de *DialError
			if !errors.As(err, &de) || de.Stage != retry.StageHello {
				t.Errorf("stage of %v is not hello", err)
			}
			if strings.Contains(err.Error(), "sssss") {
				t.Errorf("the error holds the token: %v", err)
			}
			if len(src.refused) != 1 || !strings.HasPrefix(src.refused[0], staleToken+" 535 "+tt.enhanced) {
				t.Errorf("Refused calls: %q, want one for the stale token with the 535", src.refused)
			}
		})
	}
}

func TestRefusedTokenIsReplacedOnTheSameConnection(t *testing.T) {
	for _, noChallenge := range []bool{false, true} {
		for _, mech := range []Mechanism{AuthXOAuth2, AuthOAuthBearer} {
			if noChallenge && mech == AuthOAuthBearer {
				continue // OAUTHBEARER always challenges (RFC 7628 §3.2.2)
			}
			s := bearerSink(t, noChallenge)
			src := &tokens{current: staleToken, next: goodToken}
			d := &dialCounter{}
			c, err := Dial(testCtx(t), d, bearerTarget(s.Addr(), mech, src), hello)
			if err != nil {
				t.Fatalf("%s (no challenge %v): Dial: %v", mech, noChallenge, err)
			}
			res, err := send(t, c, env("a@x.example"))
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			checkResults(t, res, delivered())
			if n := d.n.Load(); n != 1 || len(src.refused) != 1 {
				t.Errorf("%s: %d connections and %d refusals, want the new token tried on the one connection", mech, n, len(src.refused))
			}
		}
	}
}

func TestBearerLocalFailures(t *testing.T) {
	s := bearerSink(t, false)
	plainOnly := smtptest.StartSink(t, sink.Options{Users: map[string]string{"app1": "s3cret"}, AuthMechanisms: []string{"PLAIN"}})
	tests := []struct {
		name     string
		target   Target
		code     int
		enhanced string
	}{
		{"a token source that fails", bearerTarget(s.Addr(), AuthXOAuth2, &tokens{err: errors.New("token_command exited with status 1")}), 451, "4.7.0"},
		{"no token source", bearerTarget(s.Addr(), AuthOAuthBearer, nil), 451, "4.3.5"},
		{"mechanism not offered", bearerTarget(plainOnly.Addr(), AuthXOAuth2, &tokens{current: goodToken}), 530, "5.7.0"},
		{"LOGIN required but not offered", Target{Addr: plainOnly.Addr(), TLS: TLSNone, Timeout: testTimeout, Username: "app1", Password: "s3cret", Auth: AuthLogin}, 530, "5.7.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Dial(testCtx(t), &net.Dialer{}, tt.target, hello)
			checkReply(t, err, tt.code, tt.enhanced, true)
		})
	}
}
