package server

import (
	"time"

	"relayq/admin"
	"relayq/config"
	"relayq/pressure"
	"relayq/relay"
	"relayq/smarthost"
)

// The glue between the running parts and the admin side: relay and
// smarthost know nothing of admin (dependencies point one way), so they
// report through callbacks, and these adapters translate.

// accepted is relay's Accepted callback: a message was queued.
func (in *Instance) accepted(took time.Duration) {
	in.metrics.Received()
	in.metrics.ObserveAccept(took)
}

// observe is the worker's Observe callback: one recipient's verdict.
// Deferrals and bounces also go to the status page's recent events.
func (in *Instance) observe(o smarthost.Outcome) {
	in.metrics.Delivery(o.Result.String(), o.Took)
	if o.Result == smarthost.ResultDelivered {
		return
	}
	in.events.Add(admin.Event{
		Time: time.Now(), Kind: o.Result.String(), ID: string(o.ID), Rcpt: o.Rcpt, Dest: o.Host, Reply: o.Reply,
		MessageID: o.MessageID, Subject: o.Subject,
	})
}

// pressureSource shows the back-pressure monitor (nil: off) to admin.
type pressureSource struct{ m *pressure.Monitor }

func (p pressureSource) BackPressure() admin.BackPressure {
	st := p.m.Status()
	bp := admin.BackPressure{Level: st.Level}
	for _, r := range st.Resources {
		unit := r.Unit
		if unit == "messages" {
			unit = "count"
		}
		bp.Resources = append(bp.Resources, admin.Resource{
			Name: string(r.Resource), Level: r.Level, Reading: r.Value,
			Medium: r.Medium, High: r.High, Unit: unit,
			Falling: r.Resource == pressure.ResourceFreeDisk,
		})
	}
	return bp
}

// destinationSource shows the worker's destinations to admin.
type destinationSource struct{ w *smarthost.Worker }

func (d destinationSource) Destinations() []admin.Destination {
	var out []admin.Destination
	for _, s := range d.w.Destinations() {
		state := string(s.State(time.Now()))
		out = append(out, admin.Destination{
			Name: s.Name, Cap: s.Cap, ConfiguredCap: s.MaxCap, LearnedCap: s.LearnedCap,
			CapReason: s.Reason, Open: s.Open, Waiting: s.Waiting, State: state,
			LastReply: s.LastReply, LastReplyAt: s.LastReplyAt,
			RateLimit: rateText(s.Rate.Limit), LearnedRate: rateText(s.Rate.Learned()), RateReason: s.Rate.Reason,
			RateLimitPerHour: s.Rate.Limit.PerSecond() * 3600, LearnedRatePerHour: s.Rate.LearnedPerHour,
		})
	}
	return out
}

// rateText is r for the status view, "" for none.
func rateText(r config.Rate) string {
	if r.IsZero() {
		return ""
	}
	return r.String()
}

// rateSource shows the relay's sending limits to admin.
type rateSource struct{ srv *relay.Server }

func (r rateSource) RateLimits() admin.RateLimits {
	st := r.srv.RateStatus()
	out := admin.RateLimits{Refused: make(map[string]int64, len(st.Refused))}
	for limit, n := range st.Refused {
		out.Refused[string(limit)] = n
	}
	for _, l := range st.Limited {
		out.Limited = append(out.Limited, admin.RateLimited{
			Limit: string(l.Limit), Key: l.Key, PerHour: l.PerHour, Since: l.Since, Refused: l.Refused,
		})
	}
	return out
}
