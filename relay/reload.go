package relay

import (
	"maps"
	"net/netip"
	"slices"

	"relayq/config"
)

// Policy is the part of Config that can change while the server runs (a
// configuration reload): who may relay, who may AUTH, the limits on one
// message and the connection caps. As in Config, the zero value of a field
// means its default.
//
// What a change reaches: the connection caps apply to the next connection
// accepted (open connections are never closed for it); everything else to
// the next command. A transaction keeps the policy it began with at MAIL,
// up to its reply to DATA or RSET, so one message is judged by one policy;
// an AUTH exchange keeps the users it began with.
type Policy struct {
	AllowedNetworks []netip.Prefix // may relay without AUTH; empty: nobody may
	MaxRecipients   int            // beyond it: 452 4.5.3
	MaxHops         int            // Received headers above it: 554 5.4.6 at end of DATA
	// MaxConnections and MaxConnectionsPerSource cap the open connections
	// in total and from one IP address; one more is answered 421 4.3.2 in
	// place of the greeting and closed (RFC 5321 §3.1).
	MaxConnections          int
	MaxConnectionsPerSource int
	// BareLineEndings: normalise (default) or reject bare CR / bare LF.
	BareLineEndings BareLineEndings
	// Users are the AUTH PLAIN/LOGIN accounts, name → bcrypt hash; empty:
	// AUTH is not offered.
	Users map[string]string
	// Rate are the hourly sending limits per user and per source
	// (ratelimit.go); zero fields are off. A change keeps the tokens left.
	Rate RateLimits
}

// policy is a Policy in force: defaults applied, with its authenticator.
// It is never modified once stored, so a reader's snapshot stays whole.
type policy struct {
	Policy
	auth *authenticator
}

func (p Policy) withDefaults() Policy {
	if p.MaxRecipients <= 0 {
		p.MaxRecipients = config.DefaultMaxRecipients
	}
	if p.MaxHops <= 0 {
		p.MaxHops = config.DefaultMaxHops
	}
	if p.MaxConnections <= 0 {
		p.MaxConnections = config.DefaultMaxConnections
	}
	if p.MaxConnectionsPerSource <= 0 {
		p.MaxConnectionsPerSource = config.DefaultMaxConnectionsPerSource
	}
	return p
}

// SetPolicy puts p in force for what comes next (see Policy); no
// connection is closed or interrupted. It is safe to call while serving:
// sessions and the listener read the policy with one atomic load, and p is
// copied, so the caller may reuse its slices and map.
func (s *Server) SetPolicy(p Policy) {
	p = p.withDefaults()
	p.AllowedNetworks = slices.Clone(p.AllowedNetworks)
	p.Users = maps.Clone(p.Users)
	next := &policy{Policy: p}
	old := s.pol.Load()
	switch {
	case old != nil && maps.Equal(old.Users, p.Users):
		// The same users: keep the dummy hash rather than pay for a new
		// bcrypt of it at every reload.
		next.auth = old.auth
	default:
		next.auth = newAuthenticator(p.Users)
		if old != nil {
			// One bound on concurrent bcrypt comparisons across policies.
			next.auth.sem = old.auth.sem
		}
	}
	s.pol.Store(next)
	if s.rate != nil { // nil while New runs
		s.rate.setLimits(p.Rate)
	}
}

// Policy returns the policy in force, defaults applied. The caller must not
// modify its slices or map.
func (s *Server) Policy() Policy { return s.pol.Load().Policy }

// mayRelayFrom reports whether ip is in an allowed network.
func (p *policy) mayRelayFrom(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range p.AllowedNetworks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
