package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"relayq/config"
	"relayq/internal/maildrop"
	"relayq/retry"
)

// smtpSubmitter submits messages over SMTP with the client of `relayq
// send`: `relayq sendmail` to the local relayq, and the maildrop pickup of
// relayq serve to its own relay listener, so that dropped mail goes
// through the same intake as any other.
type smtpSubmitter struct {
	server     string // host:port
	ehlo       string
	timeout    time.Duration // connect and each reply
	transcript io.Writer     // the SMTP dialogue (sendmail -v), or io.Discard
}

var _ maildrop.Submitter = (*smtpSubmitter)(nil)

// Submit implements maildrop.Submitter over one SMTP connection. Every
// error is a *retry.Reply (a reply, or one retry.FromError made up for a
// connection failure), or maildrop.RecipientErrors for recipients refused
// at RCPT.
func (s *smtpSubmitter) Submit(ctx context.Context, env maildrop.Envelope, body io.Reader, size int64) (string, error) {
	host, _, _ := net.SplitHostPort(s.server)
	o := &sendOptions{server: s.server, host: host, ehlo: s.ehlo, timeout: s.timeout}
	tr := &sendTranscript{out: s.transcript}
	c, err := sendDial(ctx, o, tr)
	if err != nil {
		return "", retry.FromError(retry.StageConnect, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.Hello(s.ehlo); err != nil {
		// A 421 greeting shows here too: the client reads it at EHLO.
		return "", retry.FromError(retry.StageHello, err)
	}
	reply, err := sendTransaction(c, tr, env.From, env.To, body, size)
	var refused sendRcptErrors
	switch {
	case errors.As(err, &refused):
		rcpts := make(maildrop.RecipientErrors, len(refused))
		for i, r := range refused {
			rcpts[i] = maildrop.Refusal{Rcpt: r.rcpt, Reply: retry.FromError(retry.StageRcpt, r.err)}
		}
		err = rcpts
	case err != nil:
		return "", retry.FromError(retry.StageMail, err)
	}
	if qerr := c.Quit(); qerr != nil && !errors.Is(qerr, net.ErrClosed) {
		tr.note("QUIT failed: %v", qerr)
	}
	return reply, err
}

// pickupTimeout bounds each reply of relayq's own listener to the pickup:
// generous, as back pressure may slow intake down.
const pickupTimeout = 2 * time.Minute

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
func (in *instance) startPickup(cfg *config.Config) {
	dir := cfg.MaildropDir()
	addr := pickupAddress(cfg, in.listeners)
	if addr == "" {
		in.log.Warn().Str("dir", dir).Msg("maildrop: no relay listener to submit to; messages left by sendmail wait in the maildrop")
		return
	}
	p := &maildrop.Pickup{
		Dir:    dir,
		Submit: &smtpSubmitter{server: addr, ehlo: cfg.Hostname, timeout: pickupTimeout, transcript: io.Discard},
		Log:    in.log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	in.stopPickupFn = func() { cancel(); <-done }
	in.log.Info().Str("dir", dir).Str("via", addr).Msg("maildrop: picking up")
	go func() { defer close(done); p.Run(ctx) }()
}

// stopPickup waits for a submission in flight and stops the pickup.
func (in *instance) stopPickup() {
	if in.stopPickupFn != nil {
		in.stopPickupFn()
	}
}
