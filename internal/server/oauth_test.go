package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/server/servertest"
	"relayq/internal/sink"
	"relayq/internal/testlog"
)

// syncLog is the test's view of the log.
type syncLog = testlog.Buffer

// relayq wired as `relayq serve` wires it: a smart host with auth =
// "xoauth2" and a token command. A token the smart host refuses leaves the
// mail queued and a warning in the log naming [delivery.smarthost]; once
// the command prints a token the host takes, the mail goes. No log line,
// at any level, holds a token.
func TestServeRelaysWithAnOAuth2TokenCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	dst := servertest.Sink(t, sink.Options{Bearer: func(user, token string) bool {
		_, err := os.Stat(good) // the provider accepts tokens once "good" exists
		return user == "relay@example.net" && token == "secret-token-ok" && err == nil
	}})
	script := filepath.Join(dir, "token")
	body := "#!/bin/sh\nif [ -e " + good + " ]; then echo secret-token-ok; else echo secret-token-bad; fi\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config(t, dst.Addr())
	s := &cfg.Delivery.Smarthost
	s.Username, s.Mechanism, s.TokenCommand = "relay@example.net", config.AuthXOAuth2, config.Command{script}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs syncLog
	in, err := server.Start(cfg, zerolog.New(&logs).Level(zerolog.TraceLevel), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })

	servertest.Submit(t, in.Addrs()[0], "app@lan.invalid", "someone@dest.invalid", []string{"oauth1"}, 512)
	servertest.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `"route":"delivery.smarthost"`) &&
			strings.Contains(logs.String(), "refused the OAuth2 token")
	}, "a warning naming delivery.smarthost")
	if dst.Count() != 0 {
		t.Fatal("delivered with a refused token")
	}
	if err := os.WriteFile(good, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, 1); err != nil {
		t.Fatalf("not delivered once the token is good: %v", err)
	}
	if strings.Contains(logs.String(), "secret-token") {
		t.Errorf("the log holds a token:\n%s", logs.String())
	}
}
