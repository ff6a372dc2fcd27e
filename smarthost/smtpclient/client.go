package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// TLSMode says how a connection to a next hop is protected.
type TLSMode string

const (
	TLSNone          TLSMode = "none"          // plaintext, STARTTLS never tried
	TLSOpportunistic TLSMode = "opportunistic" // STARTTLS if offered, certificate not verified (RFC 7435)
	TLSStartTLS      TLSMode = "starttls"      // STARTTLS required and verified (RFC 3207)
	TLSImplicit      TLSMode = "implicit"      // TLS from the first byte, verified (RFC 8314 §3.3)
)

// ParseTLSMode parses a config value: none, opportunistic, starttls or
// implicit (case-insensitive). The empty string is an error: the config
// layer applies its own default.
func ParseTLSMode(s string) (TLSMode, error) {
	switch m := TLSMode(strings.ToLower(strings.TrimSpace(s))); m {
	case TLSNone, TLSOpportunistic, TLSStartTLS, TLSImplicit:
		return m, nil
	}
	return "", fmt.Errorf("tls mode %q: want none, opportunistic, starttls or implicit", s)
}

// Dialer is what Dial needs to open TCP connections; *net.Dialer satisfies it.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

var _ Dialer = (*net.Dialer)(nil)

// Target says how to reach one next-hop host.
type Target struct {
	Addr               string // host:port
	TLS                TLSMode
	ServerName         string // for certificate checks; "" = host part of Addr
	InsecureSkipVerify bool
	RootCAs            *x509.CertPool // nil = system roots (tests pass their own)
	Username, Password string         // AUTH when Username != "", as Auth says
	Auth               Mechanism      // "" = AuthPlain
	Token              TokenSource    // the bearer tokens of AuthXOAuth2 and AuthOAuthBearer
	Timeout            time.Duration  // per command; 0 = DefaultTimeout
}

const (
	// DefaultTimeout is the per-command timeout when Target.Timeout is 0:
	// RFC 5321 §4.5.3.2 asks for minutes, 5 for most commands.
	DefaultTimeout = 5 * time.Minute
	// quitTimeout bounds the polite QUIT of Close: nothing rides on it.
	quitTimeout = 10 * time.Second
)

// DialError is the error Dial returns: the reply that ended the attempt and
// the stage it ended at (retry.StageConnect for the dial, the greeting and
// implicit TLS; retry.StageHello for EHLO, STARTTLS and AUTH), so that the
// caller can classify it with retry.Classify(e.Stage, e.Reply).
type DialError struct {
	Stage retry.Stage
	Reply *smtpreply.Reply
}

func (e *DialError) Error() string { return e.Reply.Error() }

// Unwrap makes errors.As(err, &reply) find the *smtpreply.Reply.
func (e *DialError) Unwrap() error { return e.Reply }

// Conn is an open, greeted (and, as configured, TLS-protected and
// authenticated) SMTP session to one host, reusable for several messages.
// It is not safe for concurrent use: one delivery at a time.
type Conn struct {
	// client does the opening (greeting, EHLO, STARTTLS, AUTH) and answers
	// Extension from its EHLO; after Dial it never reads or writes again:
	// the transactions, RSET and QUIT are spoken through r and out
	// (pipeline.go).
	client  *smtp.Client
	raw     net.Conn      // the TCP connection: closed to abort on ctx
	wire    *replayConn   // what is read and written: raw, or TLS over it
	r       *bufio.Reader // replies from wire, once Dial is done; nil before
	out     []byte        // commands (a pipelined group) or the end of the data, for one write
	ext     extensions    // what the transaction needs of the EHLO reply
	addr    string
	hello   string
	tls     bool
	timeout time.Duration
	// broken is set after a 421, an I/O error, a timeout or a cancelled ctx:
	// the session can no longer be trusted to be in step, so it is closed
	// without QUIT (RFC 5321 §3.8) and never reused.
	broken bool
	closed bool
}

// Dial connects to t.Addr, reads the greeting, says EHLO hello (HELO if EHLO
// is refused), protects the session as t.TLS says and authenticates when
// t.Username is set. TLS modes:
//
//   - none: plaintext.
//   - opportunistic: STARTTLS when offered, certificate not verified; plaintext
//     when not offered. A STARTTLS that is refused or whose handshake fails is
//     an error: the host is deferred, never continued in plaintext on the same
//     connection, where an attacker could have provoked the failure.
//   - starttls: STARTTLS required and verified unless t.InsecureSkipVerify.
//   - implicit: TLS from the first byte, verified unless t.InsecureSkipVerify.
//
// Every error is a *DialError wrapping a *smtpreply.Reply: the remote's reply
// (e.g. a 421 greeting or a 535 to AUTH), or a local one: 451 4.4.1 for a
// failed dial or TLS handshake, 451 4.4.2 for a dropped connection, 530 5.7.0
// when AUTH is configured but not offered. ctx bounds the whole of Dial.
func Dial(ctx context.Context, d Dialer, t Target, hello string) (*Conn, error) {
	fail := func(stage retry.Stage, r *smtpreply.Reply) (*Conn, error) {
		return nil, &DialError{Stage: stage, Reply: r}
	}
	switch t.TLS {
	case TLSNone, TLSOpportunistic, TLSStartTLS, TLSImplicit:
	default:
		return fail(retry.StageConnect, localReply(451, 4, 3, 5, fmt.Sprintf("unknown TLS mode %q", t.TLS)))
	}
	if hello == "" || strings.ContainsAny(hello, " \t\r\n") {
		return fail(retry.StageConnect, localReply(451, 4, 3, 5, fmt.Sprintf("bad EHLO name %q", hello)))
	}
	host, _, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return fail(retry.StageConnect, localReply(451, 4, 3, 5, "bad next-hop address: "+err.Error()))
	}
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	dctx, cancel := context.WithTimeout(ctx, timeout)
	raw, err := d.DialContext(dctx, "tcp", t.Addr)
	cancel()
	if err != nil {
		return fail(retry.StageConnect, retry.FromError(retry.StageConnect, err))
	}
	c := &Conn{raw: raw, addr: t.Addr, hello: hello, timeout: timeout}
	// Closing the connection is the only way to interrupt a blocked read or
	// write; every later error then reports ctx's.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	stage, err := c.open(ctx, t, host)
	if !stop() {
		c.broken = true
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		r := c.reply(ctx.Err(), stage, err)
		_ = c.Close()
		return fail(stage, r)
	}
	return c, nil
}

// open runs everything after the TCP connect; it returns the stage it got
// to, for the error.
//
// It reads the greeting itself, and for STARTTLS also says the first EHLO,
// because go-smtp exports no StartTLS and its NewClientStartTLS says "EHLO
// localhost" and fails when STARTTLS is not offered. go-smtp's client is then handed a connection that replays the
// greeting, and says EHLO itself (again, after STARTTLS: RFC 3207 §4.2 wants
// the client to forget what it learnt before TLS).
func (c *Conn) open(ctx context.Context, t Target, host string) (retry.Stage, error) {
	defer c.raw.SetDeadline(time.Time{})
	var conn net.Conn = c.raw
	if t.TLS == TLSImplicit {
		tc, err := c.handshake(ctx, t, host, !t.InsecureSkipVerify)
		if err != nil {
			return retry.StageConnect, err
		}
		conn = tc
	}
	tp := textproto.NewConn(conn) // never closed: that would close conn
	c.deadline()
	_, greeting, err := tp.ReadResponse(220)
	if err != nil {
		return retry.StageConnect, protoErr(err)
	}
	replay := []byte("220 " + strings.SplitN(greeting, "\n", 2)[0] + "\r\n")

	if t.TLS == TLSOpportunistic || t.TLS == TLSStartTLS {
		tc, err := c.startTLS(ctx, tp, t, host)
		if err != nil {
			return retry.StageHello, err
		}
		if tc != nil {
			conn, tp = tc, nil
		}
	}
	if tp != nil {
		// Bytes read ahead in plaintext belong to the client's stream.
		rest, _ := tp.R.Peek(tp.R.Buffered())
		replay = append(replay, rest...)
	}

	c.wire = &replayConn{Conn: conn, pending: replay}
	c.client = smtp.NewClient(c.wire)
	c.client.CommandTimeout = c.timeout
	if err := c.client.Hello(c.hello); err != nil {
		return retry.StageHello, err
	}
	if t.Username != "" {
		if err := c.auth(ctx, t); err != nil {
			return retry.StageHello, err
		}
	}
	c.takeOver()
	return retry.StageHello, nil
}

// takeOver ends go-smtp's part of the session: every exchange so far was
// lock-step, so its reader holds nothing, and from here on the session is
// read through c.r (pipeline.go). The extensions the transaction needs are
// looked up once.
func (c *Conn) takeOver() {
	has := func(name string) bool { ok, _ := c.client.Extension(name); return ok }
	c.ext = extensions{
		pipelining:   has("PIPELINING"),
		eightBitMIME: has("8BITMIME"),
		size:         has("SIZE"),
		smtpUTF8:     has("SMTPUTF8"),
		dsn:          has("DSN"),
	}
	c.r = bufio.NewReaderSize(c.wire, replyBuf)
}

// deadline gives the next plaintext-phase exchange c.timeout.
func (c *Conn) deadline() { _ = c.raw.SetDeadline(time.Now().Add(c.timeout)) }

// startTLS says EHLO on the greeted plaintext session tp and, when STARTTLS
// is offered, switches to TLS and returns the TLS connection. It returns nil
// and no error when the session stays in plaintext (opportunistic, STARTTLS
// not offered).
func (c *Conn) startTLS(ctx context.Context, tp *textproto.Conn, t Target, host string) (*tls.Conn, error) {
	offered := false
	c.deadline()
	if err := tp.PrintfLine("EHLO %s", c.hello); err != nil {
		return nil, err
	}
	_, msg, err := tp.ReadResponse(250)
	if err != nil {
		var te *textproto.Error
		if !errors.As(err, &te) || (te.Code != 500 && te.Code != 502) {
			return nil, protoErr(err)
		}
		// RFC 5321 §3.2: a server without EHLO gets HELO, and has no
		// extensions, so no STARTTLS.
		c.deadline()
		if err := tp.PrintfLine("HELO %s", c.hello); err != nil {
			return nil, err
		}
		if _, _, err := tp.ReadResponse(250); err != nil {
			return nil, protoErr(err)
		}
	} else {
		for _, line := range strings.Split(msg, "\n")[1:] {
			f := strings.Fields(line)
			offered = offered || len(f) > 0 && strings.EqualFold(f[0], "STARTTLS")
		}
	}

	if !offered {
		if t.TLS == TLSOpportunistic {
			return nil, nil
		}
		// Say goodbye politely: the session is in step.
		_ = c.raw.SetDeadline(time.Now().Add(min(quitTimeout, c.timeout)))
		if tp.PrintfLine("QUIT") == nil {
			_, _, _ = tp.ReadResponse(221)
		}
		c.broken = true
		return nil, localReply(451, 4, 4, 1, "TLS required but STARTTLS not offered")
	}

	c.deadline()
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, protoErr(err)
	}
	// Anything already buffered after the 220 came before the handshake and
	// would be read as if it were protected: the STARTTLS injection attack
	// (CVE-2011-0411, RFC 3207 §5). Refuse rather than read it.
	if tp.R.Buffered() > 0 {
		c.broken = true
		return nil, localReply(451, 4, 4, 1, "TLS handshake failed: plaintext data after the 220 to STARTTLS")
	}
	return c.handshake(ctx, t, host, t.TLS == TLSStartTLS && !t.InsecureSkipVerify)
}

// handshake runs the TLS client handshake on c.raw. Failures are local
// 451 4.4.1: the host is deferred and the next one tried.
func (c *Conn) handshake(ctx context.Context, t Target, host string, verify bool) (*tls.Conn, error) {
	cfg := &tls.Config{
		// go-smtp does not fill it in for a client made with NewClient.
		ServerName: t.ServerName,
		RootCAs:    t.RootCAs,
		MinVersion: tls.VersionTLS12,
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if !verify {
		cfg.InsecureSkipVerify = true
		if t.TLS == TLSOpportunistic {
			// RFC 7435 §1: some encryption beats none, old servers included.
			cfg.MinVersion = tls.VersionTLS10
		}
	}
	tc := tls.Client(c.raw, cfg)
	c.deadline()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.broken = true
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, localReply(451, 4, 4, 1, "TLS handshake failed: "+err.Error())
	}
	c.tls = true
	return tc, nil
}

// Addr is the host:port the connection goes to.
func (c *Conn) Addr() string { return c.addr }

// TLS reports whether the session is encrypted.
func (c *Conn) TLS() bool { return c.tls }

// MaxSize is the remote's SIZE limit (RFC 1870), 0 if none advertised.
func (c *Conn) MaxSize() int64 {
	ok, v := c.client.Extension("SIZE")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Extension reports whether the remote offered the EHLO keyword name
// (case-insensitive), and its parameters. It answers from the EHLO reply,
// without I/O.
func (c *Conn) Extension(name string) (bool, string) { return c.client.Extension(name) }

// Envelope is what Send needs of a message.
type Envelope struct {
	From     string // reverse path without brackets; "" is the null sender <>
	Rcpts    []string
	Size     int64 // body size, for SIZE= and the pre-check
	Body8Bit bool  // informational: BODY=8BITMIME is sent whenever offered
	SMTPUTF8 bool  // ask for SMTPUTF8 when offered (always when an address needs it)

	// RFC 3461 DSN parameters, passed on only when the next hop offers DSN
	// (RcptResult.DSN tells the caller whether it did). Values that are not
	// well formed are dropped, not sent.
	Ret   string    // RET: "FULL" or "HDRS"; "" for none
	EnvID string    // ENVID, decoded (it is xtext-encoded on the wire)
	DSN   []RcptDSN // per recipient, parallel to Rcpts; missing entries mean none

	// EndsRcpts says whether a RCPT refused with the given reply ends
	// the recipients of this transaction: no further RCPT is sent in it,
	// and the recipients not yet sent get that reply (Send). The client
	// only acts on the answer; the delivery side passes
	// retry.TooManyRecipients ("too many recipients", RFC 5321
	// §4.5.3.1.10). nil: every recipient's RCPT is sent.
	EndsRcpts func(refusal *smtpreply.Reply) bool
}

// RcptDSN is one recipient's RFC 3461 parameters, as relay stored them.
type RcptDSN struct {
	Notify string // "SUCCESS,FAILURE", "NEVER", …; "" for none
	ORCPT  string // "rfc822;user@example.org" or "utf-8;…", decoded; "" for none
}

// RcptResult is the reply that decided one recipient.
type RcptResult struct {
	Rcpt  string
	Reply *smtpreply.Reply // never nil: 2xx too
	Stage retry.Stage      // where it was decided
	// DSN is true when the next hop offered the DSN extension, so that it
	// received NOTIFY, ORCPT, RET and ENVID and answers for success and
	// failure reports from there on. A recipient delivered with DSN false
	// that asked NOTIFY=SUCCESS is owed a "relayed" DSN (RFC 3461 §5.2.2).
	DSN bool
}

// Send runs one mail transaction and returns one result per recipient, in
// env.Rcpts order, always len(env.Rcpts) of them.
//
//   - SIZE pre-check (RFC 1870 §6): when the remote advertises SIZE and
//     env.Size exceeds it, nothing is sent and every recipient gets a local
//     552 5.3.4 at StageMail naming both sizes.
//   - MAIL FROM carries SIZE=, BODY=8BITMIME and SMTPUTF8 when the remote
//     supports them, and RET and ENVID when it offers DSN (RFC 3461); each
//     RCPT then carries its NOTIFY and ORCPT. Non-ASCII addresses to a
//     remote without SMTPUTF8 get a local 553 5.6.7 (RFC 6531 §3.2: such a
//     message must not be sent).
//   - When the remote offers PIPELINING (RFC 2920), MAIL, the RCPTs and
//     DATA go out in one write (groups of at most 100 commands or about
//     16 KiB) and every reply is read, in order; otherwise each command
//     waits for its reply. A refused MAIL decides every recipient (the
//     replies to its RCPTs and DATA are read and ignored); each RCPT reply
//     decides its recipient.
//   - When a RCPT is refused with a reply env.EndsRcpts says ends the
//     recipients ("too many recipients", RFC 5321 §4.5.3.1.10, for the
//     delivery side), no more RCPTs are sent; it and every later recipient
//     not yet sent get that reply, for the caller to send in the next
//     transaction. A recipient already sent in the same group is decided
//     by its own reply. Send itself never classifies a reply.
//   - No recipient accepted: no DATA when that is known before DATA is
//     due (no MAIL either when every recipient is refused locally), else
//     DATA is refused (typically 554), or, if the remote says 354 anyway,
//     just "." is sent (RFC 2920 §3.1); the recipients keep their RCPT
//     replies; an open transaction is ended with RSET. Otherwise
//     the body is streamed from r after the 354, and the reply to the final
//     "." applies to every accepted recipient; a refused DATA applies to
//     them at StageData.
//
// A non-nil error (a *smtpreply.Reply) means the connection is unusable: a 421
// at any stage, an I/O error, a timeout, a reply out of step, a read error
// on r, or ctx done. The results are still complete, the recipients not
// yet decided carrying that error; the caller must Close and not reuse the
// Conn. After a nil error the Conn is ready for the next Send.
func (c *Conn) Send(ctx context.Context, env Envelope, r io.Reader) ([]RcptResult, error) {
	res := make([]RcptResult, len(env.Rcpts))
	for i, rc := range env.Rcpts {
		res[i].Rcpt = rc
	}
	t := txn{c: c, ctx: ctx, env: env, res: res}
	if c.broken || c.closed || c.r == nil {
		rep := localReply(451, 4, 4, 2, "connection already closed")
		c.broken = true
		t.decide(nil, retry.StageMail, rep)
		return res, rep
	}
	if len(res) == 0 {
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		rep := retry.FromError(retry.StageMail, err)
		t.decide(nil, retry.StageMail, rep)
		c.broken = true
		return res, rep
	}
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	defer func() {
		if !stop() {
			c.broken = true
		}
	}()

	if rep := c.precheck(env); rep != nil {
		t.decide(nil, retry.StageMail, rep)
		return res, nil
	}
	for i := range res {
		res[i].DSN = c.ext.dsn
	}
	if c.allRefusedLocally(env, res) {
		return res, nil // no MAIL for nobody
	}
	return res, t.run(r)
}

// allRefusedLocally reports whether rcptCheck refuses every recipient,
// and then gives each its reply.
func (c *Conn) allRefusedLocally(env Envelope, res []RcptResult) bool {
	for _, rc := range env.Rcpts {
		if c.rcptCheck(rc) == nil {
			return false
		}
	}
	for i, rc := range env.Rcpts {
		res[i].Reply, res[i].Stage = c.rcptCheck(rc), retry.StageRcpt
	}
	return true
}

// dsnReturn is the RET value to send, "" unless well formed: a bad one
// would have the whole MAIL refused (RFC 3461 §4.3).
func dsnReturn(ret string) smtp.DSNReturn {
	switch r := smtp.DSNReturn(strings.ToUpper(strings.TrimSpace(ret))); r {
	case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
		return r
	}
	return ""
}

// dsnEnvID is the ENVID to send: printable ASCII of at most 100 characters
// (RFC 3461 §4.4), else none.
func dsnEnvID(id string) string {
	if len(id) > 100 || !printableASCII(id) {
		return ""
	}
	return id
}

// rcptDSN returns the RCPT options for one recipient's NOTIFY and ORCPT,
// each left out unless well formed (RFC 3461 §4.1, §4.2: ORCPT at most 500
// characters; NEVER only alone), or nil when there is nothing to send.
func rcptDSN(d RcptDSN) *smtp.RcptOptions {
	var o smtp.RcptOptions
	if d.Notify != "" {
		seen := map[smtp.DSNNotify]bool{}
		ok := true
		for _, v := range strings.Split(strings.ToUpper(d.Notify), ",") {
			n := smtp.DSNNotify(strings.TrimSpace(v))
			switch n {
			case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
				ok = ok && !seen[n]
			default:
				ok = false
			}
			seen[n] = true
			o.Notify = append(o.Notify, n)
		}
		if !ok || (seen[smtp.DSNNotifyNever] && len(seen) > 1) {
			o.Notify = nil
		}
	}
	if typ, addr, found := strings.Cut(d.ORCPT, ";"); found && addr != "" && len(d.ORCPT) <= 500 {
		switch t := smtp.DSNAddressType(strings.ToUpper(strings.TrimSpace(typ))); {
		case t == smtp.DSNAddressTypeRFC822 && printableASCII(addr):
			o.OriginalRecipientType, o.OriginalRecipient = t, addr
		case t == smtp.DSNAddressTypeUTF8 && !strings.ContainsFunc(addr, func(r rune) bool { return r < ' ' || r == 0x7f }):
			o.OriginalRecipientType, o.OriginalRecipient = t, addr
		}
	}
	if len(o.Notify) == 0 && o.OriginalRecipient == "" {
		return nil
	}
	return &o
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// precheck returns the local reply that stops the whole of env before MAIL,
// or nil.
func (c *Conn) precheck(env Envelope) *smtpreply.Reply {
	if strings.ContainsAny(env.From, "\r\n<>") {
		return localReply(501, 5, 1, 7, "bad sender address syntax")
	}
	if max := c.MaxSize(); max > 0 && env.Size > max {
		return localReply(552, 5, 3, 4,
			fmt.Sprintf("message size %d exceeds the next hop's limit of %d bytes", env.Size, max))
	}
	if !c.ext.smtpUTF8 && !isASCII(env.From) {
		return localReply(553, 5, 6, 7, "non-ASCII sender and the next hop does not support SMTPUTF8")
	}
	return nil
}

// rcptCheck returns the local reply that stops one recipient before RCPT,
// or nil.
func (c *Conn) rcptCheck(rcpt string) *smtpreply.Reply {
	if rcpt == "" || strings.ContainsAny(rcpt, "\r\n<>") {
		return localReply(501, 5, 1, 3, "bad recipient address syntax")
	}
	if !c.ext.smtpUTF8 && !isASCII(rcpt) {
		return localReply(553, 5, 6, 7, "non-ASCII recipient and the next hop does not support SMTPUTF8")
	}
	return nil
}

// Reset sends RSET (RFC 5321 §4.1.1.5), which ends any transaction the
// peer still holds open. An error means the connection is unusable: Close
// it.
func (c *Conn) Reset() error {
	if c.broken || c.closed || c.r == nil {
		return localReply(451, 4, 4, 2, "connection already closed")
	}
	return c.reset(func() error { return nil })
}

// Close says QUIT (with a short deadline) unless the connection is broken,
// then closes it. It may be called more than once.
func (c *Conn) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	switch {
	case c.broken:
	case c.r != nil:
		if c.quit() {
			_ = c.wire.Close() // with TLS, says close_notify first
			return nil
		}
	case c.client != nil:
		// Dial failed after the greeting (a refused AUTH): go-smtp's
		// client still has the session, in step.
		c.client.CommandTimeout = min(quitTimeout, c.timeout)
		if err := c.client.Quit(); err == nil {
			return nil // Quit closed the connection
		}
	}
	if err := c.raw.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// reply turns err into a *smtpreply.Reply and marks the connection broken when
// the session can no longer be trusted: a 421 (RFC 5321 §3.8, the server is
// closing), or an error that is no reply (I/O, timeout). ctxErr is the
// error of the ctx whose end closes the connection under us, if any.
func (c *Conn) reply(ctxErr error, stage retry.Stage, err error) *smtpreply.Reply {
	var se *smtp.SMTPError
	var te *textproto.Error
	var rep *smtpreply.Reply
	inStep := errors.As(err, &se) || errors.As(err, &te) || errors.As(err, &rep)
	if !inStep && ctxErr != nil {
		// The connection was closed under us: report why, not "closed".
		err = ctxErr
	}
	r := retry.FromError(stage, protoErr(err))
	if !inStep || r.Code == 421 {
		c.broken = true
	}
	return r
}

// protoErr turns a *textproto.Error from the plaintext phase into the
// remote reply it is; other errors pass unchanged.
func protoErr(err error) error {
	var te *textproto.Error
	if !errors.As(err, &te) {
		return err
	}
	line := strings.SplitN(te.Msg, "\n", 2)[0]
	r, perr := smtpreply.ParseReply(strconv.Itoa(te.Code) + " " + line)
	if perr != nil {
		return &smtpreply.Reply{Code: te.Code, Text: line}
	}
	return r
}

// okReply is the 2xx after the final "." with the remote's text (its queue
// ID, usually), kept for the log and the success DSN.
func okReply(code int, text string) *smtpreply.Reply {
	r, err := smtpreply.ParseReply(strconv.Itoa(code) + " " + strings.ReplaceAll(strings.TrimSpace(text), "\n", "; "))
	if err != nil {
		return &smtpreply.Reply{Code: code, Enhanced: smtpreply.CodeOK}
	}
	return r
}

func localReply(code, class, subject, detail int, text string) *smtpreply.Reply {
	return &smtpreply.Reply{Code: code, Enhanced: smtpreply.EnhancedCode{class, subject, detail}, Text: text, Local: true}
}

func asciiEnvelope(env Envelope) bool {
	if !isASCII(env.From) {
		return false
	}
	for _, rc := range env.Rcpts {
		if !isASCII(rc) {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// rangeFrom is [from, to) as indexes.
func rangeFrom(from, to int) []int {
	idx := make([]int, 0, max(to-from, 0))
	for i := from; i < to; i++ {
		idx = append(idx, i)
	}
	return idx
}
