package server

import (
	"context"
	"fmt"
	"net"

	"relayq/config"
	"relayq/internal/maildrop"
)

// pickupAddress returns where the maildrop pickup submits: the first
// listener in relay mode, reached on loopback; "" when there is none.
func pickupAddress(cfg *config.Config, listeners []net.Listener) string {
	for i, l := range listeners {
		if cfg.Listeners[i].Mode == config.ModeRelay {
			return config.LoopbackFor(l.Addr().String())
		}
	}
	return ""
}

// prepareMaildrop creates the maildrop directory with its mode and group
// (maildrop.Prepare). A directory relayq cannot prepare is an error at
// start: sendmail would fail to leave mail there.
func prepareMaildrop(cfg *config.Config) error {
	if err := maildrop.Prepare(cfg.MaildropDir(), cfg.Sendmail.MaildropGroup); err != nil {
		return fmt.Errorf("sendmail.maildrop %s: %w", cfg.MaildropDir(), err)
	}
	return nil
}

// startPickup starts the maildrop pickup; stopPickup ends it. Without a
// relay listener there is nothing to submit to: the files wait, and a
// warning says so.
func (in *Instance) startPickup(cfg *config.Config) {
	dir := cfg.MaildropDir()
	addr := pickupAddress(cfg, in.listeners)
	if in.opts.Submitter == nil {
		in.log.Warn().Str("dir", dir).Msg("maildrop: this instance has no submitter; messages left by sendmail wait in the maildrop")
		return
	}
	if addr == "" {
		in.log.Warn().Str("dir", dir).Msg("maildrop: no relay listener to submit to; messages left by sendmail wait in the maildrop")
		return
	}
	p := &maildrop.Pickup{
		Dir:    dir,
		Submit: in.opts.Submitter(addr, cfg.Hostname),
		Log:    in.log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	in.stopPickupFn = func() { cancel(); <-done }
	in.log.Info().Str("dir", dir).Str("via", addr).Msg("maildrop: picking up")
	go func() { defer close(done); p.Run(ctx) }()
}

// stopPickup waits for a submission in flight and stops the pickup.
func (in *Instance) stopPickup() {
	if in.stopPickupFn != nil {
		in.stopPickupFn()
	}
}
