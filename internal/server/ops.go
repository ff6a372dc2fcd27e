package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"relayq/admin"
	"relayq/config"
	"relayq/pressure"
	"relayq/relay"
	"relayq/retry"
	"relayq/smarthost"
)

// The operator side of a running Instance: the admin HTTP server and
// configuration reload. Start() calls listenAdmin with the other listeners
// (so a bad address fails the start before anything runs) and serveAdmin
// last; stop() calls stopAdmin first.

// listenAdmin binds admin.address ("" = no admin server). Without a token
// it must be a loopback address: the API can delete queued mail.
// config.Validate says the same; this holds for a config that skipped it.
func (in *Instance) listenAdmin(a config.Admin) error {
	if a.Address == "" {
		return nil
	}
	if a.Token == "" && !loopbackAddress(a.Address) {
		return fmt.Errorf("admin.token: required when admin.address (%q) is not a loopback address", a.Address)
	}
	l, err := net.Listen("tcp", a.Address)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", a.Address, err)
	}
	in.adminLn = l
	return nil
}

func loopbackAddress(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// serveAdmin starts the admin server on the bound listener.
func (in *Instance) serveAdmin(cfg *config.Config, opts admin.Options) {
	if in.adminLn == nil {
		return
	}
	if opts.Queue == nil {
		opts.Queue = in.store
	}
	opts.Metrics = in.metrics
	opts.Events = in.events
	opts.Token = cfg.Admin.Token
	opts.Hostname = cfg.Hostname
	opts.Version = in.opts.Version
	opts.Reload = in.Reload
	opts.Log = in.log
	in.admin = admin.New(opts)
	in.adminDone = make(chan error, 1)
	go func() { in.adminDone <- in.admin.Serve(in.adminLn) }()
}

// AdminAddr is the bound admin address, "" without an admin server.
func (in *Instance) AdminAddr() string {
	if in.adminLn == nil {
		return ""
	}
	return in.adminLn.Addr().String()
}

// stopAdmin shuts the admin server down, letting requests in flight finish
// (they may use the queue, which closes after this).
func (in *Instance) stopAdmin(ctx context.Context) error {
	if in.admin == nil {
		return nil
	}
	err := in.admin.Shutdown(ctx)
	return errors.Join(err, <-in.adminDone)
}

// SetLoader sets how Reload reads the configuration: the same file and
// flags the Instance started with.
func (in *Instance) SetLoader(load func() (*config.Config, error)) {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	in.load = load
}

// onReload adds a setter that applies a reloaded configuration to one
// running component. Setters run in order, after the new configuration
// passed validation, and must not fail: whatever can be wrong with a value
// is caught by config.Validate.
func (in *Instance) onReload(apply func(*config.Config)) {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	in.reloaders = append(in.reloaders, apply)
}

// Reload re-reads the configuration (SIGHUP, POST /api/reload). A file that
// does not load or validate is rejected with a log line and the running
// configuration stays; otherwise every setter gets the new one and
// connections stay up. Keys that only a restart can change are logged at
// every reload until a restart applies them: in.cfg stays the
// configuration the Instance started with.
func (in *Instance) Reload() error {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	if in.load == nil {
		return errors.New("this Instance has no configuration source to reload")
	}
	cfg, err := in.load()
	if err != nil {
		in.log.Error().Err(err).Msg("config reload rejected; the running configuration stays")
		return err
	}
	for _, key := range restartOnly(in.cfg, cfg) {
		in.log.Warn().Str("key", key).Msg("config reload: this key changed but only applies after a restart")
	}
	for _, apply := range in.reloaders {
		apply(cfg)
	}
	in.log.Info().Int("applied", len(in.reloaders)).Msg("config reloaded")
	return nil
}

// restartOnly names the keys that differ between old (the configuration
// started with) and new and that a reload cannot apply: sockets, the queue
// directory, the admin server and logging are set up once; go-smtp
// advertises SIZE, offers STARTTLS and greets with the host name from its
// own fields, which cannot change while it serves; the total of outbound
// connections sizes the worker's pool. Back pressure can be turned off and
// on again live, but not on when it was off at start: there is no monitor.
func restartOnly(old, new *config.Config) []string {
	if old == nil {
		return nil
	}
	var keys []string
	if !old.BackPressure.Enabled && new.BackPressure.Enabled {
		keys = append(keys, "back_pressure.enabled")
	}
	for _, c := range []struct {
		key      string
		old, new any
	}{
		{"data_dir", old.DataDir, new.DataDir},
		{"listener", old.Listeners, new.Listeners},
		{"admin", old.Admin, new.Admin},
		{"log", old.Log, new.Log},
		{"delivery.dns_servers", old.Delivery.DNSServers, new.Delivery.DNSServers},
		{"delivery.max_connections", old.Delivery.MaxConnections, new.Delivery.MaxConnections},
		{"hostname", old.Hostname, new.Hostname},
		{"tls", old.TLS, new.TLS},
		{"limits.max_message_size", old.Limits.MaxMessageSize, new.Limits.MaxMessageSize},
		{"dkim", old.DKIM, new.DKIM},
	} {
		if !reflect.DeepEqual(c.old, c.new) {
			keys = append(keys, c.key)
		}
	}
	return keys
}

// reloadLive registers the setters that apply a reloaded configuration to
// the running relay server and delivery worker, without closing a
// connection: the relay policy (allowed networks, users, limits other than
// the message size, connection caps), the back-pressure thresholds (and
// the queue's reclaim threshold with them), the retry timings and the
// per-destination connection cap. Routes have their own setter (start).
func (in *Instance) reloadLive(worker *smarthost.Worker) {
	in.onReload(func(c *config.Config) {
		in.srv.SetPolicy(relayPolicy(c))
		// Without a monitor (back pressure off at start) this does nothing
		// and restartOnly says so.
		in.pressure.SetThresholds(thresholdsOf(c.BackPressure))
		in.store.SetReclaimBelow(reclaimBelow(c.BackPressure))
		worker.SetRetry(backoffOf(c.Retry), c.Retry.MaxQueueLifetime.Std(), c.Retry.DelayWarning.Std())
		worker.SetMaxConnsPerDest(c.Delivery.MaxConnectionsPerDestination)
	})
}

// certPoll is how often the listeners' certificate files are looked at: a
// renewed certificate is served within this time, with no SIGHUP needed.
const certPoll = 2 * time.Second

// watchCerts reloads the listeners' certificate when its files change and
// at every configuration reload (SIGHUP, POST /api/reload). A pair that
// does not load is logged and the one in use stays.
func (in *Instance) watchCerts(log zerolog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	in.stopCerts = cancel
	go in.certs.Watch(ctx, certPoll, log)
	in.onReload(func(*config.Config) {
		if err := in.certs.Reload(); err != nil {
			log.Error().Err(err).Msg("config reload: the certificate does not load; the previous one stays in use")
		}
	})
}

// relayPolicy is the part of the inbound configuration that a reload can
// change (relay.Policy).
func relayPolicy(c *config.Config) relay.Policy {
	p := relay.Policy{
		AllowedNetworks:         c.Relay.Networks(),
		MaxRecipients:           c.Limits.MaxRecipients,
		MaxHops:                 c.Limits.MaxHops,
		MaxConnections:          c.Limits.MaxConnections,
		MaxConnectionsPerSource: c.Limits.MaxConnectionsPerSource,
		Rate: relay.RateLimits{
			MessagesPerUser:   c.Limits.MaxMessagesPerHourPerUser,
			MessagesPerSource: c.Limits.MaxMessagesPerHourPerSource,
			RecipientsPerUser: c.Limits.MaxRecipientsPerHourPerUser,
		},
	}
	if c.Limits.BareLineEndings == config.BareLineEndingsReject {
		p.BareLineEndings = relay.BareReject
	}
	if len(c.Relay.Users) > 0 {
		p.Users = make(map[string]string, len(c.Relay.Users))
		for _, u := range c.Relay.Users {
			p.Users[u.Name] = u.PasswordHash
		}
	}
	return p
}

// thresholdsOf is [back_pressure] as the monitor's thresholds.
func thresholdsOf(bp config.BackPressure) pressure.Thresholds {
	return pressure.Thresholds{
		FreeDiskMedium:      int64(bp.FreeDiskMedium),
		FreeDiskHigh:        int64(bp.FreeDiskHigh),
		QueueMessagesMedium: int64(bp.QueueMessagesMedium),
		QueueMessagesHigh:   int64(bp.QueueMessagesHigh),
		MemoryMedium:        float64(bp.MemoryMedium),
		MemoryHigh:          float64(bp.MemoryHigh),
		Off:                 !bp.Enabled,
	}
}

// backoffOf is [retry]'s backoff, with retry's jitter.
func backoffOf(r config.Retry) retry.Backoff {
	return retry.Backoff{Min: r.MinBackoff.Std(), Max: r.MaxBackoff.Std(), Jitter: retry.Jitter}
}
