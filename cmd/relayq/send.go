package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/urfave/cli/v2"

	"relayq/config"
)

// sendCommand is `relayq send`: submit test messages over SMTP, like swaks,
// printing the dialogue ("-> " what is sent, "<- " what is received).
func sendCommand() *cli.Command {
	return &cli.Command{
		Name:  "send",
		Usage: "submit a test message over SMTP and print the dialogue",
		Description: `Builds a message (Date, Message-ID, From, To, Subject, your headers, a body),
sends it and prints every command sent ("-> ") and reply line received ("<- ").
Exits non-zero, with the reply, when a message or a recipient is refused.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Aliases: []string{"s"}, Value: "127.0.0.1:2525", Usage: "`host:port` to connect to (port 25 if left out)"},
			&cli.StringFlag{Name: "from", Aliases: []string{"f"}, Required: true, Usage: "envelope and From `address`; \"\" or \"<>\" is the null sender"},
			&cli.StringSliceFlag{Name: "to", Aliases: []string{"t"}, Required: true, Usage: "recipient `address` (repeatable)"},
			&cli.StringFlag{Name: "subject", Usage: "Subject header (default: \"test\" and the date)"},
			&cli.StringFlag{Name: "body-file", Usage: "read the body from `FILE` (\"-\" for stdin)"},
			&cli.GenericFlag{Name: "header", Aliases: []string{"H"}, Value: &sendHeaderFlag{}, Usage: "add a header line `\"Name: value\"` (repeatable)"},
			&cli.StringFlag{Name: "size", Usage: "generate a body of about `SIZE` (\"100KB\", \"35MB\", bytes)"},
			&cli.IntFlag{Name: "count", Value: 1, Usage: "send `N` messages on one connection"},
			&cli.BoolFlag{Name: "starttls", Usage: "require STARTTLS before sending"},
			&cli.BoolFlag{Name: "tls", Usage: "implicit TLS from the first byte (smtps, port 465 style)"},
			&cli.BoolFlag{Name: "insecure", Usage: "accept any server certificate"},
			&cli.StringFlag{Name: "auth", Usage: "AUTH PLAIN (or LOGIN) as `user:password`"},
			&cli.StringFlag{Name: "ehlo", Usage: "`name` to send in EHLO (default: this host's name)"},
			&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "connect and per-reply `timeout`"},
		},
		Action: runSend,
	}
}

// sendOptions is what the flags of `relayq send` say.
type sendOptions struct {
	server, host string
	from         string
	to           []string
	subject      string
	headers      []string
	body         []byte // nil: generate (size bytes, or a one-line text)
	size         int64
	count        int
	startTLS     bool
	implicitTLS  bool
	insecure     bool
	user, pass   string
	ehlo         string
	timeout      time.Duration
}

func runSend(cCtx *cli.Context) error {
	o, err := sendOptionsFrom(cCtx)
	if err != nil {
		return cli.Exit("relayq send: "+err.Error(), 2)
	}
	if err := sendMessages(cCtx.Context, o, cCtx.App.Writer); err != nil {
		return cli.Exit("relayq send: "+err.Error(), 1)
	}
	return nil
}

func sendOptionsFrom(cCtx *cli.Context) (*sendOptions, error) {
	o := &sendOptions{
		server:      cCtx.String("server"),
		from:        strings.TrimSuffix(strings.TrimPrefix(cCtx.String("from"), "<"), ">"),
		to:          cCtx.StringSlice("to"),
		subject:     cCtx.String("subject"),
		count:       cCtx.Int("count"),
		startTLS:    cCtx.Bool("starttls"),
		implicitTLS: cCtx.Bool("tls"),
		insecure:    cCtx.Bool("insecure"),
		ehlo:        cCtx.String("ehlo"),
		timeout:     cCtx.Duration("timeout"),
	}
	if h, ok := cCtx.Generic("header").(*sendHeaderFlag); ok {
		o.headers = *h
	}
	if _, _, err := net.SplitHostPort(o.server); err != nil {
		o.server = net.JoinHostPort(o.server, "25")
	}
	o.host, _, _ = net.SplitHostPort(o.server)
	if o.ehlo == "" {
		o.ehlo, _ = os.Hostname()
		if o.ehlo == "" {
			o.ehlo = "localhost"
		}
	}
	if o.count < 1 {
		return nil, errors.New("--count must be at least 1")
	}
	if o.timeout <= 0 {
		return nil, errors.New("--timeout must be > 0")
	}
	if o.startTLS && o.implicitTLS {
		return nil, errors.New("--starttls and --tls exclude each other")
	}
	if auth := cCtx.String("auth"); auth != "" {
		var ok bool
		if o.user, o.pass, ok = strings.Cut(auth, ":"); !ok || o.user == "" {
			return nil, errors.New("--auth wants user:password")
		}
	}
	for _, to := range o.to {
		if to == "" {
			return nil, errors.New("--to must not be empty")
		}
	}
	bodyFile, size := cCtx.String("body-file"), cCtx.String("size")
	switch {
	case bodyFile != "" && size != "":
		return nil, errors.New("--body-file and --size exclude each other")
	case bodyFile == "-":
		b, err := io.ReadAll(cCtx.App.Reader)
		if err != nil {
			return nil, fmt.Errorf("reading the body from stdin: %w", err)
		}
		o.body = b
	case bodyFile != "":
		b, err := os.ReadFile(bodyFile)
		if err != nil {
			return nil, err
		}
		o.body = b
	case size != "":
		s, err := config.ParseSize(size)
		if err != nil {
			return nil, fmt.Errorf("--size: %w", err)
		}
		o.size = int64(s)
	}
	return o, nil
}

// sendHeaderFlag is a repeatable --header flag. It is not a StringSliceFlag
// because that splits values at commas, and header values contain commas.
type sendHeaderFlag []string

func (h *sendHeaderFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, ":")
	if !ok || name == "" || strings.ContainsAny(name, " \t") || strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("%q is not a header line \"Name: value\"", v)
	}
	*h = append(*h, textproto.CanonicalMIMEHeaderKey(name)+":"+value)
	return nil
}

func (h *sendHeaderFlag) String() string { return strings.Join(*h, "; ") }

// sendMessages connects, sends o.count messages and quits. It fails with the reply
// of the first refused message or recipient.
func sendMessages(ctx context.Context, o *sendOptions, out io.Writer) error {
	tr := &sendTranscript{out: out}
	c, err := sendDial(ctx, o, tr)
	if err != nil {
		return err
	}
	defer c.Close()
	// The client has no context: closing the connection interrupts it.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	if err := c.Hello(o.ehlo); err != nil {
		return fmt.Errorf("EHLO: %w", sendReplyError(err))
	}
	if o.user != "" {
		var a sasl.Client
		switch {
		case c.SupportsAuth(sasl.Plain):
			a = sasl.NewPlainClient("", o.user, o.pass)
		case c.SupportsAuth(sasl.Login):
			a = sasl.NewLoginClient(o.user, o.pass)
		default:
			return errors.New("the server offers neither AUTH PLAIN nor AUTH LOGIN (no TLS yet? try --starttls)")
		}
		if err := c.Auth(a); err != nil {
			return fmt.Errorf("AUTH: %w", sendReplyError(err))
		}
	}
	var refused []error
	for i := range o.count {
		err := sendOne(c, o, tr, i)
		var rcptErr sendRcptErrors
		switch {
		case errors.As(err, &rcptErr) && len(rcptErr) < len(o.to):
			refused = append(refused, err) // the message went to the others
		case err != nil:
			if o.count > 1 {
				err = fmt.Errorf("message %d of %d: %w", i+1, o.count, err)
			}
			if sendConnClosing(err) {
				return err // 421 or I/O: no QUIT on a closing connection
			}
			c.Quit()
			return err
		}
	}
	if err := c.Quit(); err != nil && !errors.Is(err, net.ErrClosed) {
		tr.note("QUIT failed: %v", err)
	}
	return errors.Join(refused...)
}

// sendDial connects to o.server and returns a client whose traffic tr
// prints. With --starttls the STARTTLS exchange is done here, before the
// go-smtp client exists, so that tr sits above TLS and prints cleartext.
func sendDial(ctx context.Context, o *sendOptions, tr *sendTranscript) (*smtp.Client, error) {
	tlsConfig := &tls.Config{ServerName: o.host, InsecureSkipVerify: o.insecure}
	d := &net.Dialer{Timeout: o.timeout}
	var conn net.Conn
	var err error
	if o.implicitTLS {
		conn, err = (&tls.Dialer{NetDialer: d, Config: tlsConfig}).DialContext(ctx, "tcp", o.server)
	} else {
		conn, err = d.DialContext(ctx, "tcp", o.server)
	}
	if err != nil {
		return nil, err
	}
	tr.note("connected to %s", conn.RemoteAddr())
	if o.implicitTLS {
		tr.noteTLS(conn)
	}
	tc := &sendTranscriptConn{Conn: conn, tr: tr, timeout: o.timeout}
	if o.startTLS {
		tlsConn, err := sendStartTLS(ctx, tc, conn, tlsConfig, o)
		if err != nil {
			conn.Close()
			return nil, err
		}
		tr.noteTLS(tlsConn)
		// The go-smtp client begins by reading a greeting; after STARTTLS
		// there is none (RFC 3207 §4.2: the client starts over with EHLO),
		// so it is given one that is not printed.
		tc = &sendTranscriptConn{Conn: tlsConn, tr: tr, timeout: o.timeout, pending: []byte("220 TLS started\r\n")}
	}
	c := smtp.NewClient(tc)
	c.CommandTimeout = o.timeout
	c.SubmissionTimeout = o.timeout
	return c, nil
}

// sendStartTLS reads the greeting, sends EHLO and STARTTLS over tc (which
// prints them) and returns the TLS connection over raw.
func sendStartTLS(ctx context.Context, tc *sendTranscriptConn, raw net.Conn, cfg *tls.Config, o *sendOptions) (*tls.Conn, error) {
	raw.SetDeadline(time.Now().Add(o.timeout))
	tp := textproto.NewConn(tc)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := tp.Cmd("EHLO %s", o.ehlo); err != nil {
		return nil, err
	}
	_, ehloReply, err := tp.ReadResponse(250)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if !ehloHasExtension(ehloReply, "STARTTLS") {
		return nil, errors.New("the server does not offer STARTTLS")
	}
	if _, err := tp.Cmd("STARTTLS"); err != nil {
		return nil, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	tlsConn := tls.Client(raw, cfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	raw.SetDeadline(time.Time{})
	return tlsConn, nil
}

// ehloHasExtension reports whether an EHLO reply (as textproto joins it: lines
// separated by "\n", first line the greeting) lists ext.
func ehloHasExtension(ehloReply, ext string) bool {
	lines := strings.Split(ehloReply, "\n")
	for _, l := range lines[1:] {
		if kw, _, _ := strings.Cut(l, " "); strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// sendRcptErrors are the recipients one message was refused for: while
// others took it, or all of them (then no DATA was sent).
type sendRcptErrors []*sendRcptErr

func (e sendRcptErrors) Error() string { return errors.Join(e.Unwrap()...).Error() }

func (e sendRcptErrors) Unwrap() []error {
	errs := make([]error, len(e))
	for i, r := range e {
		errs[i] = r
	}
	return errs
}

// sendRcptErr is one recipient refused at RCPT; err is its reply.
type sendRcptErr struct {
	rcpt string
	err  error
}

func (e *sendRcptErr) Error() string { return fmt.Sprintf("RCPT TO:<%s>: %v", e.rcpt, e.err) }
func (e *sendRcptErr) Unwrap() error { return e.err }

// sendOne runs one transaction: MAIL, RCPT for each recipient, DATA.
func sendOne(c *smtp.Client, o *sendOptions, tr *sendTranscript, i int) error {
	msg := buildTestMessage(o, time.Now(), i)
	_, err := sendTransaction(c, tr, o.from, o.to, bytes.NewReader(msg), int64(len(msg)))
	var refused sendRcptErrors
	if errors.As(err, &refused) && len(refused) == len(o.to) {
		return fmt.Errorf("no recipient accepted: %w", err)
	}
	return err
}

// sendTransaction sends the message in body (size bytes, CRLF line
// endings) from `from` to every address of to, and returns the text of the
// server's reply to it (relayq's names the queue ID). The error is nil when
// every recipient took it; sendRcptErrors when some (or all: then no DATA
// was sent) were refused at RCPT; any other error when nothing was sent.
// Reply errors keep the server's *smtp.SMTPError reachable with errors.As.
func sendTransaction(c *smtp.Client, tr *sendTranscript, from string, to []string, body io.Reader, size int64) (string, error) {
	// Declaring SIZE (RFC 1870 §6) lets a server refuse an oversize message
	// at MAIL, before it is transferred. SMTPUTF8 (RFC 6531) is asked for
	// only when an address needs it.
	if err := c.Mail(from, &smtp.MailOptions{Size: size, UTF8: !isASCII(from, to...)}); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", from, sendReplyError(err))
	}
	var refused sendRcptErrors
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			err = sendReplyError(err)
			if sendConnClosing(err) {
				return "", fmt.Errorf("RCPT TO:<%s>: %w", rcpt, err)
			}
			refused = append(refused, &sendRcptErr{rcpt: rcpt, err: err})
		}
	}
	if len(refused) == len(to) {
		if err := c.Reset(); err != nil {
			return "", fmt.Errorf("RSET after %v: %w", refused, sendReplyError(err))
		}
		return "", refused
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", sendReplyError(err))
	}
	tr.beginBody()
	if _, err := io.Copy(w, body); err != nil {
		return "", fmt.Errorf("sending the message: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("end of DATA: %w", sendReplyError(err))
	}
	if len(refused) > 0 {
		return resp.StatusText, refused
	}
	return resp.StatusText, nil
}

// isASCII reports whether every one of the addresses is ASCII.
func isASCII(addr string, more ...string) bool {
	for _, a := range more { // not append(more, addr): that writes into the caller's spare capacity
		if !isASCII(a) {
			return false
		}
	}
	for i := range len(addr) {
		if addr[i] >= 0x80 {
			return false
		}
	}
	return true
}

// newMessageID returns a fresh Message-ID field value (RFC 5322 §3.6.4)
// whose right-hand side is host.
func newMessageID(host string) string {
	return "<" + strings.ToLower(rand.Text()) + "@" + host + ">"
}

// buildTestMessage composes message i (0-based) with CRLF line endings
// (RFC 5322 §2.1).
func buildTestMessage(o *sendOptions, now time.Time, i int) []byte {
	var b bytes.Buffer
	from := o.from
	if from == "" {
		from = "MAILER-DAEMON@" + o.ehlo
	}
	subject := o.subject
	if subject == "" {
		subject = "test " + now.Format(time.RFC1123Z)
	}
	if o.count > 1 {
		subject = fmt.Sprintf("%s (%d of %d)", subject, i+1, o.count)
	}
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: %s\r\n", newMessageID(o.ehlo))
	fmt.Fprintf(&b, "From: %s\r\n", from)
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(o.to, ", "))
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", subject))
	for _, h := range o.headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	switch {
	case o.body != nil:
		// Normalise every line ending to CRLF: a bare LF in DATA is not
		// allowed (RFC 5321 §2.3.8).
		body := bytes.ReplaceAll(o.body, []byte("\r\n"), []byte("\n"))
		body = bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))
		b.Write(body)
		if len(body) > 0 && !bytes.HasSuffix(body, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	case o.size > 0:
		writeFillerBody(&b, o.size)
	default:
		b.WriteString("This is a test message sent by relayq send.\r\n")
	}
	return b.Bytes()
}

// writeFillerBody writes n bytes of body: lines of at most 78 characters plus
// CRLF (RFC 5322 §2.1.1), the last one shorter.
func writeFillerBody(b *bytes.Buffer, n int64) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	line := 0
	for n > 0 {
		l := min(n-2, 76)
		for j := range l {
			b.WriteByte(alphabet[(int64(line)+j)%int64(len(alphabet))])
		}
		b.WriteString("\r\n")
		n -= max(l, 0) + 2
		line++
	}
}

// sendReplyError formats an SMTP reply as the server sent it ("550 5.1.1
// text"); other errors are returned unchanged.
func sendReplyError(err error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return err
	}
	s := fmt.Sprintf("%d", se.Code)
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return &sendReplyErr{se: se, text: s + " " + strings.ReplaceAll(se.Message, "\n", " ")}
}

// sendReplyErr is a server's reply, printed as it was sent.
type sendReplyErr struct {
	se   *smtp.SMTPError
	text string
}

func (r *sendReplyErr) Error() string { return r.text }
func (r *sendReplyErr) Unwrap() error { return r.se }

// sendConnClosing reports whether the connection is unusable after err: a 421
// (RFC 5321 §3.8: the server is closing) or any non-reply error (I/O).
func sendConnClosing(err error) bool {
	var r *sendReplyErr
	if errors.As(err, &r) {
		return r.se.Code == 421
	}
	return true
}

// sendTranscript prints an SMTP dialogue line by line: "-> " for what the
// client sends, "<- " for what the server replies, "=== " for notes. The
// message body is summarised, AUTH secrets are masked.
type sendTranscript struct {
	out io.Writer
	mu  struct {
		sync.Mutex
		sent, received []byte // incomplete lines
		inBody         bool
		bodyBytes      int
		inAuth         bool
	}
}

func (t *sendTranscript) note(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.out, "=== "+format+"\n", args...)
}

func (t *sendTranscript) noteTLS(conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		t.note("TLS started: %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	}
}

// beginBody is called after the 354 reply to DATA: what is sent from now on
// up to the terminating "." line is the message.
func (t *sendTranscript) beginBody() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mu.inBody, t.mu.bodyBytes = true, 0
}

func (t *sendTranscript) wrote(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mu.sent = t.eachLineLocked(append(t.mu.sent, p...), func(line string) {
		switch {
		case t.mu.inBody && line == ".":
			// Dot-stuffing (RFC 5321 §4.5.2) means only the end marker is a lone ".".
			fmt.Fprintf(t.out, "-> [message: %d bytes]\n-> .\n", t.mu.bodyBytes)
			t.mu.inBody = false
		case t.mu.inBody:
			t.mu.bodyBytes += len(line) + 2
		case t.mu.inAuth:
			fmt.Fprintf(t.out, "-> ****\n")
		case len(line) >= 5 && strings.EqualFold(line[:5], "AUTH "):
			mech, initial, _ := strings.Cut(line[5:], " ")
			if initial != "" {
				initial = " ****"
			}
			fmt.Fprintf(t.out, "-> AUTH %s%s\n", mech, initial)
			t.mu.inAuth = true
		default:
			fmt.Fprintf(t.out, "-> %s\n", line)
		}
	})
}

func (t *sendTranscript) read(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mu.received = t.eachLineLocked(append(t.mu.received, p...), func(line string) {
		if t.mu.inAuth && !strings.HasPrefix(line, "334") {
			t.mu.inAuth = false
		}
		fmt.Fprintf(t.out, "<- %s\n", line)
	})
}

// eachLineLocked calls f for each complete line in buf and returns the
// incomplete rest.
func (t *sendTranscript) eachLineLocked(buf []byte, f func(string)) []byte {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return buf
		}
		f(string(bytes.TrimSuffix(buf[:i], []byte("\r"))))
		buf = buf[i+1:]
	}
}

// sendTranscriptConn shows a connection's cleartext traffic to its transcript
// and keeps a sliding write deadline: go-smtp sets none for the DATA body.
type sendTranscriptConn struct {
	net.Conn
	tr      *sendTranscript
	timeout time.Duration
	pending []byte // handed to the reader before the connection's data, not printed
}

func (c *sendTranscriptConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.tr.read(p[:n])
	return n, err
}

func (c *sendTranscriptConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(p)
	c.tr.wrote(p[:n])
	return n, err
}
