package main

import (
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/server/servertest"
	"relayq/internal/sink"
)

// The in-process helpers of this package's tests: servertest's, with the
// options `relayq serve` runs with.

func testConfig(t testing.TB, smarthostAddr string) *config.Config {
	return servertest.Config(t, smarthostAddr)
}

func startRelayq(t testing.TB, cfg *config.Config) *server.Instance {
	return servertest.Start(t, cfg, serverOptions(nil))
}

func startSink(t testing.TB, opts sink.Options) *sink.Server { return servertest.Sink(t, opts) }

func message(token, from, to string, bodySize int) []byte {
	return servertest.Message(token, from, to, bodySize)
}

func submit(t testing.TB, addr, from, to string, tokens []string, bodySize int) {
	servertest.Submit(t, addr, from, to, tokens, bodySize)
}

func dialSMTP(t testing.TB, addr string) *smtp.Client { return servertest.Dial(t, addr) }

func messageIDs(t testing.TB, msgs []sink.Message) map[string]int {
	return servertest.MessageIDs(t, msgs)
}

func waitFor(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	servertest.WaitFor(t, timeout, cond, what)
}
