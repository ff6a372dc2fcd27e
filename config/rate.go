package config

import "fmt"

// Rate paces the messages sent to one destination: at most PerMinute a
// minute and PerHour an hour, evenly spaced (the smaller of the two
// decides); 0 leaves either unpaced. Providers limit messages per minute
// or hour, not only connections (Exchange Online: 30 a minute per
// mailbox; many ISPs: 100 to 500 an hour). It is set on a
// [[delivery.route]], on [delivery.smarthost], and for MX destinations in
// [delivery] (mx_max_messages_per_minute, mx_max_messages_per_hour).
type Rate struct {
	PerMinute int `toml:"max_messages_per_minute"`
	PerHour   int `toml:"max_messages_per_hour"`
}

// IsZero reports whether r paces nothing.
func (r Rate) IsZero() bool { return r.PerMinute == 0 && r.PerHour == 0 }

// PerSecond is the rate r allows, in messages a second; 0 for none.
func (r Rate) PerSecond() float64 {
	var s float64
	if r.PerMinute > 0 {
		s = float64(r.PerMinute) / 60
	}
	if h := float64(r.PerHour) / 3600; r.PerHour > 0 && (s == 0 || h < s) {
		s = h
	}
	return s
}

// String is r as configured: "600/min", "100/h", "30/min, 1000/h" or
// "none".
func (r Rate) String() string {
	switch {
	case r.PerMinute > 0 && r.PerHour > 0:
		return fmt.Sprintf("%d/min, %d/h", r.PerMinute, r.PerHour)
	case r.PerMinute > 0:
		return fmt.Sprintf("%d/min", r.PerMinute)
	case r.PerHour > 0:
		return fmt.Sprintf("%d/h", r.PerHour)
	}
	return "none"
}

// MXRate is the rate of every MX destination a route with its own rate
// does not pace (mx_max_messages_per_minute, mx_max_messages_per_hour).
func (d Delivery) MXRate() Rate {
	return Rate{PerMinute: d.MXMaxMessagesPerMinute, PerHour: d.MXMaxMessagesPerHour}
}

// rateOf is the rate of route r as resolve gives it: its own, else, for a
// route through [delivery.smarthost]'s hosts, the smart host's, and for
// MX, the MX default.
func (d Delivery) rateOf(r Route) Rate {
	switch {
	case !r.Rate.IsZero():
		return r.Rate
	case r.Via == ViaSmarthost && len(r.Hosts) == 0:
		return d.Smarthost.Rate
	case r.Via == ViaMX:
		return d.MXRate()
	}
	return Rate{}
}

// validateRates checks every rate of d: none negative, and a route through
// [delivery.smarthost]'s hosts takes that one's rate (one destination,
// one rate).
func (d Delivery) validateRates(p *problems) {
	check := func(key string, r Rate) {
		if r.PerMinute < 0 {
			p.add(key+"max_messages_per_minute", "%d is negative (0: no limit)", r.PerMinute)
		}
		if r.PerHour < 0 {
			p.add(key+"max_messages_per_hour", "%d is negative (0: no limit)", r.PerHour)
		}
	}
	check("delivery.mx_", d.MXRate())
	check("delivery.smarthost.", d.Smarthost.Rate)
	for i, r := range d.Routes {
		key := fmt.Sprintf("delivery.route[%d].", i)
		check(key, r.Rate)
		if r.Via == ViaSmarthost && len(r.Hosts) == 0 && !r.Rate.IsZero() {
			p.add(key+"max_messages_per_minute", "a route without hosts sends through [delivery.smarthost]: set its rate there")
		}
	}
}
