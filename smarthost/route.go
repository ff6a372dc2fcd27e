package smarthost

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/smtpreply"
	"relayq/smarthost/smtpclient"
)

// maxMXAddrs bounds the addresses tried for one MX delivery (Postfix's
// smtp_mx_address_limit is 5): each dead one may cost a connect timeout.
const maxMXAddrs = 10

// codeMXUnusable is 4.4.4 "unable to route" (RFC 3463): MX records exist
// but none of their hosts has an address.
var codeMXUnusable = smtpreply.EnhancedCode{4, 4, 4}

// ConfigRouter routes by the [delivery] section of the configuration: the
// first matching [[delivery.route]], else the smart host, else MX. The
// configuration can be swapped at run time (reload); the next attempt uses
// the new one, queued mail included.
type ConfigRouter struct {
	delivery atomic.Pointer[config.Delivery]
	// Resolver looks up MX records and the MX hosts' addresses; nil means
	// net.DefaultResolver. It is delivery.dns_servers.
	Resolver *net.Resolver
	// Timeout bounds each SMTP command on the routes' connections.
	Timeout time.Duration
	// RootCAs verifies smart hosts with tls = starttls or implicit; nil
	// means the system roots.
	RootCAs *x509.CertPool
	// IntN returns a random number in [0, n), to order MX hosts of equal
	// preference; nil means math/rand/v2.IntN.
	IntN func(n int) int
	// Log gets the warnings of OAuth2 token sources (a failing
	// token_command, a refused token), each naming its route.
	Log zerolog.Logger

	tokens tokenSources
}

var _ Router = (*ConfigRouter)(nil)

// NewConfigRouter returns a router for d.
func NewConfigRouter(d config.Delivery, resolver *net.Resolver) *ConfigRouter {
	r := &ConfigRouter{Resolver: resolver}
	r.Set(d)
	return r
}

// Set replaces the delivery configuration; attempts that start afterwards
// use it.
func (r *ConfigRouter) Set(d config.Delivery) {
	r.tokens.configure(&d)
	r.delivery.Store(&d)
}

// Route implements Router: the first [[delivery.route]] that matches
// sender and domain (config.Delivery.RouteFor).
func (r *ConfigRouter) Route(ctx context.Context, sender, domain string) (*Route, error) {
	d := r.delivery.Load()
	rt := d.RouteFor(sender, domain)
	mode, err := ParseTLSMode(rt.TLS)
	if err != nil {
		return nil, &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempLocal, Text: "bad route configuration: " + err.Error(), Local: true}
	}
	rewrite := Rewrite{Sender: rt.RewriteSender, From: rt.RewriteFrom}
	if rt.Via == config.ViaMX {
		route, err := r.mx(ctx, domain, d.MXPort, mode, rt.InsecureSkipVerify)
		if route != nil {
			route.Rewrite, route.Rate = rewrite, rt.Rate
		}
		return route, err
	}
	password, err := rt.Password()
	if err != nil {
		return nil, &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempLocal, Text: "smart host password: " + err.Error(), Local: true}
	}
	token := r.tokens.source(rt, r.Log)
	route := &Route{Destination: smarthostDest(rt.Hosts, rt.Username), Rewrite: rewrite, Rate: rt.Rate}
	for _, h := range rt.Hosts {
		route.Targets = append(route.Targets, Target{
			Addr: h, TLS: mode, InsecureSkipVerify: rt.InsecureSkipVerify, RootCAs: r.RootCAs,
			Username: rt.Username, Password: password, Timeout: r.Timeout,
			Auth: smtpclient.Mechanism(strings.ToLower(rt.Mechanism)), Token: token,
		})
	}
	return route, nil
}

// SenderClass implements Router (config.Delivery.SenderClass).
func (r *ConfigRouter) SenderClass(sender string) string {
	return r.delivery.Load().SenderClass(sender)
}

// smarthostDest names a smart host destination by its hosts and the
// username it authenticates as (never the password): two accounts at one
// provider have caps, cool-downs and connections of their own.
func smarthostDest(hosts []string, username string) string {
	dest := "smarthost:" + strings.Join(hosts, ",")
	if username != "" {
		dest += ";user=" + username
	}
	return dest
}

// breakerHost names a target for the circuit breaker: its address, and
// the username it authenticates as, if any. A refused AUTH is that
// account's failure, not the host's: another account at the same host
// has a cool-down of its own.
func breakerHost(t Target) string {
	if t.Username == "" {
		return t.Addr
	}
	return t.Addr + ";user=" + t.Username
}

// mx routes by the domain's MX records (RFC 5321 §5.1): hosts by
// preference, in random order among equal ones, each host's addresses in
// turn. No MX record means the domain itself is the host (implicit MX); a
// null MX (RFC 7505) means the domain takes no mail. Every lookup goes
// through r.Resolver, the configured DNS servers, MX hosts' addresses
// included, so the dialer is handed addresses, never names.
//
// The destination, for caps and connection reuse, is the MX set: two
// domains served by the same hosts share one cap, as a per-source limit
// is the hosts'.
func (r *ConfigRouter) mx(ctx context.Context, domain string, port int, mode TLSMode, insecure bool) (*Route, error) {
	res := r.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	// Rooted, so that the resolver's search list is never appended.
	fqdn := strings.TrimSuffix(domain, ".") + "."
	mxs, err := res.LookupMX(ctx, fqdn)
	var hosts []string
	switch {
	case len(mxs) == 1 && isNullMX(mxs[0].Host):
		return nil, &smtpreply.Reply{Code: 556, Enhanced: smtpreply.CodeNullMX, Text: "domain " + domain + " does not accept mail (null MX)", Local: true}
	case len(mxs) > 0:
		// Malformed records come back with err set and the good ones kept:
		// deliver to those.
		hosts = r.order(mxs)
	case err == nil || isNotFound(err):
		// No MX (NODATA or NXDOMAIN): implicit MX, if the domain has
		// addresses at all (RFC 5321 §5.1).
		addrs, aerr := res.LookupIPAddr(ctx, fqdn)
		if aerr != nil || len(addrs) == 0 {
			if aerr == nil || isNotFound(aerr) {
				return nil, &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeBadDomain, Text: "domain " + domain + " does not exist", Local: true}
			}
			return nil, dnsTemp(domain, aerr)
		}
		host := strings.ToLower(strings.TrimSuffix(domain, "."))
		route := &Route{Destination: "mx:" + host}
		r.appendTargets(route, host, addrs, port, mode, insecure)
		return route, nil
	default:
		return nil, dnsTemp(domain, err)
	}

	route := &Route{Destination: "mx:" + mxSet(hosts)}
	var tempErr error
	for _, h := range hosts {
		if len(route.Targets) >= maxMXAddrs {
			break
		}
		addrs, err := res.LookupIPAddr(ctx, h+".")
		if err != nil {
			if !isNotFound(err) {
				tempErr = err
			}
			continue
		}
		r.appendTargets(route, h, addrs, port, mode, insecure)
	}
	if len(route.Targets) == 0 {
		if tempErr != nil {
			return nil, dnsTemp(domain, tempErr)
		}
		// RFC 5321 §5.1: MX records none of which is usable are an error;
		// a temporary one, as DNS may be fixed before the message expires.
		return nil, &smtpreply.Reply{Code: 451, Enhanced: codeMXUnusable, Local: true,
			Text: "no MX host of " + domain + " has an address (" + strings.Join(hosts, ", ") + ")"}
	}
	return route, nil
}

// order returns the MX hosts by preference, shuffled among equal ones
// (RFC 5321 §5.1), lower-case without the final dot; null MX entries
// among real ones are ignored.
func (r *ConfigRouter) order(mxs []*net.MX) []string {
	intN := r.IntN
	if intN == nil {
		intN = rand.IntN
	}
	// Sorted by preference and name first, so that the order depends on
	// intN alone (Go's resolver shuffles on its own), then each run of
	// equal preference is shuffled (Fisher-Yates).
	mxs = slices.Clone(mxs)
	sort.Slice(mxs, func(i, j int) bool {
		if mxs[i].Pref != mxs[j].Pref {
			return mxs[i].Pref < mxs[j].Pref
		}
		return strings.ToLower(mxs[i].Host) < strings.ToLower(mxs[j].Host)
	})
	for lo := 0; lo < len(mxs); {
		hi := lo + 1
		for hi < len(mxs) && mxs[hi].Pref == mxs[lo].Pref {
			hi++
		}
		for i := hi - 1; i > lo; i-- {
			j := lo + intN(i-lo+1)
			mxs[i], mxs[j] = mxs[j], mxs[i]
		}
		lo = hi
	}
	var hosts []string
	for _, mx := range mxs {
		if isNullMX(mx.Host) {
			continue
		}
		h := strings.ToLower(strings.TrimSuffix(mx.Host, "."))
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// appendTargets adds one target per address of host, up to maxMXAddrs.
// ServerName stays the host's name: STARTTLS sends it as SNI, and a
// verifying mode checks the certificate against it.
func (r *ConfigRouter) appendTargets(route *Route, host string, addrs []net.IPAddr, port int, mode TLSMode, insecure bool) {
	for _, a := range addrs {
		if len(route.Targets) >= maxMXAddrs {
			return
		}
		route.Targets = append(route.Targets, Target{
			Addr: net.JoinHostPort(a.IP.String(), strconv.Itoa(port)), TLS: mode,
			ServerName: host, InsecureSkipVerify: insecure, RootCAs: r.RootCAs, Timeout: r.Timeout,
		})
	}
}

// mxSet names a destination by its MX hosts, sorted, so that the order DNS
// gave them in does not matter.
func mxSet(hosts []string) string {
	s := slices.Clone(hosts)
	sort.Strings(s)
	return strings.Join(s, ",")
}

func isNullMX(host string) bool { return host == "." || host == "" }

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func dnsTemp(domain string, err error) *smtpreply.Reply {
	return &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeDNSTemp, Text: fmt.Sprintf("DNS lookup for %s failed: %v", domain, err), Local: true}
}
