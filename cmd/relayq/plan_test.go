package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"relayq/config"
	"relayq/queue"
)

// With the smart host down, relayq soon stops picking up each new message
// only to find the host cooling down: the message is queued already put
// off, with the host's reply (the intake is wired through Worker.Plan).
func TestNewMailForACoolingSmarthostIsQueuedPutOff(t *testing.T) {
	dead := downAddr(t) // connections are refused
	cfg := testConfig(t, dead)
	cfg.Retry.MinBackoff = config.Duration(time.Hour)
	cfg.Retry.MaxBackoff = config.Duration(2 * time.Hour)
	in := startRelayq(t, cfg)
	addr := in.Addrs()[0]

	// planned returns the messages queued put off: a reply, never attempted.
	planned := func() []queue.Message {
		all, err := in.Store().List(queue.Filter{}, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []queue.Message
		for _, m := range all {
			if m.LastAttempt.IsZero() && m.Recipients[0].LastReply != "" {
				out = append(out, m)
			}
		}
		return out
	}
	// The first message fails and the host cools down (1 s, doubling at
	// each failure); the next finds it cooling. From then on new mail is
	// planned, as long as the cool-down lasts: a slow machine may need a
	// few more messages to see it.
	for i := 0; i < 8 && len(planned()) == 0; i++ {
		submit(t, addr, "a@src.invalid", "b@dst.invalid", []string{fmt.Sprint("m", i)}, 200)
		waitFor(t, 10*time.Second, func() bool {
			all, _ := in.Store().List(queue.Filter{}, "", 100)
			for _, m := range all {
				if m.Recipients[0].LastReply == "" {
					return false // not looked at yet
				}
			}
			return true
		}, "every queued message to be attempted or planned")
	}
	got := planned()
	if len(got) == 0 {
		t.Fatal("no message was queued put off while the only smart host cooled down")
	}
	m := got[0]
	if r := m.Recipients[0]; !strings.HasPrefix(r.LastReply, "451 4.4.1") || r.Attempts != 0 || r.LastHost != dead {
		t.Errorf("planned recipient %+v: want the host's 451 4.4.1, from %s, no attempt counted", r, dead)
	}
	if wait := time.Until(m.NextAttempt); wait < 50*time.Minute {
		t.Errorf("planned message due in %s, want after its hour of backoff", wait)
	}
}
