package smtpclient

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// The mail transaction is spoken here, not through go-smtp's client, whose
// connection is private and which has no PIPELINING: go-smtp does the
// opening (greeting, EHLO, STARTTLS, AUTH: all lock-step, so its reader
// holds nothing afterwards), then Dial hands the session to Conn.r and
// Conn.out and go-smtp never reads or writes on it again. Its Extension
// lookups stay: they answer from what EHLO said, without I/O.
//
// With PIPELINING (RFC 2920) MAIL, the RCPTs and DATA go out in one write
// and their replies are read in order: two writes and two reads for a
// one-recipient message (the commands, then the body and "."), not four.
// Without it each command waits for its reply (RFC 5321 §4.3.1), which is
// the same code with groups of one command.

const (
	// maxGroupCmds and maxGroupBytes bound a pipelined group. The client
	// writes a whole group before it reads a reply, so a group and its
	// replies must fit in the socket buffers, or both sides block writing
	// (RFC 2920 §3.1: deadlock). 16 KiB of commands and 100 replies of a
	// few dozen bytes fit in any TCP window of today.
	maxGroupCmds  = 100
	maxGroupBytes = 16 << 10
	// replyBuf is the read buffer of a session's replies.
	replyBuf = 4 << 10
)

// extensions are the EHLO keywords the transaction uses, looked up once
// after EHLO (go-smtp's map: keys as the server spelt them).
type extensions struct {
	pipelining, eightBitMIME, size, smtpUTF8, dsn bool
}

// txn is one mail transaction in progress (Conn.Send).
type txn struct {
	c        *Conn
	ctx      context.Context
	env      Envelope
	res      []RcptResult
	accepted []int            // recipients whose RCPT got a 2xx
	unread   int              // RCPTs sent whose reply is not read yet
	ended    *smtpreply.Reply // the first RCPT refusal env.EndsRcpts said ends the recipients
	mailOK   bool             // MAIL got a 2xx
	// over is set when no transaction is open and every recipient has its
	// reply: MAIL was refused, or a 354 with no recipient got just ".".
	over bool
}

// sent is one command of a group, waiting for its reply.
type sent struct {
	verb string // "MAIL", "RCPT" or "DATA"
	idx  int    // the recipient of a RCPT
}

func (s sent) stage() retry.Stage {
	switch s.verb {
	case "MAIL":
		return retry.StageMail
	case "RCPT":
		return retry.StageRcpt
	}
	return retry.StageData
}

// decide gives every still undecided recipient in idx (nil: all) rep.
func (t *txn) decide(idx []int, stage retry.Stage, rep *smtpreply.Reply) {
	if idx == nil {
		idx = rangeFrom(0, len(t.res))
	}
	for _, i := range idx {
		if t.res[i].Reply == nil {
			t.res[i].Reply, t.res[i].Stage = rep, stage
		}
	}
}

// fail decides every undecided recipient with the reply that broke the
// connection and returns it as Send's error.
func (t *txn) fail(stage retry.Stage, rep *smtpreply.Reply) error {
	t.c.broken = true
	t.decide(nil, stage, rep)
	return rep
}

// run speaks the transaction for t.env, the body from r. Its error, a
// *smtpreply.Reply, means the connection is broken (Send's contract).
func (t *txn) run(r io.Reader) error {
	c := t.c
	limit := 1
	if c.ext.pipelining {
		limit = maxGroupCmds
	}
	group := make([]sent, 0, min(limit, len(t.res)+2))
	n := len(t.res)
	// next is the command to send: -1 MAIL, 0..n-1 the RCPTs, n DATA.
	next := -1
	for next <= n && !t.over {
		group, next = t.fill(group[:0], next, limit)
		if len(group) == 0 {
			break // DATA skipped: no recipient can have been accepted
		}
		if err := c.flush(c.timeout); err != nil {
			return t.fail(group[0].stage(), c.reply(t.ctx.Err(), group[0].stage(), err))
		}
		for _, s := range group {
			body, err := t.answer(s)
			if err != nil {
				return err
			}
			if body {
				return t.body(r)
			}
		}
	}
	if t.over || !t.mailOK {
		return nil // no transaction is open
	}
	// RFC 5321 §4.1.1.5: end the open transaction before the next one.
	return c.reset(t.ctx.Err)
}

// fill appends the commands of the next group to c.out and group, from
// next on, and returns where the group stopped.
func (t *txn) fill(group []sent, next, limit int) ([]sent, int) {
	c, n := t.c, len(t.res)
	c.out = c.out[:0]
	for ; next <= n && len(group) < limit && len(c.out) < maxGroupBytes; next++ {
		switch {
		case next < 0:
			c.out = c.appendMail(c.out, t.env)
			group = append(group, sent{verb: "MAIL"})
		case next < n:
			i := next
			if t.ended != nil {
				// RFC 5321 §4.5.3.1.10: the rest go in the next transaction.
				t.res[i].Reply, t.res[i].Stage = t.ended, retry.StageRcpt
				continue
			}
			if rep := c.rcptCheck(t.env.Rcpts[i]); rep != nil {
				t.res[i].Reply, t.res[i].Stage = rep, retry.StageRcpt
				continue
			}
			var opts *smtp.RcptOptions
			if c.ext.dsn && i < len(t.env.DSN) {
				opts = rcptDSN(t.env.DSN[i])
			}
			c.out = c.appendRcpt(c.out, t.env.Rcpts[i], opts)
			group = append(group, sent{verb: "RCPT", idx: i})
			t.unread++
		default:
			if len(t.accepted)+t.unread == 0 {
				// Every RCPT known refused (or none sent): no DATA.
				return group, next + 1
			}
			// RFC 2920 §3.1: DATA is the last command of a group.
			c.out = append(c.out, "DATA\r\n"...)
			return append(group, sent{verb: "DATA"}), next + 1
		}
	}
	return group, next
}

// answer reads the reply to s and acts on it. body is true when the reply
// was a 354 and the message is to follow. A non-nil error is Send's.
func (t *txn) answer(s sent) (body bool, err error) {
	c := t.c
	stage := s.stage()
	code, msg, err := c.readReply(c.timeout)
	if err != nil {
		return false, t.fail(stage, c.reply(t.ctx.Err(), stage, err))
	}
	if s.verb == "RCPT" {
		t.unread--
	}
	success := 2
	if s.verb == "DATA" {
		success = 3
	}
	class := code / 100
	if class != success && class != 4 && class != 5 {
		// The dialogue is out of step: nothing more can be said on it.
		return false, t.fail(stage, unexpected(s.verb, code, msg))
	}
	var rep *smtpreply.Reply
	if class != success {
		rep = c.remote(code, msg)
		if c.broken { // 421 (RFC 5321 §3.8): close, no QUIT
			return false, t.fail(stage, rep)
		}
	}
	switch {
	case s.verb == "MAIL" && rep == nil:
		t.mailOK = true
	case s.verb == "MAIL":
		// RFC 2920 §3.1: the RCPTs and DATA of the group are read and
		// ignored (typically 503); the recipients get the MAIL reply.
		t.over = true
		t.decide(nil, retry.StageMail, rep)
	case t.over:
	case s.verb == "RCPT" && rep == nil:
		t.accepted = append(t.accepted, s.idx)
	case s.verb == "RCPT":
		// Each recipient is decided by its own reply: with PIPELINING
		// those after a "too many recipients" were sent too, and one the
		// server accepted anyway is in this transaction.
		t.res[s.idx].Reply, t.res[s.idx].Stage = rep, retry.StageRcpt
		if t.ended == nil && t.env.EndsRcpts != nil && t.env.EndsRcpts(rep) {
			t.ended = rep
		}
	case rep != nil: // DATA refused
		t.decide(t.accepted, retry.StageData, rep)
	}
	if s.verb != "DATA" || rep != nil {
		return false, nil
	}
	if !t.over && len(t.accepted) > 0 {
		return true, nil
	}
	// A 354 with no recipient accepted: RFC 2920 §3.1 says send just the
	// ".", which ends the transaction; the recipients keep their replies.
	c.out = append(c.out[:0], ".\r\n"...)
	_, err = t.end(retry.StageBody)
	if err == nil {
		t.over = true // nothing is open: no RSET
	}
	return false, err
}

// body sends the message after the 354 and decides the accepted
// recipients by the reply to the final ".".
func (t *txn) body(r io.Reader) error {
	c := t.c
	if rep := c.writeBody(t.ctx, r); rep != nil {
		t.decide(t.accepted, retry.StageBody, rep)
		return rep
	}
	// writeBody has written the body and its end, or left the rest in c.out.
	rep, err := t.end(retry.StageBody)
	if err != nil {
		return err
	}
	t.decide(t.accepted, retry.StageBody, rep)
	return nil
}

// end writes c.out, which ends the data, and reads the final reply, with
// twice the command timeout (RFC 5321 §4.5.3.2.6: 10 minutes for the
// reply to ".", twice the 5 of other commands). A non-nil error is Send's.
func (t *txn) end(stage retry.Stage) (*smtpreply.Reply, error) {
	c := t.c
	if err := c.flush(c.timeout); err != nil {
		return nil, t.fail(stage, c.reply(t.ctx.Err(), stage, err))
	}
	code, msg, err := c.readReply(2 * c.timeout)
	if err != nil {
		return nil, t.fail(stage, c.reply(t.ctx.Err(), stage, err))
	}
	switch code / 100 {
	case 2:
		return okReply(code, msg), nil
	case 4, 5:
		rep := c.remote(code, msg)
		if c.broken {
			return nil, t.fail(stage, rep)
		}
		return rep, nil
	}
	return nil, t.fail(stage, unexpected(".", code, msg))
}

// flush writes c.out in one write, under a write deadline of timeout;
// nothing if it is empty.
func (c *Conn) flush(timeout time.Duration) error {
	if len(c.out) == 0 {
		return nil
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.wire.Write(c.out)
	c.out = c.out[:0]
	return err
}

// command sends one command and reads its reply, lock-step.
func (c *Conn) command(line string, timeout time.Duration) (int, string, error) {
	c.out = append(append(c.out[:0], line...), "\r\n"...)
	if err := c.flush(timeout); err != nil {
		return 0, "", err
	}
	return c.readReply(timeout)
}

// reset sends RSET. Any failure breaks the connection: whether the
// transaction was ended is then unknown.
func (c *Conn) reset(ctxErr func() error) error {
	code, msg, err := c.command("RSET", c.timeout)
	if err != nil {
		return c.brokenReply(c.reply(ctxErr(), retry.StageMail, err))
	}
	if code/100 != 2 {
		if code/100 == 4 || code/100 == 5 {
			return c.brokenReply(c.remote(code, msg))
		}
		return c.brokenReply(unexpected("RSET", code, msg))
	}
	return nil
}

func (c *Conn) brokenReply(rep *smtpreply.Reply) error {
	c.broken = true
	return rep
}

// quit says QUIT and reports whether the server said 221.
func (c *Conn) quit() bool {
	code, _, err := c.command("QUIT", min(quitTimeout, c.timeout))
	return err == nil && code == 221
}

// readReply reads one reply under a read deadline of timeout from now
// (smtpreply.Read: bounded, lines joined with "\n").
func (c *Conn) readReply(timeout time.Duration) (code int, msg string, err error) {
	_ = c.raw.SetReadDeadline(time.Now().Add(timeout))
	return smtpreply.Read(c.r)
}

// remote is the *smtpreply.Reply for a refusal read from the server, and marks
// the connection broken on a 421 (RFC 5321 §3.8: the server is closing).
// The enhanced code is taken from the front of the text and from the
// front of every further line (RFC 2034 §4), as go-smtp's client does, so
// the values are those of go-smtp's *SMTPError through retry.FromError.
func (c *Conn) remote(code int, msg string) *smtpreply.Reply {
	se := &smtp.SMTPError{Code: code, Message: msg}
	if enh, rest, ok := strings.Cut(msg, " "); ok {
		if ec, ok := parseEnhanced(enh); ok {
			se.EnhancedCode = ec
			se.Message = strings.ReplaceAll(rest, "\n"+enh+" ", "\n")
		}
	}
	if code == 421 {
		c.broken = true
	}
	return retry.FromError(retry.StageMail, se)
}

// parseEnhanced parses "x.y.z" as go-smtp's client does; retry.FromError
// then keeps only a valid code.
func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	var ec smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return ec, false
		}
		ec[i] = n
	}
	return ec, true
}

// unexpected is the reply for a reply of the wrong class (a 250 to DATA, a
// 354 to RCPT): the session is out of step and is dropped. It is local and
// temporary (RFC 3463 X.5.0, other protocol status): a 2xx must never read
// as a delivery.
func unexpected(verb string, code int, msg string) *smtpreply.Reply {
	line, _, _ := strings.Cut(msg, "\n")
	return localReply(451, 4, 5, 0, fmt.Sprintf("unexpected reply to %s: %d %s", verb, code, line))
}

// appendMail appends the MAIL command for env, with the parameters go-smtp
// (v0.25) would send for the same options: BODY=8BITMIME whenever offered
// (harmless for a 7-bit body; to a remote without 8BITMIME an 8-bit body
// goes unchanged: RFC 6152 §3 asks for a conversion or a bounce, but like
// most MTAs, Postfix by default, we rely on servers taking 8-bit data),
// SIZE (RFC 1870), SMTPUTF8 when offered and wanted or needed (RFC 6531
// §3.4), RET and ENVID when DSN is offered (RFC 3461 §4.3, §4.4).
func (c *Conn) appendMail(b []byte, env Envelope) []byte {
	b = append(b, "MAIL FROM:<"...)
	b = append(b, env.From...)
	b = append(b, '>')
	if c.ext.eightBitMIME {
		b = append(b, " BODY=8BITMIME"...)
	}
	if c.ext.size && env.Size != 0 {
		b = append(b, " SIZE="...)
		b = strconv.AppendInt(b, env.Size, 10)
	}
	if c.ext.smtpUTF8 && (env.SMTPUTF8 || !asciiEnvelope(env)) {
		b = append(b, " SMTPUTF8"...)
	}
	if c.ext.dsn {
		if ret := dsnReturn(env.Ret); ret != "" {
			b = append(b, " RET="...)
			b = append(b, ret...)
		}
		if id := dsnEnvID(env.EnvID); id != "" {
			b = append(b, " ENVID="...)
			b = appendXtext(b, id)
		}
	}
	return append(b, "\r\n"...)
}

// appendRcpt appends the RCPT command for rcpt, with NOTIFY and ORCPT
// (RFC 3461 §4.1, §4.2) from opts when the remote offers DSN.
func (c *Conn) appendRcpt(b []byte, rcpt string, opts *smtp.RcptOptions) []byte {
	b = append(b, "RCPT TO:<"...)
	b = append(b, rcpt...)
	b = append(b, '>')
	if c.ext.dsn && opts != nil {
		for k, v := range opts.Notify {
			if k == 0 {
				b = append(b, " NOTIFY="...)
			} else {
				b = append(b, ',')
			}
			b = append(b, v...)
		}
		if opts.OriginalRecipient != "" {
			b = append(b, " ORCPT="...)
			b = append(b, opts.OriginalRecipientType...)
			b = append(b, ';')
			switch {
			case opts.OriginalRecipientType == smtp.DSNAddressTypeRFC822:
				b = appendXtext(b, opts.OriginalRecipient)
			case c.ext.smtpUTF8: // RFC 6533 §3: utf-8-addr-unitext
				b = appendUTF8Addr(b, opts.OriginalRecipient, true)
			default: // utf-8-addr-xtext
				b = appendUTF8Addr(b, opts.OriginalRecipient, false)
			}
		}
	}
	return append(b, "\r\n"...)
}

const upperHex = "0123456789ABCDEF"

// appendXtext appends s as xtext (RFC 3461 §4): "+" and two hex digits for
// every byte outside "!".."~" and for "+" and "=". The callers pass
// printable ASCII only.
func appendXtext(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			b = append(b, ch)
			continue
		}
		b = append(b, '+', upperHex[ch>>4], upperHex[ch&15])
	}
	return b
}

// appendUTF8Addr appends s as utf-8-addr-xtext, or as utf-8-addr-unitext
// when unitext (RFC 6533 §3): "\x{HEX}" for what cannot go as is; unitext
// keeps non-ASCII characters as UTF-8.
func appendUTF8Addr(b []byte, s string, unitext bool) []byte {
	for _, ch := range s {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=':
			b = append(b, byte(ch))
		case unitext && ch > 0x7f:
			b = append(b, string(ch)...)
		default:
			b = append(b, `\x{`...)
			b = append(b, strings.ToUpper(strconv.FormatInt(int64(ch), 16))...)
			b = append(b, '}')
		}
	}
	return b
}
