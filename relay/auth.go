package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"relayq/internal/smtpreply"
)

// maxAuthFailures failed AUTH attempts on one connection close it with
// 421 4.7.0: the third failure gets that reply instead of 535.
const maxAuthFailures = 3

// maxTrackedSources bounds the sources failureLimiter remembers; beyond it
// new sources are not tracked (they still meet the per-connection limit).
const maxTrackedSources = 1 << 16

// authenticator checks AUTH credentials against bcrypt hashes. Its users
// map is read-only after newAuthenticator, so checks take no lock; a
// reload makes a new one (Server.SetPolicy).
type authenticator struct {
	users map[string][]byte
	// dummy is compared against for unknown users, so that a wrong user
	// name costs as much time as a wrong password: no user enumeration by
	// timing. Its cost is the highest of the users' costs.
	dummy []byte
	// sem bounds concurrent bcrypt comparisons (each is ~50-100 ms of CPU
	// at cost 10) to the CPUs, so a burst of AUTH cannot starve the rest.
	sem chan struct{}
}

func newAuthenticator(users map[string]string) *authenticator {
	a := &authenticator{users: make(map[string][]byte, len(users)), sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
	cost := bcrypt.MinCost
	for name, h := range users {
		a.users[name] = []byte(h)
		if c, err := bcrypt.Cost([]byte(h)); err == nil && c > cost {
			cost = c
		}
	}
	if len(users) > 0 {
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		a.dummy, _ = bcrypt.GenerateFromPassword(secret, cost)
	}
	return a
}

func (a *authenticator) enabled() bool { return len(a.users) > 0 }

// check reports whether pass is user's password. It always makes exactly
// one bcrypt comparison. An error means ctx ended while waiting for a turn.
func (a *authenticator) check(ctx context.Context, user, pass string) (bool, error) {
	hash, known := a.users[user]
	if !known {
		hash = a.dummy
	}
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(pass))
	<-a.sem
	return known && err == nil, nil
}

// failureLimiter is a sliding window of failed AUTH attempts per source:
// an IPv4 address, or an IPv6 /64 (one host usually has a whole /64).
type failureLimiter struct {
	max    int
	window time.Duration
	now    func() time.Time
	mu     struct {
		sync.Mutex
		fails   map[netip.Prefix][]time.Time // oldest first, at most max
		pruneAt int
	}
}

func newFailureLimiter(max int, window time.Duration, now func() time.Time) *failureLimiter {
	l := &failureLimiter{max: max, window: window, now: now}
	l.mu.fails = make(map[netip.Prefix][]time.Time)
	l.mu.pruneAt = 1024
	return l
}

func sourceKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is4() || !ip.IsValid() {
		return netip.PrefixFrom(ip, ip.BitLen())
	}
	p, _ := ip.Prefix(64)
	return p
}

// limited reports whether ip's source has max failures within the window.
func (l *failureLimiter) limited(ip netip.Addr) bool {
	since := l.now().Add(-l.window)
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, t := range l.mu.fails[sourceKey(ip)] {
		if t.After(since) {
			n++
		}
	}
	return n >= l.max
}

// record notes a failure from ip.
func (l *failureLimiter) record(ip netip.Addr) {
	now := l.now()
	key := sourceKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	ts, known := l.mu.fails[key]
	if !known && len(l.mu.fails) >= l.mu.pruneAt {
		l.pruneLocked(now)
		if len(l.mu.fails) >= maxTrackedSources {
			return
		}
	}
	if len(ts) >= l.max {
		ts = append(ts[:0], ts[len(ts)-l.max+1:]...)
	}
	l.mu.fails[key] = append(ts, now)
}

// pruneLocked forgets the sources whose last failure left the window.
// Amortised: the next prune waits until the map has doubled.
func (l *failureLimiter) pruneLocked(now time.Time) {
	since := now.Add(-l.window)
	for k, ts := range l.mu.fails {
		if !ts[len(ts)-1].After(since) {
			delete(l.mu.fails, k)
		}
	}
	l.mu.pruneAt = max(1024, 2*len(l.mu.fails))
}

// authAllowed reports whether AUTH may happen on this connection: with TLS
// or on a listener that allows insecure AUTH (RFC 4954 §4).
func (s *session) authAllowed() bool {
	_, isTLS := s.conn.TLSConnectionState()
	return isTLS || s.lc.AllowInsecureAuth
}

// AuthMechanisms lists the SASL mechanisms go-smtp advertises in EHLO:
// none without users or, on a plaintext connection, without
// allow_insecure_auth.
func (s *session) AuthMechanisms() []string {
	if !s.srv.pol.Load().auth.enabled() || !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts an AUTH exchange (RFC 4954). go-smtp refuses a second AUTH
// after success itself. The exchange checks against the users in force
// when it began.
func (s *session) Auth(mech string) (sasl.Server, error) {
	ev := func() *zerolog.Event { return s.log.Warn().Str("stage", "auth").Str("mechanism", mech) }
	auth := s.srv.pol.Load().auth
	if !auth.enabled() {
		return nil, s.reject(ev(), replyAuthUnknownMech)
	}
	if !s.authAllowed() {
		return nil, s.reject(ev(), replyAuthNeedsTLS)
	}
	s.mu.Lock()
	inTxn := s.mu.inTxn
	s.mu.Unlock()
	if inTxn {
		return nil, s.reject(ev(), replyAuthInTxn) // RFC 4954 §4
	}
	if s.srv.fails.limited(s.ip) {
		// No bcrypt for a source that is guessing: the limit saves the CPU.
		return nil, s.authFailed(ev(), replyAuthLimited)
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{s: s, auth: auth}, nil
	case sasl.Login:
		return &loginServer{s: s, auth: auth}, nil
	}
	return nil, s.reject(ev(), replyAuthUnknownMech)
}

// checkCredentials ends an AUTH exchange. identity is PLAIN's
// authorization identity: relayq acts for nobody else, so it must be empty
// or the user itself (RFC 4616 §2). A nil return is success (235).
func (s *session) checkCredentials(auth *authenticator, identity, user, pass string) error {
	ev := s.log.Warn().Str("stage", "auth").Str("user", truncate(user, 256))
	if identity != "" && identity != user {
		s.srv.fails.record(s.ip)
		return s.authFailed(ev.Str("identity", truncate(identity, 256)), replyAuthInvalid)
	}
	ok, err := auth.check(s.ctx, user, pass)
	if err != nil {
		return s.reject(ev.Err(err), replyAuthTemp)
	}
	if !ok {
		s.srv.fails.record(s.ip)
		return s.authFailed(ev, replyAuthInvalid)
	}
	s.mu.Lock()
	s.mu.authenticated, s.mu.user = true, user
	s.mu.Unlock()
	s.log.Info().Str("stage", "auth").Str("user", user).Msg("authenticated")
	return nil
}

// authFailed counts a failed attempt on this connection and returns r,
// or, at the third, 421 4.7.0 and has the connection closed once that
// reply is sent.
func (s *session) authFailed(ev *zerolog.Event, r *smtpreply.Reply) error {
	n := 1
	if s.tc != nil {
		n = int(s.tc.authFailures.Add(1))
	}
	if n >= maxAuthFailures {
		s.tc.closeAfterReply.Store(true) // n > 1 only with a trackedConn
		r = replyAuthTooMany
	}
	return s.reject(ev.Int("failures", n), r)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// plainServer is the server side of SASL PLAIN (RFC 4616), with relay's
// replies and failure counting (go-sasl's would answer a malformed
// response with its own text).
type plainServer struct {
	s    *session
	auth *authenticator
}

func (p *plainServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	if resp == nil {
		// No initial response: an empty challenge, "334 " (RFC 4954 §4).
		return []byte{}, false, nil
	}
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 {
		ev := p.s.log.Warn().Str("stage", "auth").Str("mechanism", sasl.Plain)
		return nil, true, p.s.authFailed(ev, replyAuthMalformed)
	}
	return nil, true, p.s.checkCredentials(p.auth, string(parts[0]), string(parts[1]), string(parts[2]))
}

// loginServer is the server side of the obsolete but common LOGIN
// mechanism (draft-murchison-sasl-login), which go-sasl offers only as a
// client. The user name may come as the initial response.
type loginServer struct {
	s    *session
	auth *authenticator
	step int
	user string
}

func (l *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch {
	case l.step == 0 && resp == nil:
		l.step = 1
		return []byte("Username:"), false, nil
	case l.step <= 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.s.checkCredentials(l.auth, "", l.user, string(resp))
	}
}
