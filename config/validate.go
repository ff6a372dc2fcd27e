package config

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/crypto/bcrypt"
)

// problems collects validation errors, each prefixed with the key it is
// about, so that one run of `relayq config check` lists them all.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

// oneOf checks that v is one of allowed.
func (p *problems) oneOf(key, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	p.add(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

func (p *problems) positive(key string, v int) {
	if v <= 0 {
		p.add(key, "must be > 0")
	}
}

// Validate checks every value and every relation between values. Each
// problem is an error starting with the key it is about
// ("limits.max_message_size: must be > 0"); all problems are joined with
// errors.Join. It does no I/O: certificate and password files are read
// when they are used.
func (c *Config) Validate() error {
	var p problems
	if c.Hostname == "" {
		p.add("hostname", "must not be empty")
	} else if strings.ContainsFunc(c.Hostname, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		// It is the EHLO argument (RFC 5321 §4.1.1.1): one word.
		p.add("hostname", "%q contains white space or control characters", c.Hostname)
	}
	if c.DataDir == "" {
		p.add("data_dir", "must not be empty")
	}
	c.validateListeners(&p)
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		p.add("tls", "cert_file and key_file must be set together")
	}
	c.validateRelay(&p)
	c.validateLimits(&p)
	c.validateBackPressure(&p)
	c.validateDelivery(&p)
	c.validateRetry(&p)
	c.validateAdmin(&p)
	c.validateDKIM(&p)
	c.validateSendmail(&p)
	c.validateCluster(&p)
	p.oneOf("log.format", c.Log.Format, LogFormatAuto, LogFormatJSON, LogFormatConsole)
	p.oneOf("log.level", c.Log.Level, "trace", "debug", "info", "warn", "error")
	return errors.Join(p...)
}

func (c *Config) validateListeners(p *problems) {
	if len(c.Listeners) == 0 {
		p.add("listener", "at least one [[listener]] is required")
	}
	seen := map[string]int{}
	for i, l := range c.Listeners {
		key := fmt.Sprintf("listener[%d]", i)
		if err := checkHostPort(l.Address, true); err != nil {
			p.add(key+".address", "%v", err)
		} else if host, port, _ := net.SplitHostPort(l.Address); port != "0" {
			// Port 0 asks the kernel for a free port each time: not a clash.
			norm := net.JoinHostPort(strings.ToLower(host), port)
			if j, dup := seen[norm]; dup {
				p.add(key+".address", "%q is also the address of listener[%d]", l.Address, j)
			}
			seen[norm] = i
		}
		p.oneOf(key+".mode", l.Mode, ModeRelay, ModeSubmission, ModeSMTPS)
		switch l.Mode {
		case ModeSMTPS:
			if !c.TLS.Enabled() {
				p.add(key+".mode", "smtps needs a certificate: set [tls] cert_file and key_file")
			}
		case ModeSubmission:
			if len(c.Relay.Users) == 0 {
				p.add(key+".mode", "submission requires AUTH, but there is no [[relay.user]]")
			}
			if !c.TLS.Enabled() && !l.AllowInsecureAuth {
				// Without TLS go-smtp does not offer AUTH (RFC 4954 §4), so
				// nobody could ever send through this listener.
				p.add(key+".mode", "submission requires AUTH, which needs [tls] cert_file and key_file or allow_insecure_auth = true")
			}
		}
	}
}

func (c *Config) validateRelay(p *problems) {
	for i, n := range c.Relay.AllowedNetworks {
		if _, err := parseNetwork(n); err != nil {
			p.add(fmt.Sprintf("relay.allowed_networks[%d]", i), "%q is not a network (want \"10.0.0.0/8\", \"2001:db8::/32\" or an address)", n)
		}
	}
	names := map[string]int{}
	for i, u := range c.Relay.Users {
		key := fmt.Sprintf("relay.user[%d]", i)
		if u.Name == "" {
			p.add(key+".name", "must not be empty")
		} else if j, dup := names[u.Name]; dup {
			p.add(key+".name", "%q is also the name of relay.user[%d]", u.Name, j)
		} else {
			names[u.Name] = i
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			p.add(key+".password_hash", "not a bcrypt hash (%v); `relayq passwd` prints one", err)
		}
	}
}

func (c *Config) validateLimits(p *problems) {
	l := c.Limits
	if l.MaxMessageSize <= 0 {
		p.add("limits.max_message_size", "must be > 0")
	}
	p.positive("limits.max_recipients", l.MaxRecipients)
	p.positive("limits.max_connections", l.MaxConnections)
	p.positive("limits.max_connections_per_source", l.MaxConnectionsPerSource)
	p.positive("limits.max_hops", l.MaxHops)
	p.oneOf("limits.bare_line_endings", l.BareLineEndings, BareLineEndingsNormalize, BareLineEndingsReject)
	for _, r := range []struct {
		key string
		v   int
	}{
		{"limits.max_messages_per_hour_per_user", l.MaxMessagesPerHourPerUser},
		{"limits.max_messages_per_hour_per_source", l.MaxMessagesPerHourPerSource},
		{"limits.max_recipients_per_hour_per_user", l.MaxRecipientsPerHourPerUser},
	} {
		if r.v < 0 {
			p.add(r.key, "must not be negative (0 turns the limit off)")
		}
	}
}

func (c *Config) validateBackPressure(p *problems) {
	b := c.BackPressure
	if b.FreeDiskHigh < 0 {
		p.add("back_pressure.free_disk_high", "must not be negative")
	}
	if b.FreeDiskMedium < b.FreeDiskHigh {
		// Less free space is worse: "high" pressure starts below the smaller number.
		p.add("back_pressure.free_disk_medium", "%s is less than back_pressure.free_disk_high (%s)", b.FreeDiskMedium, b.FreeDiskHigh)
	}
	for _, t := range []struct {
		key string
		v   Size
	}{{"back_pressure.free_disk_medium", b.FreeDiskMedium}, {"back_pressure.free_disk_high", b.FreeDiskHigh}} {
		if b.Enabled && t.v > 0 && t.v < DiskReserve {
			// The reserve refuses mail first: the level would never be
			// seen, and clients would get their refusal after sending the
			// body instead of at MAIL.
			p.add(t.key, "%s is below the %s the queue keeps free on its volume (it refuses mail below that anyway): set at least %s, or 0 to turn this level off",
				t.v, DiskReserve, DiskReserve)
		}
	}
	p.positive("back_pressure.queue_messages_medium", b.QueueMessagesMedium)
	p.positive("back_pressure.queue_messages_high", b.QueueMessagesHigh)
	if b.QueueMessagesMedium > b.QueueMessagesHigh {
		p.add("back_pressure.queue_messages_medium", "%d is more than back_pressure.queue_messages_high (%d)", b.QueueMessagesMedium, b.QueueMessagesHigh)
	}
	for _, m := range []struct {
		key string
		v   Percent
	}{{"back_pressure.memory_medium", b.MemoryMedium}, {"back_pressure.memory_high", b.MemoryHigh}} {
		if m.v <= 0 || m.v > 1 {
			p.add(m.key, "%s is not above 0%% and at most 100%% (write \"75%%\" or 0.75)", m.v)
		}
	}
	if b.MemoryMedium > b.MemoryHigh {
		p.add("back_pressure.memory_medium", "%s is more than back_pressure.memory_high (%s)", b.MemoryMedium, b.MemoryHigh)
	}
}

func (c *Config) validateDelivery(p *problems) {
	d := c.Delivery
	for i, s := range d.DNSServers {
		if err := checkDNSServer(s); err != nil {
			p.add(fmt.Sprintf("delivery.dns_servers[%d]", i), "%v", err)
		}
	}
	if d.MXPort < 1 || d.MXPort > 65535 {
		p.add("delivery.mx_port", "%d is not a port (1-65535)", d.MXPort)
	}
	p.positive("delivery.max_connections", d.MaxConnections)
	p.positive("delivery.max_connections_per_destination", d.MaxConnectionsPerDestination)

	s := d.Smarthost
	for i, h := range s.Hosts {
		if err := checkHostPort(h, false); err != nil {
			p.add(fmt.Sprintf("delivery.smarthost.hosts[%d]", i), "%v", err)
		}
	}
	p.oneOf("delivery.smarthost.tls", s.TLS, TLSNone, TLSOpportunistic, TLSStartTLS, TLSImplicit)
	checkCredentials(p, "delivery.smarthost", s.Username, s.PasswordFile, s.PasswordEnv, s.AuthKeys)
	d.validateRates(p)

	for i, r := range d.Routes {
		key := fmt.Sprintf("delivery.route[%d]", i)
		if len(r.Domains) == 0 && len(r.Senders) == 0 {
			p.add(key+".domains", "at least one domain or sender is required")
		}
		for j, dom := range r.Domains {
			if err := checkDomainPattern(dom); err != nil {
				p.add(fmt.Sprintf("%s.domains[%d]", key, j), "%v", err)
			}
		}
		validateRouteSenders(p, key, r)
		if r.TLS != "" {
			p.oneOf(key+".tls", r.TLS, TLSNone, TLSOpportunistic, TLSStartTLS, TLSImplicit)
		}
		hasCreds := r.Username != "" || r.PasswordFile != "" || r.PasswordEnv != "" || !r.AuthKeys.isZero()
		switch r.Via {
		case ViaMX:
			if len(r.Hosts) > 0 {
				p.add(key+".hosts", "only for via = %q; MX delivery finds its hosts in DNS", ViaSmarthost)
			}
			if hasCreds {
				p.add(key+".username", "credentials are only for via = %q", ViaSmarthost)
			}
			if r.TLS == TLSImplicit {
				p.add(key+".tls", "implicit TLS is not possible on port %d MX delivery", d.MXPort)
			}
		case ViaSmarthost:
			if len(r.Hosts) == 0 {
				if len(s.Hosts) == 0 {
					p.add(key+".hosts", "empty, and [delivery.smarthost] has no hosts to use instead")
				}
				if hasCreds || r.TLS != "" || r.InsecureSkipVerify {
					p.add(key, "a route without hosts uses [delivery.smarthost] as configured; set tls and credentials there or give the route its own hosts")
				}
			}
			for j, h := range r.Hosts {
				if err := checkHostPort(h, false); err != nil {
					p.add(fmt.Sprintf("%s.hosts[%d]", key, j), "%v", err)
				}
			}
			checkCredentials(p, key, r.Username, r.PasswordFile, r.PasswordEnv, r.AuthKeys)
		default:
			p.oneOf(key+".via", r.Via, ViaMX, ViaSmarthost)
		}
	}
}

func (c *Config) validateRetry(p *problems) {
	r := c.Retry
	if r.MinBackoff <= 0 {
		p.add("retry.min_backoff", "must be > 0")
	}
	if r.MaxBackoff <= 0 {
		p.add("retry.max_backoff", "must be > 0")
	}
	if r.MinBackoff > r.MaxBackoff {
		p.add("retry.min_backoff", "must not exceed retry.max_backoff (%s > %s)", r.MinBackoff, r.MaxBackoff)
	}
	if r.MaxQueueLifetime <= 0 {
		p.add("retry.max_queue_lifetime", "must be > 0")
	}
	if r.DelayWarning < 0 {
		p.add("retry.delay_warning", "must not be negative (\"0s\" turns delay DSNs off)")
	} else if r.DelayWarning > 0 && r.DelayWarning >= r.MaxQueueLifetime {
		p.add("retry.delay_warning", "%s is not less than retry.max_queue_lifetime (%s), so no delay DSN would ever be sent; use \"0s\" to turn them off", r.DelayWarning, r.MaxQueueLifetime)
	}
}

func (c *Config) validateAdmin(p *problems) {
	a := c.Admin
	if a.Address == "" {
		return // admin API off
	}
	if err := checkHostPort(a.Address, true); err != nil {
		p.add("admin.address", "%v", err)
		return
	}
	host, _, _ := net.SplitHostPort(a.Address)
	if a.Token == "" && !isLoopback(host) {
		// The API can delete queued mail: never open it to a network unauthenticated.
		p.add("admin.token", "required when admin.address (%q) is not a loopback address", a.Address)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// checkHostPort checks a "host:port" address; port 0 only if allowZero.
func checkHostPort(s string, allowZero bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return fmt.Errorf("%q: host contains white space", s)
	}
	n, err := strconv.Atoi(port)
	lo := 1
	if allowZero {
		lo = 0
	}
	if err != nil || n < lo || n > 65535 {
		return fmt.Errorf("%q: port %q is not %d-65535", s, port, lo)
	}
	return nil
}

func checkDNSServer(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return fmt.Errorf("%q is not an IP address or ip:port", s)
	}
	return nil
}

func checkDomainPattern(s string) error {
	name := strings.TrimPrefix(strings.TrimSuffix(s, "."), "*.")
	if name == "" || strings.ContainsAny(name, "*@:/[]") ||
		strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("%q is not a domain or *.domain pattern", s)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Errorf("%q has an empty label", s)
		}
	}
	return nil
}

// validateRouteSenders checks a route's senders and sender rewriting.
func validateRouteSenders(p *problems, key string, r Route) {
	for j, s := range r.Senders {
		if err := checkSenderPattern(s); err != nil {
			p.add(fmt.Sprintf("%s.senders[%d]", key, j), "%v", err)
		}
	}
	if r.RewriteSender != "" {
		if a, err := mail.ParseAddress(r.RewriteSender); err != nil || a.Address != r.RewriteSender || a.Name != "" {
			p.add(key+".rewrite_sender", "%q is not a bare address such as relay@example.net", r.RewriteSender)
		}
	}
	switch r.RewriteFrom {
	case "", RewriteFromKeep:
	case RewriteFromReplace, RewriteFromReplyTo:
		if r.RewriteSender == "" {
			p.add(key+".rewrite_from", "%q needs rewrite_sender, the address From: becomes", r.RewriteFrom)
		}
	default:
		p.oneOf(key+".rewrite_from", r.RewriteFrom, RewriteFromKeep, RewriteFromReplace, RewriteFromReplyTo)
	}
}

// checkSenderPattern accepts "*@domain" and "local@domain".
func checkSenderPattern(s string) error {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || strings.ContainsAny(domain, "*@") || checkDomainPattern(domain) != nil ||
		strings.ContainsFunc(local, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '@' }) ||
		strings.Contains(local, "*") && local != "*" {
		return fmt.Errorf("%q is not an address or *@domain pattern", s)
	}
	return nil
}
