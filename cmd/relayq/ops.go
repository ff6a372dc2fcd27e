package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"

	"relayq/admin"
	"relayq/config"
)

// The operator side of a running instance: the admin HTTP server and
// configuration reload. start() calls listenAdmin with the other listeners
// (so a bad address fails the start before anything runs) and serveAdmin
// last; stop() calls stopAdmin first.

// listenAdmin binds admin.address ("" = no admin server). Without a token
// it must be a loopback address: the API can delete queued mail.
// config.Validate says the same; this holds for a config that skipped it.
func (in *instance) listenAdmin(a config.Admin) error {
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
func (in *instance) serveAdmin(cfg *config.Config, opts admin.Options) {
	if in.adminLn == nil {
		return
	}
	opts.Queue = in.store
	opts.Metrics = in.metrics
	opts.Events = in.events
	opts.Token = cfg.Admin.Token
	opts.Hostname = cfg.Hostname
	opts.Version = version
	opts.Reload = in.reload
	opts.Log = in.log
	in.admin = admin.New(opts)
	in.adminDone = make(chan error, 1)
	go func() { in.adminDone <- in.admin.Serve(in.adminLn) }()
}

// adminAddr is the bound admin address, "" without an admin server.
func (in *instance) adminAddr() string {
	if in.adminLn == nil {
		return ""
	}
	return in.adminLn.Addr().String()
}

// stopAdmin shuts the admin server down, letting requests in flight finish
// (they may use the queue, which closes after this).
func (in *instance) stopAdmin(ctx context.Context) error {
	if in.admin == nil {
		return nil
	}
	err := in.admin.Shutdown(ctx)
	return errors.Join(err, <-in.adminDone)
}

// setLoader sets how reload reads the configuration: the same file and
// flags the instance started with.
func (in *instance) setLoader(load func() (*config.Config, error)) {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	in.load = load
}

// onReload adds a setter that applies a reloaded configuration to one
// running component. Setters run in order, after the new configuration
// passed validation, and must not fail: whatever can be wrong with a value
// is caught by config.Validate.
func (in *instance) onReload(apply func(*config.Config)) {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	in.reloaders = append(in.reloaders, apply)
}

// reload re-reads the configuration (SIGHUP, POST /api/reload). A file that
// does not load or validate is rejected with a log line and the running
// configuration stays; otherwise every setter gets the new one and
// connections stay up. Keys that only a restart can change are logged.
func (in *instance) reload() error {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	if in.load == nil {
		return errors.New("this instance has no configuration source to reload")
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
	in.cfg = cfg
	in.log.Info().Int("applied", len(in.reloaders)).Msg("config reloaded")
	return nil
}

// restartOnly names the keys that differ between old and new and that a
// reload cannot apply: sockets, the queue directory, the admin server and
// logging are set up once.
func restartOnly(old, new *config.Config) []string {
	if old == nil {
		return nil
	}
	var keys []string
	for _, c := range []struct {
		key      string
		old, new any
	}{
		{"data_dir", old.DataDir, new.DataDir},
		{"listener", old.Listeners, new.Listeners},
		{"admin", old.Admin, new.Admin},
		{"log", old.Log, new.Log},
		{"delivery.dns_servers", old.Delivery.DNSServers, new.Delivery.DNSServers},
	} {
		if !reflect.DeepEqual(c.old, c.new) {
			keys = append(keys, c.key)
		}
	}
	return keys
}
