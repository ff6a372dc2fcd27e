package admin

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"relayq/pressure"
)

func TestTokenGuardsEverythingButProbes(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Token = "s3cret" })
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:s3cret"))
	for _, tc := range []struct {
		method, path string
		auth         string
		want         int
	}{
		{"GET", "/healthz", "", http.StatusOK},
		{"GET", "/readyz", "", http.StatusOK},
		{"GET", "/api/status", "", http.StatusUnauthorized},
		{"GET", "/api/queue", "Bearer wrong", http.StatusUnauthorized},
		{"GET", "/metrics", "", http.StatusUnauthorized},
		{"GET", "/", "", http.StatusUnauthorized},
		{"POST", "/api/queue/flush?all=true", "", http.StatusUnauthorized},
		{"GET", "/api/queue/0123456789abcdef01234567/body", "", http.StatusUnauthorized},
		{"GET", "/api/queue/0123456789abcdef01234567/body", "Bearer wrong", http.StatusUnauthorized},
		{"GET", "/api/queue/0123456789abcdef01234567/body", "Bearer s3cret", http.StatusNotFound},
		{"GET", "/api/status", "Bearer s3cret", http.StatusOK},
		{"GET", "/metrics", "bearer s3cret", http.StatusOK},
		{"GET", "/", basic, http.StatusOK},
		{"POST", "/api/queue/flush?all=true", "Bearer s3cret", http.StatusOK},
	} {
		h := map[string]string{}
		if tc.auth != "" {
			h["Authorization"] = tc.auth
		}
		if code, body := f.do(tc.method, tc.path, h); code != tc.want {
			t.Errorf("%s %s (%q) = %d %s, want %d", tc.method, tc.path, tc.auth, code, body, tc.want)
		}
	}
	// A token also opens the API to a non-loopback Host (it is then meant
	// to be reached over the network).
	if code, _ := f.do("GET", "/api/status", map[string]string{"Authorization": "Bearer s3cret", "Host": "relay.example.net:8025"}); code != http.StatusOK {
		t.Errorf("with token and a DNS Host = %d, want 200", code)
	}
}

func TestWithoutTokenBrowsersOnOtherSitesAreRefused(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		name   string
		method string
		header map[string]string
		want   int
	}{
		{"CLI", "POST", nil, http.StatusOK},
		{"same origin page", "POST", map[string]string{"Origin": f.http.URL}, http.StatusOK},
		{"rebound DNS name", "GET", map[string]string{"Host": "attacker.example:8025"}, http.StatusForbidden},
		{"localhost", "GET", map[string]string{"Host": "localhost:8025"}, http.StatusOK},
		{"form from another site", "POST", map[string]string{"Origin": "http://attacker.example"}, http.StatusForbidden},
		{"fetch metadata cross-site", "POST", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
	} {
		path := "/api/queue/flush?all=true"
		if tc.method == "GET" {
			path = "/api/status"
		}
		if code, body := f.do(tc.method, path, tc.header); code != tc.want {
			t.Errorf("%s: %s %s = %d %s, want %d", tc.name, tc.method, path, code, body, tc.want)
		}
	}
}

func TestReadyzIs503AtBackPressureHigh(t *testing.T) {
	f := newFixture(t, nil)
	if code, _ := f.do("GET", "/readyz", nil); code != http.StatusOK {
		t.Fatalf("readyz at normal = %d", code)
	}
	bp := f.bp.BackPressure()
	bp.Level, bp.Resources[0].Level, bp.Resources[0].Reading = pressure.Medium, pressure.Medium, 1e9
	f.bp.set(bp)
	if code, _ := f.do("GET", "/readyz", nil); code != http.StatusOK {
		t.Fatalf("readyz at medium = %d, want 200 (intake only slowed)", code)
	}
	bp.Level, bp.Resources[0].Level, bp.Resources[0].Reading = pressure.High, pressure.High, 4e8
	f.bp.set(bp)
	code, body := f.do("GET", "/readyz", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "free_disk 400 MB (high below 500 MB)") {
		t.Fatalf("readyz at high = %d %q", code, body)
	}
	if code, _ := f.do("GET", "/healthz", nil); code != http.StatusOK {
		t.Fatalf("healthz at high = %d, want 200 (the process is fine)", code)
	}
}

func TestMetricsMoveWithQueueAndCounters(t *testing.T) {
	f := newFixture(t, nil)
	scrape := func() []byte {
		code, body := f.do("GET", "/metrics", nil)
		if code != http.StatusOK {
			t.Fatalf("/metrics = %d", code)
		}
		return body
	}
	m := scrape()
	if metric(t, m, "relayq_queue_messages") != 0 || metric(t, m, "relayq_messages_received_total") != 0 ||
		metric(t, m, `relayq_deliveries_total{result="delivered"}`) != 0 {
		t.Fatalf("not zero at start:\n%s", m)
	}
	f.put("a@x.invalid", 0, "b@y.invalid")
	f.put("a@x.invalid", 0, "c@y.invalid")
	met := f.srv.Metrics()
	met.Received()
	met.Received()
	met.ObserveAccept(3 * time.Millisecond)
	met.Delivery(ResultDelivered, 120*time.Millisecond)
	met.Delivery(ResultDeferred, 2*time.Second)
	f.dests.list = []Destination{{Name: "mx:dest.invalid", Open: 4, Cap: 20, Waiting: 7, RateLimitPerHour: 36000, LearnedRatePerHour: 18000}}
	bp := f.bp.BackPressure()
	bp.Level = pressure.Medium
	f.bp.set(bp)

	m = scrape()
	for series, want := range map[string]float64{
		"relayq_queue_messages":                                                   2,
		"relayq_messages_received_total":                                          2,
		`relayq_deliveries_total{result="delivered"}`:                             1,
		`relayq_deliveries_total{result="deferred"}`:                              1,
		`relayq_deliveries_total{result="bounced"}`:                               0,
		"relayq_accept_duration_seconds_count":                                    1,
		`relayq_accept_duration_seconds_bucket{le="0.005"}`:                       1,
		`relayq_delivery_duration_seconds_count{result="deferred"}`:               1,
		"relayq_backpressure_level":                                               1,
		`relayq_destination_connections{destination="mx:dest.invalid"}`:           4,
		`relayq_destination_waiting{destination="mx:dest.invalid"}`:               7,
		`relayq_destination_rate_limit_per_hour{destination="mx:dest.invalid"}`:   36000,
		`relayq_destination_learned_rate_per_hour{destination="mx:dest.invalid"}`: 18000,
		`relayq_backpressure_reading{resource="memory"}`:                          0.31,
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := metric(t, m, "relayq_queue_bytes"); got != float64(f.store.Bytes()) || got == 0 {
		t.Errorf("relayq_queue_bytes = %v, store says %d", got, f.store.Bytes())
	}
	var nilMetrics *Metrics
	nilMetrics.Received() // components may hold none
	nilMetrics.Delivery(ResultBounced, time.Second)
}

func TestServeAnswersUntilShutdown(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.SampleEvery = 5 * time.Millisecond })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz = %d", resp.StatusCode)
	}
	// The sampler records the depth for the chart while serving.
	deadline := time.Now().Add(5 * time.Second)
	for len(f.srv.depth.since(time.Time{})) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no depth samples while serving")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Shutdown = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return after Shutdown")
	}
	if _, err := http.Get("http://" + l.Addr().String() + "/healthz"); err == nil {
		t.Fatal("still answering after Shutdown")
	}
}
