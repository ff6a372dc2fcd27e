package config

import (
	"strings"
	"testing"
)

// A route's rate is its own; a route through [delivery.smarthost]'s hosts
// has the smart host's, an MX route the MX default, a route with hosts of
// its own and no rate none.
func TestRouteRates(t *testing.T) {
	c, err := Parse([]byte(`
[delivery]
mx_max_messages_per_hour = 500
[delivery.smarthost]
hosts = ["smtp.provider.example:587"]
max_messages_per_minute = 30
[[delivery.route]]
domains = ["partner.example"]
via = "mx"
max_messages_per_minute = 600
[[delivery.route]]
domains = ["isp.example"]
via = "mx"
[[delivery.route]]
domains = ["lan.example"]
via = "smarthost"
hosts = ["10.1.1.5:25"]
tls = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		domain string
		want   Rate
	}{
		{"partner.example", Rate{PerMinute: 600}},
		{"isp.example", Rate{PerHour: 500}},
		{"lan.example", Rate{}},
		{"elsewhere.example", Rate{PerMinute: 30}},
	} {
		if got := c.Delivery.RouteFor("a@src.example", tc.domain).Rate; got != tc.want {
			t.Errorf("%s: rate %v, want %v", tc.domain, got, tc.want)
		}
	}
	if got := (Rate{PerMinute: 30, PerHour: 600}).PerSecond(); got != 600.0/3600 {
		t.Errorf("30/min and 600/h: %v a second, want the hour's 1/6", got)
	}
}

func TestRateValidation(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"negative", "[delivery.smarthost]\nmax_messages_per_minute = -1\n", "delivery.smarthost.max_messages_per_minute"},
		{"negative MX", "[delivery]\nmx_max_messages_per_hour = -5\n", "delivery.mx_max_messages_per_hour"},
		{"route through the smart host", `
[delivery.smarthost]
hosts = ["smtp.provider.example:587"]
[[delivery.route]]
domains = ["x.example"]
via = "smarthost"
max_messages_per_minute = 10
`, "set its rate there"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}
