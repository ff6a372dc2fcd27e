package config

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Networks returns AllowedNetworks parsed. A bare address ("127.0.0.1",
// "::1") is a /32 or /128; host bits after the prefix length are cleared.
// Entries that do not parse are left out: Validate reports them.
func (r Relay) Networks() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(r.AllowedNetworks))
	for _, s := range r.AllowedNetworks {
		if p, err := parseNetwork(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func parseNetwork(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

// DNSServerAddrs returns DNSServers as "ip:port", adding port 53 where an
// entry has none. Empty means: use the system resolver.
func (d Delivery) DNSServerAddrs() []string {
	out := make([]string, 0, len(d.DNSServers))
	for _, s := range d.DNSServers {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, net.JoinHostPort(a.String(), "53"))
			continue
		}
		out = append(out, s)
	}
	return out
}

// RouteFor returns how mail from sender (the envelope sender, "" for
// the null sender) to a recipient at domain is delivered: the first
// [[delivery.route]] that matches both, else the default (the smart host
// when [delivery.smarthost] has hosts, else MX). The result is resolved:
// a smarthost route without hosts carries [delivery.smarthost]'s hosts,
// TLS and credentials, TLS is never empty (MX defaults to
// opportunistic), and neither is RewriteFrom (RewriteFromKeep); its Rate
// is the one that paces its destination (Rate).
func (d Delivery) RouteFor(sender, domain string) Route {
	for _, r := range d.Routes {
		if r.MatchesSender(sender) && (len(r.Domains) == 0 || r.Matches(domain)) {
			return d.resolve(r)
		}
	}
	if len(d.Smarthost.Hosts) > 0 {
		return d.resolve(Route{Via: ViaSmarthost})
	}
	return d.resolve(Route{Via: ViaMX})
}

// SenderClass names how RouteFor treats sender: the indexes of the routes
// with senders that match it. Two senders of one class get the same route
// for every domain, so what is learned about one's route holds for the
// other's. It is "" when no route matches by sender.
func (d Delivery) SenderClass(sender string) string {
	var b strings.Builder
	for i, r := range d.Routes {
		if len(r.Senders) > 0 && r.MatchesSender(sender) {
			b.WriteString(strconv.Itoa(i))
			b.WriteByte(',')
		}
	}
	return b.String()
}

func (d Delivery) resolve(r Route) Route {
	if r.RewriteFrom == "" {
		r.RewriteFrom = RewriteFromKeep
	}
	r.Rate = d.rateOf(r)
	switch {
	case r.Via == ViaSmarthost && len(r.Hosts) == 0:
		s := d.Smarthost
		r.Hosts = s.Hosts
		r.TLS = s.TLS
		r.Username, r.PasswordFile, r.PasswordEnv = s.Username, s.PasswordFile, s.PasswordEnv
		r.AuthKeys = s.AuthKeys
		r.InsecureSkipVerify = s.InsecureSkipVerify
	case r.TLS != "":
	case r.Via == ViaMX:
		// RFC 3207 §4: a public MX cannot be required to offer STARTTLS.
		r.TLS = TLSOpportunistic
	default:
		r.TLS = d.Smarthost.TLS
	}
	return r
}

// Matches reports whether domain falls under one of r.Domains:
// "example.com" matches that name only, "*.example.com" matches every name
// below it (at any depth) but not example.com itself. Case and a trailing
// dot are ignored.
func (r Route) Matches(domain string) bool {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if d == "" {
		return false
	}
	for _, pat := range r.Domains {
		p := strings.ToLower(strings.TrimSuffix(pat, "."))
		if suffix, ok := strings.CutPrefix(p, "*"); ok {
			if strings.HasSuffix(d, suffix) && len(d) > len(suffix) {
				return true
			}
			continue
		}
		if d == p {
			return true
		}
	}
	return false
}

// MatchesSender reports whether sender, an envelope sender, falls under
// one of r.Senders: "*@example.com" matches every address at that domain
// (not below it), anything else that address only. Case and a trailing
// dot of the domain are ignored. A route without senders matches every
// sender; one with senders never matches the null sender ("").
func (r Route) MatchesSender(sender string) bool {
	if len(r.Senders) == 0 {
		return true
	}
	local, domain, ok := splitAddress(sender)
	if !ok {
		return false
	}
	for _, pat := range r.Senders {
		pl, pd, ok := splitAddress(pat)
		if ok && pd == domain && (pl == "*" || pl == local) {
			return true
		}
	}
	return false
}

// splitAddress returns the local part and domain of addr, lower case, the
// domain without a trailing dot; ok is false when addr has no "@" or an
// empty part.
func splitAddress(addr string) (local, domain string, ok bool) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", "", false
	}
	local = strings.ToLower(addr[:at])
	domain = strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
	return local, domain, domain != ""
}
