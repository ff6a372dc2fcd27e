package sink

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one accepted message as the sink received it.
type Message struct {
	From       string
	To         []string
	Data       []byte
	RemoteAddr string
	At         time.Time
	User       string // the session's AUTH user, "" without AUTH
}

func (m Message) clone() Message {
	m.To = append([]string(nil), m.To...)
	m.Data = append([]byte(nil), m.Data...)
	return m
}

// Hooks script the replies of the sink. Each returns an *smtp.SMTPError to
// reply with it, or nil to accept. A nil hook accepts.
type Hooks struct {
	OnMail func(from string) error
	OnRcpt func(to string) error
	// OnData is called with the complete message before it is counted or
	// stored; an error rejects it.
	OnData func(m *Message) error
}

// Options configure scripted behaviour (all optional).
type Options struct {
	Addr          string            // listen address, default "127.0.0.1:0"
	Dir           string            // if set, each message is also stored as <Dir>/<n>-<unixnano>.eml
	Log           io.Writer         // if set, one line per message: time, from, to, size, file
	MaxSize       int64             // advertised with SIZE and enforced (552 5.3.4)
	MaxRecipients int               // beyond it RCPT gets "452 4.5.3 Too many recipients"
	MaxConns      int               // beyond it a new connection gets 421 4.3.2 and is closed
	TLS           *tls.Config       // enables STARTTLS; AUTH is then offered only inside TLS
	ImplicitTLS   bool              // TLS from the first byte (needs TLS)
	Users         map[string]string // AUTH user → password; if non-empty, AUTH is required before MAIL
	// AuthMechanisms lists the SASL mechanisms offered when Users is set,
	// default PLAIN and LOGIN; tests set one to check a client's choice.
	AuthMechanisms []string
	// Bearer, if set, offers XOAUTH2 and OAUTHBEARER (RFC 7628) too and
	// reports whether token is valid for user; AUTH is then required
	// before MAIL, as with Users. A refused token gets Google's error
	// challenge and then 535 5.7.8, or with NoBearerChallenge (XOAUTH2)
	// Microsoft's plain 535 5.7.3.
	Bearer            func(user, token string) bool
	NoBearerChallenge bool
	DisableDSN        bool
	// Discard keeps only the envelope of each message in memory, not its
	// data (for load tests; the count and Wait still work).
	Discard bool
	// Hooks: return an *smtp.SMTPError to reply with it; nil to accept.
	OnMail func(from string) error
	OnRcpt func(to string) error
	OnData func(m *Message) error // called before the message is counted/stored; an error rejects it
}

// Server is a running sink. Its methods are safe for concurrent use.
type Server struct {
	opts     Options
	srv      *smtp.Server
	ln       *limitListener
	served   chan struct{} // closed when Serve returns
	closeErr error
	closing  sync.Once
	logMu    sync.Mutex // serialises lines on opts.Log

	mu struct {
		sync.Mutex
		msgs    []Message
		hooks   Hooks
		changed chan struct{} // closed and replaced whenever a message is counted
	}
}

// ioTimeout bounds every read and write of the sink, so that a test whose
// client hangs fails instead of hanging with it.
const ioTimeout = time.Minute

// Start listens and serves in the background until Close.
func Start(opts Options) (*Server, error) {
	if opts.ImplicitTLS && opts.TLS == nil {
		return nil, errors.New("sink: ImplicitTLS needs a TLS config")
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("sink: %w", err)
		}
	}
	tcp, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	s := &Server{opts: opts, served: make(chan struct{})}
	s.mu.hooks = Hooks{OnMail: opts.OnMail, OnRcpt: opts.OnRcpt, OnData: opts.OnData}
	s.mu.changed = make(chan struct{})
	s.ln = &limitListener{Listener: tcp}
	s.ln.setMax(opts.MaxConns)
	var l net.Listener = s.ln
	if opts.ImplicitTLS {
		s.ln.implicit = opts.TLS
		l = tls.NewListener(s.ln, opts.TLS)
	}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "sink.localhost"
	srv.MaxMessageBytes = opts.MaxSize
	srv.ReadTimeout = ioTimeout
	srv.WriteTimeout = ioTimeout
	srv.EnableDSN = !opts.DisableDSN
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = nopLogger{}
	if !opts.ImplicitTLS {
		srv.TLSConfig = opts.TLS // STARTTLS is offered only when set
	}
	// Without any TLS there is no way to protect AUTH, so allow it in clear
	// (loopback tests); with TLS, AUTH is offered only once encrypted.
	srv.AllowInsecureAuth = opts.TLS == nil
	if opts.Bearer != nil {
		srv.MaxLineLength = max(srv.MaxLineLength, authLineLength)
	}
	s.srv = srv

	go func() {
		defer close(s.served)
		_ = srv.Serve(l)
	}()
	return s, nil
}

// Addr is the host:port the sink listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Messages returns copies of the accepted messages, in arrival order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.mu.msgs))
	for i, m := range s.mu.msgs {
		out[i] = m.clone()
	}
	return out
}

// Count is the number of accepted messages.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.msgs)
}

// Connections reports the concurrent-connection counters: currently open,
// the highest number seen open at once, and how many got the 421 of
// MaxConns.
func (s *Server) Connections() (open, max, refused int) {
	return s.ln.counters()
}

// Wait returns when at least n messages were accepted, or with ctx's error.
func (s *Server) Wait(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		count, changed := len(s.mu.msgs), s.mu.changed
		s.mu.Unlock()
		if count >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("sink: waiting for %d messages, have %d: %w", n, count, ctx.Err())
		}
	}
}

// SetHooks replaces all three hooks at once; sessions in progress see the
// new hooks from their next command.
func (s *Server) SetHooks(h Hooks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.hooks = h
}

func (s *Server) hooks() Hooks {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.hooks
}

// Close stops listening, drops every open connection and waits for the
// server goroutines to end. It is safe to call more than once.
func (s *Server) Close() error {
	s.closing.Do(func() {
		s.closeErr = s.srv.Close()
		// go-smtp closes only the listeners its Serve has registered: a
		// Close right after Start can come before that, and Serve would
		// then accept on forever. Closing the listener here ends it.
		s.ln.Close()
		<-s.served
		s.ln.refusing.Wait()
	})
	return s.closeErr
}

// store writes m's file when Dir is set, logs it, then counts it.
func (s *Server) store(m Message) error {
	s.mu.Lock()
	n := len(s.mu.msgs) + 1
	s.mu.Unlock()

	file := "-"
	if s.opts.Dir != "" {
		// n is only a readable prefix (two sessions may pick the same one);
		// the nanosecond timestamp keeps names apart, O_EXCL catches the rest.
		file = filepath.Join(s.opts.Dir, fmt.Sprintf("%d-%d.eml", n, m.At.UnixNano()))
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot store message"}
		}
		_, werr := f.Write(m.Data)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(file)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot store message"}
		}
	}

	if s.opts.Log != nil {
		s.logMu.Lock()
		fmt.Fprintf(s.opts.Log, "%s from=<%s> to=<%s> size=%d file=%s\n",
			m.At.Format(time.RFC3339), m.From, strings.Join(m.To, ">,<"), len(m.Data), file)
		s.logMu.Unlock()
	}

	if s.opts.Discard {
		m.Data = nil
	}
	// Counted last, so that a waiter finds the file and the log line.
	s.mu.Lock()
	s.mu.msgs = append(s.mu.msgs, m)
	close(s.mu.changed)
	s.mu.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	cc, _ := c.Conn().(*countedConn) // nil under implicit TLS: never shed
	return &session{s: s, remote: c.Conn().RemoteAddr().String(), conn: cc}, nil
}

// session is one SMTP session; go-smtp calls its methods from one goroutine.
type session struct {
	s      *Server
	remote string
	conn   *countedConn
	authed bool
	user   string // authenticated as
	from   string
	to     []string
}

var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errTooManyRcpts = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
)

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	// go-smtp never requires AUTH itself (docs/design.md "What the code relies on").
	if ss.authRequired() && !ss.authed {
		return errAuthRequired
	}
	if ss.conn != nil && ss.s.ln.shed(ss.conn) {
		return errShed
	}
	if h := ss.s.hooks().OnMail; h != nil {
		if err := h(from); err != nil {
			return err
		}
	}
	ss.from, ss.to = from, nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if max := ss.s.opts.MaxRecipients; max > 0 && len(ss.to) >= max {
		return errTooManyRcpts
	}
	if h := ss.s.hooks().OnRcpt; h != nil {
		if err := h(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	// go-smtp's reader returns ErrDataTooLarge (552 5.3.4) past MaxSize.
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	m := Message{
		From:       ss.from,
		To:         append([]string(nil), ss.to...),
		Data:       buf.Bytes(),
		RemoteAddr: ss.remote,
		At:         time.Now(),
		User:       ss.user,
	}
	if h := ss.s.hooks().OnData; h != nil {
		if err := h(&m); err != nil {
			return err
		}
	}
	return ss.s.store(m)
}

func (ss *session) Reset() { ss.from, ss.to = "", nil }

func (ss *session) Logout() error { return nil }

func (ss *session) authRequired() bool { return len(ss.s.opts.Users) > 0 || ss.s.opts.Bearer != nil }

func (ss *session) AuthMechanisms() []string {
	if !ss.authRequired() {
		return nil
	}
	if m := ss.s.opts.AuthMechanisms; len(m) > 0 {
		return m
	}
	var m []string
	if len(ss.s.opts.Users) > 0 {
		m = append(m, sasl.Plain, sasl.Login)
	}
	if ss.s.opts.Bearer != nil {
		m = append(m, mechXOAuth2, mechOAuthBearer)
	}
	return m
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	offered := false
	for _, m := range ss.AuthMechanisms() {
		offered = offered || strings.EqualFold(m, mech)
	}
	if !offered {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	check := func(user, pass string) error {
		want, ok := ss.s.opts.Users[user]
		if !ok || subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
			return smtp.ErrAuthFailed // 535 5.7.8 (RFC 4954 §6)
		}
		ss.authed, ss.user = true, user
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return smtp.ErrAuthFailed
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	case mechXOAuth2, mechOAuthBearer:
		if ss.s.opts.Bearer != nil {
			return ss.bearerServer(strings.ToUpper(mech)), nil
		}
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the non-standard but common LOGIN
// mechanism (draft-murchison-sasl-login), which go-sasl offers only as a
// client. It accepts the user name as an initial response, as go-sasl's
// client sends it.
type loginServer struct {
	check func(user, pass string) error
	step  int
	user  string
}

func (l *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		if resp == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// nopLogger silences go-smtp's error log: a sink's peers are tests that
// drop connections on purpose.
type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}
