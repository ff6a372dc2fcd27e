package smarthost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"relayq/config"
	"relayq/retry"
)

// ConfigRouter routes by the [delivery] section of the configuration: the
// first matching [[delivery.route]], else the smart host, else MX. The
// configuration can be swapped at run time (reload); the next attempt uses
// the new one.
type ConfigRouter struct {
	delivery atomic.Pointer[config.Delivery]
	// Resolver looks up MX and address records; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// Timeout bounds each SMTP command on the routes' connections.
	Timeout time.Duration
}

var _ Router = (*ConfigRouter)(nil)

// NewConfigRouter returns a router for d.
func NewConfigRouter(d config.Delivery, resolver *net.Resolver) *ConfigRouter {
	r := &ConfigRouter{Resolver: resolver}
	r.Set(d)
	return r
}

// Set replaces the delivery configuration.
func (r *ConfigRouter) Set(d config.Delivery) { r.delivery.Store(&d) }

// Route implements Router.
func (r *ConfigRouter) Route(ctx context.Context, domain string) (*Route, error) {
	d := r.delivery.Load()
	rt := d.RouteFor(domain)
	mode, err := ParseTLSMode(rt.TLS)
	if err != nil {
		return nil, &retry.Reply{Code: 451, Enhanced: retry.CodeTempLocal, Text: "bad route configuration: " + err.Error(), Local: true}
	}
	if rt.Via == config.ViaMX {
		return r.mx(ctx, domain, d.MXPort, mode)
	}
	password, err := rt.Password()
	if err != nil {
		return nil, &retry.Reply{Code: 451, Enhanced: retry.CodeTempLocal, Text: "smart host password: " + err.Error(), Local: true}
	}
	route := &Route{Destination: "smarthost:" + strings.Join(rt.Hosts, ",")}
	for _, h := range rt.Hosts {
		route.Targets = append(route.Targets, Target{
			Addr: h, TLS: mode, InsecureSkipVerify: rt.InsecureSkipVerify,
			Username: rt.Username, Password: password, Timeout: r.Timeout,
		})
	}
	return route, nil
}

// mx routes by the domain's MX records (RFC 5321 §5.1): by preference,
// random among equal ones (Go's resolver shuffles them); no MX record means
// the domain itself is the host (implicit MX); a null MX (RFC 7505) means
// the domain takes no mail.
func (r *ConfigRouter) mx(ctx context.Context, domain string, port int, mode TLSMode) (*Route, error) {
	res := r.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	mxs, err := res.LookupMX(ctx, domain)
	var hosts []string
	switch {
	case err == nil && len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == ""):
		return nil, &retry.Reply{Code: 556, Enhanced: retry.CodeNullMX, Text: "domain " + domain + " does not accept mail (null MX)", Local: true}
	case err == nil && len(mxs) > 0:
		sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
		for _, mx := range mxs {
			hosts = append(hosts, strings.TrimSuffix(mx.Host, "."))
		}
	case err == nil || isNotFound(err):
		// No MX: implicit MX, if the domain has addresses at all.
		if _, aerr := res.LookupIPAddr(ctx, domain); aerr != nil {
			if isNotFound(aerr) {
				return nil, &retry.Reply{Code: 550, Enhanced: retry.CodeBadDomain, Text: "domain " + domain + " does not exist", Local: true}
			}
			return nil, dnsTemp(domain, aerr)
		}
		hosts = []string{domain}
	default:
		return nil, dnsTemp(domain, err)
	}
	route := &Route{Destination: "mx:" + domain}
	for _, h := range hosts {
		route.Targets = append(route.Targets, Target{
			Addr: net.JoinHostPort(h, strconv.Itoa(port)), TLS: mode,
			ServerName: h, InsecureSkipVerify: true, Timeout: r.Timeout,
		})
	}
	return route, nil
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func dnsTemp(domain string, err error) *retry.Reply {
	return &retry.Reply{Code: 451, Enhanced: retry.CodeDNSTemp, Text: fmt.Sprintf("DNS lookup for %s failed: %v", domain, err), Local: true}
}
