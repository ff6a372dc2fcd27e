package relay

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/internal/diskspace"
	"relayq/internal/smtpreply"
	"relayq/pressure"
	"relayq/queued"
)

// session is one client connection, from EHLO to logout (go-smtp makes a
// new one after STARTTLS).
type session struct {
	srv    *Server
	lc     ListenerConfig
	conn   *smtp.Conn
	tc     *trackedConn // nil if the conn did not come through Serve
	ip     netip.Addr
	rdns   string
	log    zerolog.Logger
	ctx    context.Context // cancelled on logout
	cancel context.CancelFunc

	mu struct {
		sync.Mutex
		// authenticated is set by a successful AUTH. Together with the
		// allowed networks and the listener's mode it is the whole relay
		// policy: see mayRelayLocked.
		authenticated bool
		user          string // who authenticated
		inTxn         bool   // MAIL accepted; counted in srv.txns
		// pol is the policy the transaction began with, set at MAIL: a
		// reload meanwhile applies from the next transaction (Policy).
		pol  *policy
		env  queued.Envelope
		seen map[string]bool // recipients so far, canonical form
		// dead is set when the connection is out of step with the client
		// (a stalled body); Reset closes it after the reply is written.
		dead bool
	}
}

var _ smtp.Session = (*session)(nil)

var _ smtp.AuthSession = (*session)(nil)

// newSession is go-smtp's Backend: it runs at the first EHLO/HELO, and
// again after STARTTLS, which forgets everything (RFC 3207 §4.2).
func (s *Server) newSession(c *smtp.Conn, lc ListenerConfig) (smtp.Session, error) {
	if s.closing() {
		return nil, smtpError(replyShuttingDown)
	}
	ip := remoteIP(c.Conn().RemoteAddr())
	ctx, cancel := context.WithCancel(s.ctx)
	sess := &session{
		srv:    s,
		lc:     lc,
		conn:   c,
		tc:     trackedOf(c.Conn()),
		ip:     ip,
		log:    s.log.With().Str("ip", ip.String()).Logger(),
		ctx:    ctx,
		cancel: cancel,
	}
	sess.rdns = s.lookupName(ctx, ip)
	return sess, nil
}

// mayRelayLocked is the relay policy (docs/design.md "Invariants" 6): a client
// that has authenticated may relay, and so may one in an allowed network
// of p except on a submission listener, where everyone must AUTH; nobody
// else.
func (s *session) mayRelayLocked(p *policy) bool {
	return s.mu.authenticated || s.lc.Mode != ModeSubmission && p.mayRelayFrom(s.ip)
}

// Mail starts a transaction (RFC 5321 §4.1.1.2).
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.dead {
		return smtpError(replyStalled)
	}
	ev := func() *zerolog.Event { return s.log.Warn().Str("stage", "mail").Str("from", from) }
	if s.mu.inTxn {
		return s.reject(ev(), replyNestedMail)
	}
	if s.lc.Mode == ModeSubmission && !s.mu.authenticated {
		return s.reject(ev(), replyAuthRequired) // RFC 6409 §4.3, RFC 4954 §6
	}
	pol := s.srv.pol.Load() // this transaction's policy, to its end
	if reply := s.pressureLocked(pol); reply != nil {
		// Info, not warn: under pressure every MAIL is refused, and the
		// level change itself was logged at warn by the monitor.
		return s.reject(s.log.Info().Str("stage", "mail").Str("from", from), reply)
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	if from != "" { // "" is the null reverse-path <> of bounces
		addr, err := checkAddress(from, opts.UTF8)
		if err != nil {
			return s.reject(ev().Err(err), replyBadAddress)
		}
		from = addr
	}
	// RFC 1870 §6.2. go-smtp refuses this before calling Mail already; the
	// check stays so that the limit holds whatever go-smtp does.
	if opts.Size > s.srv.cfg.MaxMessageSize {
		return s.reject(ev().Int64("size", opts.Size), replyTooBig)
	}
	if err := s.rateMailLocked(pol, from); err != nil {
		return err // 450 4.7.1 (ratelimit.go)
	}
	if !s.srv.beginTxn() {
		return s.reject(ev(), replyShuttingDown)
	}
	s.mu.inTxn = true
	s.mu.pol = pol
	s.mu.seen = make(map[string]bool)
	s.mu.env = queued.Envelope{
		From:     from,
		EnvID:    opts.EnvelopeID,
		Ret:      string(opts.Return),
		Body8Bit: opts.Body == smtp.Body8BitMIME,
		SMTPUTF8: opts.UTF8,
		Client:   addressLiteral(s.ip) + " " + sanitizeTraceWord(s.conn.Hostname()),
	}
	return nil
}

// Rcpt adds a recipient (RFC 5321 §4.1.1.3).
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := func() *zerolog.Event {
		return s.log.Warn().Str("stage", "rcpt").Str("from", s.mu.env.From).Str("rcpt", to)
	}
	if !s.mu.inTxn {
		return s.reject(ev(), &smtpreply.Reply{Code: 503, Enhanced: codeBadSequence, Text: "MAIL first"})
	}
	// The policy comes first: a client that may not relay learns nothing
	// about how its addresses would be read, whatever tricks they hold.
	if !s.mayRelayLocked(s.mu.pol) {
		return s.reject(ev(), replyRelayDenied)
	}
	addr, err := checkAddress(to, s.mu.env.SMTPUTF8)
	if err != nil {
		return s.reject(ev().Err(err), replyBadAddress)
	}
	if routingLocal(addr) {
		return s.reject(ev(), replyRouting)
	}
	key := canonical(addr)
	if s.mu.seen[key] {
		return nil // collapsed: one envelope entry, one copy delivered
	}
	if len(s.mu.env.Recipients) >= s.mu.pol.MaxRecipients {
		return s.reject(ev(), replyTooManyRcpts)
	}
	if err := s.rateRcptLocked(addr); err != nil {
		return err // 450 4.7.1 (ratelimit.go)
	}
	r := queued.Recipient{Addr: addr}
	if opts != nil {
		notify := make([]string, len(opts.Notify))
		for i, n := range opts.Notify {
			notify[i] = strings.ToUpper(string(n))
		}
		r.Notify = strings.Join(notify, ",")
		if opts.OriginalRecipient != "" {
			// RFC 3461 §4.2 "addr-type;address"; go-smtp hands it decoded.
			r.ORCPT = strings.ToLower(string(opts.OriginalRecipientType)) + ";" + opts.OriginalRecipient
		}
	}
	s.mu.seen[key] = true
	s.mu.env.Recipients = append(s.mu.env.Recipients, r)
	return nil
}

// canonical is the form in which two recipients are the same: the domain is
// case-insensitive (RFC 5321 §2.4), the local part is not.
func canonical(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	return addr[:at+1] + strings.ToLower(addr[at+1:])
}

// Data streams the message to the queue. Its "error" is the reply: go-smtp
// lets a backend choose the text of a 250 only by returning it as an
// *smtp.SMTPError.
func (s *session) Data(r io.Reader) error {
	s.mu.Lock()
	if !s.mu.inTxn || len(s.mu.env.Recipients) == 0 {
		s.mu.Unlock()
		return smtpError(&smtpreply.Reply{Code: 503, Enhanced: codeBadSequence, Text: "RCPT first"})
	}
	env := s.mu.env
	env.Recipients = slices.Clone(env.Recipients)
	auth, user := s.mu.authenticated, s.mu.user
	pol := s.mu.pol
	// Counted while the transaction is, so Shutdown's Wait cannot have seen
	// zero. With BDAT, go-smtp runs Data in its own goroutine and an RSET
	// can end the transaction before Data returns.
	s.srv.txns.Add(1)
	s.mu.Unlock()
	defer s.srv.txns.Done()

	cfg := &s.srv.cfg
	// Stays on through go-smtp's drain of a refused body; Reset turns it off.
	s.tc.setSlide(cfg.ReadTimeout)

	id := s.srv.q.NewID()
	rcpts := make([]string, len(env.Recipients))
	for i := range env.Recipients {
		rcpts[i] = env.Recipients[i].Addr
	}
	_, isTLS := s.conn.TLSConnectionState()
	hdr := receivedHeader(trace{
		helo:     s.conn.Hostname(),
		rdns:     s.rdns,
		ip:       s.ip,
		hostname: cfg.Hostname,
		tls:      isTLS,
		auth:     auth,
		id:       id,
		rcpts:    rcpts,
		date:     cfg.Now(),
	})
	src := r
	if fast := s.tc.takeFast(cfg.MaxMessageSize); fast != nil {
		src = fast // read by runs, not byte by byte (fastdata.go)
	}
	body := newBodyReader(src, cfg.MaxMessageSize, pol.MaxHops, pol.BareLineEndings)
	body.env = &env // Message-ID and Subject, for operators (headerscan.go)
	defer body.release()
	msg, release, err := s.signed(id, body) // DKIM (sign.go); body itself when not signing
	defer release()
	if err == nil {
		err = s.srv.q.Put(s.ctx, id, &env, io.MultiReader(strings.NewReader(hdr), msg))
	}

	ev := func() *zerolog.Event {
		return s.log.Warn().Str("stage", "data").Str("id", string(id)).Str("from", env.From).
			Strs("rcpt", rcpts).Int64("size", body.Size())
	}
	if reply := body.Reply(); reply != nil {
		if err == nil {
			// The queue broke its contract and committed a body that ended
			// in an error; the client is told what went wrong all the same.
			s.log.Error().Str("id", string(id)).Str("reply", reply.Error()).Msg("queue committed a failed body")
		}
		if reply == replyStalled || reply == replyLineTooLong {
			// The client is gone or out of step with us: stop sliding so
			// go-smtp's drain ends at once, and close after the reply.
			s.tc.setSlide(0)
			s.mu.Lock()
			s.mu.dead = true
			s.mu.Unlock()
			return s.reject(ev().AnErr("cause", body.cause), reply)
		}
		return s.reject(ev(), reply)
	}
	if err == nil && !body.Done() {
		err = errors.New("put returned before the end of the body")
	}
	if errors.Is(err, diskspace.ErrNoRoom) {
		// The queue's volume is down to its reserve: the mail system is
		// full (RFC 3463 X.3.1). Back pressure goes to high at once, so
		// the next MAIL is refused before its body is sent.
		s.srv.cfg.Pressure.NoRoom()
		return s.reject(ev().Err(err), replyPressure(pressure.ResourceFreeDisk))
	}
	if err != nil {
		return s.reject(ev().Err(err), replyStoreFailed)
	}
	if cfg.Accepted != nil {
		cfg.Accepted(time.Since(body.ended))
	}
	s.log.Info().Str("id", string(id)).Str("from", env.From).Strs("rcpt", rcpts).
		Int64("size", env.Size).Str("user", user).
		Str("message_id", env.MessageID).Str("subject", env.Subject).Msg("received")
	return &smtp.SMTPError{
		Code:         250,
		EnhancedCode: smtp.EnhancedCode(smtpreply.CodeOK),
		Message:      "OK queued as " + string(id),
	}
}

// Reset ends the transaction. go-smtp calls it on RSET, on a repeated EHLO
// and after the reply to DATA has been written.
func (s *session) Reset() {
	s.mu.Lock()
	s.endTxnLocked()
	dead := s.mu.dead
	s.mu.Unlock()
	s.tc.setSlide(0)
	if dead && s.tc != nil {
		s.tc.Close()
	}
}

// Logout ends the session with its connection.
func (s *session) Logout() error {
	s.mu.Lock()
	s.endTxnLocked()
	s.mu.Unlock()
	s.cancel()
	return nil
}

func (s *session) endTxnLocked() {
	if s.mu.inTxn {
		s.mu.inTxn = false
		s.srv.txns.Done()
	}
	s.mu.env = queued.Envelope{}
	s.mu.seen = nil
	s.mu.pol = nil
}

// reject logs a refused command at warn and returns its reply for go-smtp.
func (s *session) reject(ev *zerolog.Event, r *smtpreply.Reply) error {
	ev.Int("code", r.Code).Str("enhanced", r.Status().String()).Str("reply", r.Text).Msg("rejected")
	return smtpError(r)
}

// pressureLocked returns the back-pressure refusal for a MAIL now, or nil.
// At medium only allowed networks and authenticated clients get through;
// at high nobody does (Exchange's levels, docs/design.md "Back pressure").
func (s *session) pressureLocked(p *policy) *smtpreply.Reply {
	level, res := s.srv.cfg.Pressure.Level()
	switch {
	case level >= pressure.High:
		return replyPressure(res)
	case level == pressure.Medium && !s.mayRelayLocked(p):
		return replyPressure(res)
	}
	return nil
}
