package main

import (
	"context"
	"errors"
	"io"
	"net"
	"time"

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
// error is a *smtpreply.Reply (a reply, or one retry.FromError made up for a
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

// pickupSubmitter is how the maildrop pickup of relayq serve submits to
// addr, its own relay listener (server.Options.Submitter).
func pickupSubmitter(addr, hello string) maildrop.Submitter {
	return &smtpSubmitter{server: addr, ehlo: hello, timeout: pickupTimeout, transcript: io.Discard}
}
