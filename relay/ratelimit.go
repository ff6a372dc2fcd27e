package relay

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"relayq/internal/smtpreply"
)

// RateLimits are the hourly sending limits ([limits]
// max_messages_per_hour_per_user, max_messages_per_hour_per_source,
// max_recipients_per_hour_per_user): what stops an app stuck in a loop, or
// a stolen password, from sending a million mails in an hour and getting
// the relay's address blocklisted. 0 turns a limit off.
//
// The per-user limits apply to authenticated sessions only; the
// per-source limit to every client address (an IPv4 address, an IPv6 /64:
// one host usually has a whole /64), allowed networks included. Beyond a
// limit MAIL (RCPT for the recipient limit) gets 450 4.7.1 "Rate limit
// exceeded for <user|address>, try again later"; the client keeps the
// message and tries again later (RFC 5321 §4.2.5).
//
// The limits are token buckets (golang.org/x/time/rate), one per user or
// source and limit: a bucket holds as many tokens as the hourly limit and
// refills at that many per hour, each message (or recipient) takes one.
// So a burst up to the limit goes through at once and, after it, sending
// is paced at the limit per hour; over any hour at most twice the limit
// passes (a full bucket and its refill), over longer runs the limit. A
// sliding window log would be exact over every hour but keep one time per
// message and key (10,000 at a limit of 10,000); a bucket is two numbers
// whatever the limit, takes the time as an argument (an injectable clock),
// and a full bucket is the same as none, so the bucket of an idle key is
// dropped without changing any answer: memory follows the keys active in
// the last hour, not the traffic.
//
// A token is taken at MAIL (at RCPT for recipients), when the command is
// accepted: a transaction that is later reset, or whose DATA is refused,
// has still used it, as it used the relay's attention.
type RateLimits struct {
	MessagesPerUser   int
	MessagesPerSource int
	RecipientsPerUser int
}

// RateLimit names one of the three limits (the limit label of
// relayq_rate_limit_refusals_total).
type RateLimit string

const (
	RateUserMessages   RateLimit = "user_messages"
	RateSourceMessages RateLimit = "source_messages"
	RateUserRecipients RateLimit = "user_recipients"
)

// RateLimits lists the limits in a fixed order.
var rateLimitNames = []RateLimit{RateUserMessages, RateSourceMessages, RateUserRecipients}

// RateLimited is a user or source refused now, for `relayq status`.
type RateLimited struct {
	Limit   RateLimit
	Key     string // user name, or address (IPv6: its /64)
	PerHour int    // the limit it is over
	Since   time.Time
	Refused int64 // refusals since Since
}

// RateStatus is the rate limiter's state for the operator.
type RateStatus struct {
	// Limited are the keys over a limit now, by limit then key.
	Limited []RateLimited
	// Refused counts every refusal since start, per limit.
	Refused map[RateLimit]int64
}

// codeRateLimited is RFC 3463 X.7.1, "delivery not authorized": temporary
// here, as the refusal ends with the next token.
var codeRateLimited = smtpreply.EnhancedCode{4, 7, 1}

// rateSweepEvery is how often buckets that are full again are dropped.
const rateSweepEvery = time.Minute

type rateKey struct {
	limit RateLimit
	user  string
	src   netip.Prefix
}

func (k rateKey) String() string {
	if k.user != "" {
		return k.user
	}
	if k.src.Addr().Is4() {
		return k.src.Addr().String()
	}
	return k.src.String()
}

// rateBucket is one key's bucket and its refusal episode: from the first
// refusal to the next message allowed, logged once at each end.
type rateBucket struct {
	lim     *rate.Limiter
	since   time.Time // first refusal of the episode; zero: not refusing
	refused int64
}

// rateLimiter holds the buckets. Limits come with each call (from the
// policy in force), so a reload changes them from the next command: an
// existing bucket keeps its tokens and takes the new rate and size.
type rateLimiter struct {
	now func() time.Time
	log zerolog.Logger
	mu  struct {
		sync.Mutex
		buckets   map[rateKey]*rateBucket
		refused   map[RateLimit]int64
		lastSweep time.Time
	}
}

func newRateLimiter(now func() time.Time, log zerolog.Logger) *rateLimiter {
	l := &rateLimiter{now: now, log: log}
	l.mu.buckets = make(map[rateKey]*rateBucket)
	l.mu.refused = make(map[RateLimit]int64)
	return l
}

// rateCheck is one bucket a command must take a token from.
type rateCheck struct {
	key     rateKey
	perHour int
}

// take takes one token from each bucket of checks if every one has a
// token, and returns nil; otherwise it takes none and returns the first
// check that had none. A check with perHour <= 0 is off.
func (l *rateLimiter) take(checks ...rateCheck) *rateCheck {
	if !slices.ContainsFunc(checks, func(c rateCheck) bool { return c.perHour > 0 }) {
		return nil // every limit off (per-source is by default): no lock per MAIL
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(now)
	buckets := make([]*rateBucket, len(checks))
	for i, c := range checks {
		if c.perHour <= 0 {
			continue
		}
		b := l.bucketLocked(now, c)
		if b == nil {
			continue // too many keys tracked: fail open, as failureLimiter does
		}
		if b.lim.TokensAt(now) < 1 {
			l.refuseLocked(now, c, b)
			return &checks[i]
		}
		buckets[i] = b
	}
	for i, b := range buckets {
		if b == nil {
			continue
		}
		b.lim.AllowN(now, 1)
		l.endEpisodeLocked(now, checks[i].key, b)
	}
	return nil
}

// bucketLocked returns c's bucket, made (full) if new and set to c's
// limit, or nil when maxTrackedSources keys are tracked already.
func (l *rateLimiter) bucketLocked(now time.Time, c rateCheck) *rateBucket {
	per := rate.Limit(float64(c.perHour) / time.Hour.Seconds())
	b := l.mu.buckets[c.key]
	if b == nil {
		if len(l.mu.buckets) >= maxTrackedSources {
			return nil
		}
		b = &rateBucket{lim: rate.NewLimiter(per, c.perHour)}
		l.mu.buckets[c.key] = b
		return b
	}
	if b.lim.Burst() != c.perHour || b.lim.Limit() != per {
		b.lim.SetLimitAt(now, per)
		b.lim.SetBurstAt(now, c.perHour)
	}
	return b
}

// setLimits puts r in force from now on every bucket: the tokens a
// bucket holds stay, it refills at the new rate up to the new size; a
// limit turned off drops its buckets (and ends their episodes).
func (l *rateLimiter) setLimits(r RateLimits) {
	now := l.now()
	perHour := map[RateLimit]int{
		RateUserMessages:   r.MessagesPerUser,
		RateSourceMessages: r.MessagesPerSource,
		RateUserRecipients: r.RecipientsPerUser,
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.mu.buckets {
		n := perHour[k.limit]
		if n <= 0 {
			l.dropLocked(now, k, b)
			continue
		}
		b.lim.SetLimitAt(now, rate.Limit(float64(n)/time.Hour.Seconds()))
		b.lim.SetBurstAt(now, n)
	}
}

// dropLocked forgets a bucket; an episode it was in is over.
func (l *rateLimiter) dropLocked(now time.Time, k rateKey, b *rateBucket) {
	l.endEpisodeLocked(now, k, b)
	delete(l.mu.buckets, k)
}

// endEpisodeLocked logs the end of k's refusals, if it was refused.
func (l *rateLimiter) endEpisodeLocked(now time.Time, k rateKey, b *rateBucket) {
	if b.since.IsZero() {
		return
	}
	l.log.Info().Str("limit", string(k.limit)).Str("key", k.String()).
		Int64("refused", b.refused).Dur("delay", now.Sub(b.since)).Msg("rate limit episode over")
	b.since, b.refused = time.Time{}, 0
}

// refuseLocked counts a refusal; the first of an episode is logged at warn.
func (l *rateLimiter) refuseLocked(now time.Time, c rateCheck, b *rateBucket) {
	l.mu.refused[c.key.limit]++
	b.refused++
	if !b.since.IsZero() {
		return
	}
	b.since = now
	ev := l.log.Warn().Str("limit", string(c.key.limit)).Int("per_hour", c.perHour)
	if c.key.user != "" {
		ev = ev.Str("user", c.key.user)
	} else {
		ev = ev.Str("source", c.key.String())
	}
	ev.Msg("rate limit exceeded: refusing with 450 4.7.1 until the next token")
}

// sweepLocked drops, at most once per rateSweepEvery, the buckets that
// are full again: a new bucket would be the same.
func (l *rateLimiter) sweepLocked(now time.Time) {
	if now.Sub(l.mu.lastSweep) < rateSweepEvery {
		return
	}
	l.mu.lastSweep = now
	for k, b := range l.mu.buckets {
		if b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			l.dropLocked(now, k, b)
		}
	}
}

// status reports the keys with no token now that were refused since they
// last had one.
func (l *rateLimiter) status() RateStatus {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := RateStatus{Refused: make(map[RateLimit]int64, len(rateLimitNames))}
	for _, n := range rateLimitNames {
		st.Refused[n] = l.mu.refused[n]
	}
	for k, b := range l.mu.buckets {
		if b.since.IsZero() || b.lim.TokensAt(now) >= 1 {
			continue
		}
		st.Limited = append(st.Limited, RateLimited{
			Limit: k.limit, Key: k.String(), PerHour: b.lim.Burst(), Since: b.since, Refused: b.refused,
		})
	}
	slices.SortFunc(st.Limited, func(a, b RateLimited) int {
		if c := strings.Compare(string(a.Limit), string(b.Limit)); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return st
}

// RateStatus reports who is over a sending limit now, and the refusals
// since start.
func (s *Server) RateStatus() RateStatus { return s.rate.status() }

// replyRateLimited is the refusal of MAIL or RCPT beyond a limit, naming
// the user or address so that whoever reads the bounce of a stuck app
// knows which limit it ran into.
func replyRateLimited(c *rateCheck) *smtpreply.Reply {
	return &smtpreply.Reply{Code: 450, Enhanced: codeRateLimited,
		Text: "Rate limit exceeded for " + c.key.String() + ", try again later"}
}

// rateMailLocked takes the tokens of a MAIL under p: the user's (when
// authenticated) and the source's. Over a limit it returns the 450 4.7.1
// refusal, logged at debug: the limiter logs each episode once at warn.
func (s *session) rateMailLocked(p *policy, from string) error {
	r := p.Rate
	user := rateCheck{key: rateKey{limit: RateUserMessages, user: s.mu.user}}
	if s.mu.authenticated {
		user.perHour = r.MessagesPerUser
	}
	src := rateCheck{key: rateKey{limit: RateSourceMessages, src: sourceKey(s.ip)}, perHour: r.MessagesPerSource}
	over := s.srv.rate.take(user, src)
	if over == nil {
		return nil
	}
	return s.reject(s.log.Debug().Str("stage", "mail").Str("from", from), replyRateLimited(over))
}

// rateRcptLocked takes the recipient token of an authenticated session.
func (s *session) rateRcptLocked(to string) error {
	if !s.mu.authenticated {
		return nil
	}
	c := rateCheck{key: rateKey{limit: RateUserRecipients, user: s.mu.user}, perHour: s.mu.pol.Rate.RecipientsPerUser}
	over := s.srv.rate.take(c)
	if over == nil {
		return nil
	}
	return s.reject(s.log.Debug().Str("stage", "rcpt").Str("from", s.mu.env.From).Str("rcpt", to), replyRateLimited(over))
}
