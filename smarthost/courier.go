package smarthost

import (
	"context"
	"io"

	"relayq/smarthost/smtpclient"
)

// The SMTP client (dial, TLS, AUTH, PIPELINING, the transaction, the reply
// reader) is package smtpclient, which knows nothing of the queue. The
// delivery side uses it through Courier and Session only; its types that
// routes and results are made of are named here too.
type (
	Target     = smtpclient.Target
	TLSMode    = smtpclient.TLSMode
	Dialer     = smtpclient.Dialer
	DialError  = smtpclient.DialError
	Envelope   = smtpclient.Envelope
	RcptDSN    = smtpclient.RcptDSN
	RcptResult = smtpclient.RcptResult
)

// The TLS modes of a Target (smtpclient).
const (
	TLSNone          = smtpclient.TLSNone
	TLSOpportunistic = smtpclient.TLSOpportunistic
	TLSStartTLS      = smtpclient.TLSStartTLS
	TLSImplicit      = smtpclient.TLSImplicit
)

// ParseTLSMode parses a configured TLS mode (smtpclient.ParseTLSMode).
func ParseTLSMode(s string) (TLSMode, error) { return smtpclient.ParseTLSMode(s) }

// Courier opens sessions with next hops: all the delivery side needs of
// SMTP (chasquid's courier.Courier is the model). smtpCourier, over
// smtpclient, is the one relayq uses; a test may script outcomes with
// another.
type Courier interface {
	// Dial opens a session with target: connected, greeted, TLS and AUTH
	// as the target says. Its error is, or wraps, a *smtpreply.Reply; a
	// *DialError also says at which stage it failed.
	Dial(ctx context.Context, target Target) (Session, error)
}

// Session is one open connection to a next hop. It is not safe for
// concurrent use.
type Session interface {
	// Send runs one mail transaction for env with the body read from body
	// and returns exactly one RcptResult per recipient, in order, each
	// with a non-nil Reply. A non-nil error means the session is unusable:
	// Close it, never reuse it.
	Send(ctx context.Context, env Envelope, body io.Reader) ([]RcptResult, error)
	// Addr is the host:port the session is connected to.
	Addr() string
	// Close ends the session (QUIT unless it is broken). It may be called
	// more than once.
	Close() error
}

var _ Session = (*smtpclient.Conn)(nil)

// smtpCourier is the Courier of the SMTP client: connections through
// dialer, greeting as hello.
type smtpCourier struct {
	dialer Dialer
	hello  string
}

func (c smtpCourier) Dial(ctx context.Context, t Target) (Session, error) {
	conn, err := smtpclient.Dial(ctx, c.dialer, t, c.hello)
	if err != nil {
		return nil, err
	}
	return conn, nil
}
