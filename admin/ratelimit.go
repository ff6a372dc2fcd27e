package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RateLimited is a user or client address over an hourly sending limit
// now ([limits] max_messages_per_hour_per_user and the others): its MAIL
// (RCPT for recipients) is answered 450 4.7.1.
type RateLimited struct {
	// Limit is user_messages, source_messages or user_recipients.
	Limit   string    `json:"limit"`
	Key     string    `json:"key"` // user name, or address (IPv6: its /64)
	PerHour int       `json:"per_hour"`
	Since   time.Time `json:"since"`   // first refusal of this episode
	Refused int64     `json:"refused"` // refusals since then
}

// RateLimits is the state of the sending limits.
type RateLimits struct {
	Limited []RateLimited
	// Refused counts the refusals since start, by limit.
	Refused map[string]int64
}

// RateLimitSource reports the sending limits; the relay's limiter is one
// (through an adapter in internal/server).
type RateLimitSource interface {
	RateLimits() RateLimits
}

var (
	rateRefusedDesc = prometheus.NewDesc("relayq_rate_limit_refusals_total",
		"MAIL or RCPT commands refused with 450 4.7.1 for an hourly sending limit, by limit.", []string{"limit"}, nil)
	rateLimitedDesc = prometheus.NewDesc("relayq_rate_limited",
		"Users or client addresses over an hourly sending limit now, by limit.", []string{"limit"}, nil)
)

// rateCollector reads the limiter at scrape time.
type rateCollector struct{ src RateLimitSource }

func (c *rateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rateRefusedDesc
	ch <- rateLimitedDesc
}

func (c *rateCollector) Collect(ch chan<- prometheus.Metric) {
	rl := c.src.RateLimits()
	limited := make(map[string]int, len(rl.Refused))
	for _, l := range rl.Limited {
		limited[l.Limit]++
	}
	// Every limit the source counts has both series, so rate() and alerts
	// work before the first refusal.
	for limit, n := range rl.Refused {
		ch <- prometheus.MustNewConstMetric(rateRefusedDesc, prometheus.CounterValue, float64(n), limit)
		ch <- prometheus.MustNewConstMetric(rateLimitedDesc, prometheus.GaugeValue, float64(limited[limit]), limit)
	}
}
