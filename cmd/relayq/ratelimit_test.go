package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"relayq/config"
	"relayq/internal/sink"
)

// sendOnce submits one message on a connection of its own and returns the
// error of the transaction.
func sendOnce(t *testing.T, addr string) error {
	t.Helper()
	c := dialSMTP(t, addr)
	defer c.Close()
	return c.SendMail("app@shop.invalid", []string{"u@dest.invalid"}, bytes.NewReader(message("rl", "app@shop.invalid", "u@dest.invalid", 10)))
}

func TestRateLimitPerSourceShowsInStatusAndMetricsAndReloads(t *testing.T) {
	s := startSink(t, sink.Options{})
	cfg := testConfig(t, s.Addr())
	cfg.Limits.MaxMessagesPerHourPerSource = 2
	in := startRelayq(t, cfg)
	addr := in.Addrs()[0]
	for range 2 {
		if err := sendOnce(t, addr); err != nil {
			t.Fatal(err)
		}
	}
	err := sendOnce(t, addr)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 450 || se.EnhancedCode != (smtp.EnhancedCode{4, 7, 1}) ||
		se.Message != "Rate limit exceeded for 127.0.0.1, try again later" {
		t.Fatalf("third message: %v, want 450 4.7.1 naming 127.0.0.1", err)
	}

	out, errOut, code := runOps(t, in, "status")
	if code != 0 || !strings.Contains(out, "Rate limited:") ||
		!strings.Contains(out, " 127.0.0.1 (source_messages, 2/h; since 0s ago, 1 refused)\n") {
		t.Fatalf("status: exit %d %q\n%s", code, errOut, out)
	}
	resp, err := http.Get("http://" + in.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `relayq_rate_limit_refusals_total{limit="source_messages"} 1`+"\n") {
		t.Errorf("/metrics lacks the refusal:\n%s", m)
	}

	// A reload that turns the limit off lets the source send again.
	next := *cfg
	next.Limits.MaxMessagesPerHourPerSource = 0
	in.SetLoader(func() (*config.Config, error) { return &next, nil })
	if err := in.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := sendOnce(t, addr); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	if out, _, _ := runOps(t, in, "status"); !strings.Contains(out, "Rate limited:") || !strings.Contains(out, " none\n\nDestinations") {
		t.Errorf("status after the reload:\n%s", out)
	}
}
