package main

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/admin"
	"relayq/config"
	"relayq/internal/sink"
)

// relayq status shows each destination's waiting mail and its rate: the
// configured one, and the learned one with the reply that set it.
func TestStatusShowsDestinationRates(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out strings.Builder
	printStatus(&out, admin.Status{Time: now, Started: now, Destinations: []admin.Destination{
		{Name: "smarthost:smtp.office365.com:587", Cap: 20, Open: 1, Waiting: 42, RateLimit: "30/min",
			LearnedRate: "15/min", RateReason: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"},
		{Name: "mx:mx.example.org", Cap: 20},
	}})
	var office, mx string
	for _, line := range strings.Split(out.String(), "\n") {
		switch {
		case strings.Contains(line, "office365"):
			office = line
		case strings.Contains(line, "mx.example.org"):
			mx = line
		}
	}
	for _, want := range []string{" 42 ", "30/min, learned 15/min (432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded)"} {
		if !strings.Contains(office, want) {
			t.Errorf("the paced destination's line %q lacks %q", office, want)
		}
	}
	if !strings.Contains(mx, " 0 ") || strings.Contains(mx, "/min") {
		t.Errorf("the unpaced destination's line %q: want 0 waiting and no rate", mx)
	}
}

// getText GETs path from the admin API at addr and returns the body.
func getText(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d, %v", path, resp.StatusCode, err)
	}
	return string(b)
}

// A paced destination, live (README "Message rates per destination"):
// relayq's smart host set to 2 messages a minute says "450 4.7.1 sending
// rate exceeded" to the first message. relayq status, /api/status,
// /metrics and the status page then show the configured 2/min, the
// learned 1/min with that reply, and the 4 messages waiting for the rate,
// none of them deferred.
func TestStatusShowsALivePacedDestination(t *testing.T) {
	var refused atomic.Bool
	dst := startSink(t, sink.Options{OnRcpt: func(string) error {
		if refused.CompareAndSwap(false, true) {
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "sending rate exceeded"}
		}
		return nil
	}})
	cfg := testConfig(t, dst.Addr())
	cfg.Delivery.Smarthost.Rate = config.Rate{PerMinute: 2}
	in := startRelayq(t, cfg)
	submit(t, in.Addrs()[0], "app@lan.invalid", "someone@dest.invalid", []string{"r1", "r2", "r3", "r4"}, 100)

	name := "smarthost:" + dst.Addr()
	var d admin.Destination
	waitFor(t, 15*time.Second, func() bool {
		var st admin.Status
		api(t, in.AdminAddr(), "/api/status", &st)
		for _, x := range st.Destinations {
			if x.Name == name {
				d = x
			}
		}
		return d.LearnedRate != "" && d.Waiting == 4
	}, "the destination's learned rate and its 4 messages waiting")
	if d.RateLimit != "2/min" || d.LearnedRate != "1/min" || !strings.HasPrefix(d.RateReason, "450 4.7.1 sending rate exceeded") {
		t.Errorf("/api/status destination %+v: want 2/min, learned 1/min from the 450", d)
	}
	if n := dst.Count(); n != 0 {
		t.Errorf("%d messages delivered within a minute of a learned 1/min after the first was refused", n)
	}
	var list admin.ListResponse
	if api(t, in.AdminAddr(), "/api/queue?state=deferred", &list); len(list.Messages) != 0 {
		t.Errorf("%d messages deferred; mail waiting for the rate is not deferred", len(list.Messages))
	}

	metrics := getText(t, in.AdminAddr(), "/metrics")
	for _, series := range []string{
		`relayq_destination_waiting{destination="` + name + `"} 4`,
		`relayq_destination_rate_limit_per_hour{destination="` + name + `"} 120`,
		`relayq_destination_learned_rate_per_hour{destination="` + name + `"} 60`,
	} {
		if !strings.Contains(metrics, series+"\n") {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if page := getText(t, in.AdminAddr(), "/"); !strings.Contains(page, "2/min") || !strings.Contains(page, "learned 1/min") {
		t.Errorf("the status page shows no rate for %s", name)
	}
	out, errOut, code := runOps(t, in, "status")
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, name) {
			line = l
		}
	}
	if code != 0 || !strings.Contains(line, " 4 ") || !strings.Contains(line, "2/min, learned 1/min (450 4.7.1 sending rate exceeded") {
		t.Errorf("relayq status: exit %d %s; the destination's line %q lacks 4 waiting and its rates:\n%s", code, errOut, line, out)
	}
}
