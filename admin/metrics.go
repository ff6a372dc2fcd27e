package admin

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"relayq/pressure"
)

// Delivery results, the values of the result label of
// relayq_deliveries_total and relayq_delivery_duration_seconds.
const (
	ResultDelivered = "delivered"
	ResultDeferred  = "deferred"
	ResultBounced   = "bounced"
	ResultExpired   = "expired"
)

// Metrics are relayq's Prometheus metrics, on a registry of their own (no
// global state). The relay counts intake into it, the delivery worker
// counts outcomes; gauges of the queue, back pressure and destinations are
// read at scrape time from the sources given to New. A nil *Metrics is
// valid and counts nothing, so components can take one optionally.
type Metrics struct {
	reg        *prometheus.Registry
	received   prometheus.Counter
	deliveries *prometheus.CounterVec
	accept     prometheus.Histogram
	delivery   *prometheus.HistogramVec
}

// NewMetrics makes the metrics and registers them, with the Go runtime and
// process collectors, on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relayq_messages_received_total",
			Help: "Messages accepted and queued (answered 250 after DATA).",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayq_deliveries_total",
			Help: "Delivery outcomes per recipient: delivered, deferred, bounced, expired.",
		}, []string{"result"}),
		accept: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relayq_accept_duration_seconds",
			Help: "Time from the DATA command to the 250 reply, including the synced queue commit.",
			// An fsync is ~1 ms on SSD, ~10 ms on disk; a large body takes seconds.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		delivery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relayq_delivery_duration_seconds",
			Help:    "Time of one delivery attempt to one destination, from connection to the final reply.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"result"}),
	}
	for _, r := range []string{ResultDelivered, ResultDeferred, ResultBounced, ResultExpired} {
		// Every series exists from the start, so rate() works before the
		// first event of its kind.
		m.deliveries.WithLabelValues(r)
		m.delivery.WithLabelValues(r)
	}
	m.reg.MustRegister(m.received, m.deliveries, m.accept, m.delivery,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry, for extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Received counts one accepted message.
func (m *Metrics) Received() {
	if m != nil {
		m.received.Inc()
	}
}

// ObserveAccept records the time from DATA to the 250 reply.
func (m *Metrics) ObserveAccept(d time.Duration) {
	if m != nil {
		m.accept.Observe(d.Seconds())
	}
}

// Delivery counts one recipient's outcome (a Result… constant) of an
// attempt that took d.
func (m *Metrics) Delivery(result string, d time.Duration) {
	if m != nil {
		m.deliveries.WithLabelValues(result).Inc()
		m.delivery.WithLabelValues(result).Observe(d.Seconds())
	}
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// registerSources adds the gauges read at scrape time.
func (m *Metrics) registerSources(q Queue, bp BackPressureSource, dests DestinationSource) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "relayq_queue_messages", Help: "Messages in the queue.",
		}, func() float64 { return float64(q.Messages()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "relayq_queue_bytes", Help: "Total body size of the queued messages.",
		}, func() float64 { return float64(q.Bytes()) }),
	)
	// Without a source (back pressure off) the level is always normal.
	m.reg.MustRegister(&pressureCollector{src: bp})
	if dests != nil {
		m.reg.MustRegister(&destCollector{src: dests})
	}
}

var (
	levelDesc = prometheus.NewDesc("relayq_backpressure_level",
		"Back-pressure level: 0 normal, 1 medium (intake slowed), 2 high (452 4.3.1).", nil, nil)
	resourceLevelDesc = prometheus.NewDesc("relayq_backpressure_resource_level",
		"Back-pressure level each resource alone calls for (0, 1, 2).", []string{"resource"}, nil)
	resourceReadingDesc = prometheus.NewDesc("relayq_backpressure_reading",
		"Reading of each back-pressure resource (bytes, ratio or count).", []string{"resource"}, nil)
	destConnsDesc = prometheus.NewDesc("relayq_destination_connections",
		"Open outbound connections per destination.", []string{"destination"}, nil)
	destCapDesc = prometheus.NewDesc("relayq_destination_cap",
		"Current connection cap per destination (lowered after 421 4.3.2).", []string{"destination"}, nil)
	destWaitingDesc = prometheus.NewDesc("relayq_destination_waiting",
		"Messages waiting in the destination's line for a connection slot or its message rate.", []string{"destination"}, nil)
	destRateDesc = prometheus.NewDesc("relayq_destination_rate_limit_per_hour",
		"Configured message rate per destination, in messages an hour (0: none).", []string{"destination"}, nil)
	destLearnedRateDesc = prometheus.NewDesc("relayq_destination_learned_rate_per_hour",
		"Message rate a reply saying we send too fast set per destination, in messages an hour (0: none).", []string{"destination"}, nil)
)

type pressureCollector struct{ src BackPressureSource }

func (c *pressureCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- levelDesc
	ch <- resourceLevelDesc
	ch <- resourceReadingDesc
}

func (c *pressureCollector) Collect(ch chan<- prometheus.Metric) {
	bp := BackPressure{Level: pressure.Normal}
	if c.src != nil {
		bp = c.src.BackPressure()
	}
	ch <- prometheus.MustNewConstMetric(levelDesc, prometheus.GaugeValue, float64(bp.Level))
	for _, r := range bp.Resources {
		ch <- prometheus.MustNewConstMetric(resourceLevelDesc, prometheus.GaugeValue, float64(r.Level), r.Name)
		ch <- prometheus.MustNewConstMetric(resourceReadingDesc, prometheus.GaugeValue, r.Reading, r.Name)
	}
}

type destCollector struct{ src DestinationSource }

func (c *destCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- destConnsDesc
	ch <- destCapDesc
	ch <- destWaitingDesc
	ch <- destRateDesc
	ch <- destLearnedRateDesc
}

func (c *destCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.src.Destinations() {
		ch <- prometheus.MustNewConstMetric(destConnsDesc, prometheus.GaugeValue, float64(d.Open), d.Name)
		ch <- prometheus.MustNewConstMetric(destCapDesc, prometheus.GaugeValue, float64(d.Cap), d.Name)
		ch <- prometheus.MustNewConstMetric(destWaitingDesc, prometheus.GaugeValue, float64(d.Waiting), d.Name)
		ch <- prometheus.MustNewConstMetric(destRateDesc, prometheus.GaugeValue, d.RateLimitPerHour, d.Name)
		ch <- prometheus.MustNewConstMetric(destLearnedRateDesc, prometheus.GaugeValue, d.LearnedRatePerHour, d.Name)
	}
}
