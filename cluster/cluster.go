package cluster

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"relayq/config"
)

// Limits is what the delivery scheduler asks of the cluster before it opens
// a connection, sends a message or dials a host. Every method answers even
// when Redis is gone (from the local fallback, see Degraded); the only
// errors are ErrAtCap and the caller's own context's.
type Limits interface {
	// Acquire takes a connection lease for dest if the connections held
	// by all nodes are below min(cap, the learned cap); ErrAtCap if not.
	// A cap below 1 counts as 1. The lease is renewed in the background
	// until Release.
	Acquire(ctx context.Context, dest string, cap int) (*Lease, error)
	// Release gives the lease back; the connection it stood for is closed
	// (or about to be). Releasing twice does nothing.
	Release(ctx context.Context, l *Lease)
	// Live counts the leases all nodes hold for dest now; while degraded,
	// this node's own.
	Live(ctx context.Context, dest string) int
	// PublishCap records the cap learned for dest (a 421 4.3.2) for every
	// node; cap <= 0 forgets it.
	PublishCap(ctx context.Context, dest string, cap int)
	// LearnedCap is the cap published for dest by any node, 0 for none. It
	// is at most CapRefresh old.
	LearnedCap(ctx context.Context, dest string) int
	// PublishRate records the rate learned for dest (a reply saying we
	// send too many messages), in messages a second, for every node;
	// perSecond <= 0 forgets it.
	PublishRate(ctx context.Context, dest string, perSecond float64)
	// LearnedRate is the rate published for dest by any node, in messages
	// a second, 0 for none. It is at most CapRefresh old.
	LearnedRate(ctx context.Context, dest string) float64
	// Allow reports whether one message may go to dest now under rate r
	// (shared by all nodes): 0, or how long to wait before asking again.
	// A zero wait consumes the message's place.
	Allow(ctx context.Context, dest string, r Rate) (time.Duration, error)
	// SetCooldown records that host should not be dialled before until,
	// for every node; a zero or past until clears it.
	SetCooldown(ctx context.Context, host string, until time.Time)
	// Cooldown is the end of host's cool-down, zero when it has none.
	Cooldown(ctx context.Context, host string) time.Time
	// Degraded reports whether Redis is unreachable and the local fallback
	// is in use.
	Degraded() bool
}

var _ Limits = (*Client)(nil)

// ErrAtCap is Acquire's answer when the destination has no free
// connection. Leases freed on other nodes are not announced: ask again
// after RetryAtCap, or sooner when this node releases one for the same
// destination.
var ErrAtCap = errors.New("cluster: destination at its connection cap")

// RetryAtCap is how long a destination at its cluster-wide cap waits
// before Acquire is asked again: one round trip per blocked destination
// and node every 200 ms.
const RetryAtCap = 200 * time.Millisecond

// Defaults of Options' zero values. They are properties of the protocol
// between nodes, not tuning knobs, so they are not configuration keys.
const (
	// DefaultTimeout bounds every Redis call: delivery must not wait on a
	// slow Redis longer than this before it falls back.
	DefaultTimeout           = 50 * time.Millisecond
	defaultBackgroundTimeout = time.Second
	defaultTTL               = config.DefaultClusterLeaseTTL
	defaultCapTTL            = 24 * time.Hour
	defaultRefresh           = 500 * time.Millisecond
	heartbeatEvery           = 5 * time.Second
	// NodeWindow is how recent a node's heartbeat must be for Nodes.
	NodeWindow = 30 * time.Second
	// capWatch is how long a destination's learned cap is kept refreshed
	// after it was last asked for.
	capWatch = 10 * time.Minute
)

// Options configure a Client. Only URL and Node are required.
type Options struct {
	URL      string // redis://host:port/db or rediss://…
	Password string // overrides the URL's password when set
	// RootCAs verify a rediss:// server's certificate; nil = the
	// system's roots.
	RootCAs *x509.CertPool
	Name    string // key namespace: relayq:{Name}:…; "" = "default"
	Node    string // this node's name
	// ExpectedNodes divides caps and rates in the local fallback (at
	// least 1).
	ExpectedNodes int
	// Timeout bounds each Redis call made on behalf of a delivery
	// (Limits' methods); 0 = DefaultTimeout (50 ms), which relayq uses.
	// Tests that check invariants under load, not latency, raise it.
	Timeout time.Duration
	// BackgroundTimeout bounds the calls of the background loop (probes,
	// renewals, heartbeats, learned caps and rates) and of status, and
	// the dialling of connections, which the loop does ahead of
	// deliveries (a TLS handshake may take more than Timeout). 0 = 1 s.
	BackgroundTimeout time.Duration
	// LeaseTTL is how long a lease outlives its last renewal (a dead
	// node's connections are forgotten after it); renewed every third of
	// it. 0 = 30 s.
	LeaseTTL time.Duration
	// CapTTL is how long a published cap or rate lives without being
	// published again. 0 = 24 h.
	CapTTL time.Duration
	// CapRefresh is how often learned caps and rates are read back and,
	// while degraded, Redis is probed. 0 = 500 ms.
	CapRefresh time.Duration
	// Now is the clock for lease expiries, rates and cool-downs; nil =
	// time.Now. Nodes' clocks must agree to well under LeaseTTL (NTP).
	Now func() time.Time
	Log zerolog.Logger
}

func (o *Options) fill() {
	if o.Name == "" {
		o.Name = "default"
	}
	o.ExpectedNodes = max(o.ExpectedNodes, 1)
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BackgroundTimeout <= 0 {
		o.BackgroundTimeout = defaultBackgroundTimeout
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = defaultTTL
	}
	if o.CapTTL <= 0 {
		o.CapTTL = defaultCapTTL
	}
	if o.CapRefresh <= 0 {
		o.CapRefresh = defaultRefresh
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Client shares destination limits with the other nodes through one Redis
// server, and falls back to local limits while Redis does not answer.
type Client struct {
	opt   Options
	rdb   *redis.Client
	keys  keys
	token string // makes this process's lease members unique

	base context.Context // New's context without its cancellation, for the loop
	stop chan struct{}
	done chan struct{}

	mu struct {
		sync.Mutex
		seq      uint64
		degraded bool
		episodes uint64 // times degraded was entered
		// The switches between shared and fallback limits take
		// fallbackGrace to reach every node: until graceUntil a degraded
		// node opens no more than graceHeld (held when the episode
		// began), until rejoinUntil a recovered one no more than its
		// fallback share.
		graceUntil  time.Time
		graceHeld   map[string]int
		rejoinUntil time.Time
		leases      map[string]map[*Lease]struct{} // by destination
		local       local
		learned     map[string]learned // learned.go
		closed      bool
	}
}

// New connects to Redis and starts the background loop (renewals,
// heartbeat, learned caps and rates, probes). It does not fail when Redis
// is down: the client starts degraded and switches to shared limits once
// Redis answers. It fails only on a bad URL.
func New(ctx context.Context, o Options) (*Client, error) {
	o.fill()
	if o.Node == "" {
		return nil, errors.New("cluster: node name is empty")
	}
	ro, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("cluster: redis URL: %w", err)
	}
	if o.Password != "" {
		ro.Password = o.Password
	}
	if ro.TLSConfig != nil && o.RootCAs != nil {
		ro.TLSConfig.RootCAs = o.RootCAs
	}
	// Every call is bounded by its context (Timeout on the delivery path)
	// and never retried: a slow Redis costs a delivery at most one Timeout
	// before the fallback. The socket timeouts are only the outer bound;
	// one idle connection is kept dialled, in the background, so that a
	// delivery does not pay for a dial.
	bg := o.BackgroundTimeout
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout, ro.PoolTimeout = bg, bg, bg, bg
	ro.ContextTimeoutEnabled = true
	ro.MaxRetries, ro.DialerRetries = -1, 1
	ro.MinIdleConns = 1
	ro.DisableIdentity = true
	var tok [6]byte
	_, _ = rand.Read(tok[:])
	c := &Client{
		opt:   o,
		rdb:   redis.NewClient(ro),
		keys:  keys{prefix: "relayq:{" + o.Name + "}:"},
		token: hex.EncodeToString(tok[:]),
		base:  context.WithoutCancel(ctx),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	c.mu.leases = map[string]map[*Lease]struct{}{}
	c.mu.local = newLocal()
	c.mu.learned = map[string]learned{}
	_ = c.doBG(ctx, c.heartbeat) // a failure makes the client start degraded
	go c.loop()
	return c, nil
}

// Close stops the background loop, releases the leases still held and
// closes the connections to Redis.
func (c *Client) Close(ctx context.Context) error {
	c.halt()
	c.mu.Lock()
	held := c.heldLocked(false)
	c.mu.leases = map[string]map[*Lease]struct{}{}
	c.mu.Unlock()
	_ = c.doBG(ctx, func(ctx context.Context) error {
		p := c.rdb.Pipeline()
		for dest, members := range held {
			p.ZRem(ctx, c.keys.leases(dest), members...)
		}
		p.ZRem(ctx, c.keys.nodes(), c.opt.Node)
		_, err := p.Exec(ctx)
		return err
	})
	return c.rdb.Close()
}

// halt stops the background loop (renewals included) and waits for it; a
// crashed node looks like this to the others.
func (c *Client) halt() {
	c.mu.Lock()
	closed := c.mu.closed
	c.mu.closed = true
	c.mu.Unlock()
	if !closed {
		close(c.stop)
		<-c.done
	}
}

// Degraded reports whether Redis is unreachable and the local fallback is
// in use: for `relayq status`, /readyz and metrics.
func (c *Client) Degraded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.degraded
}

// Episodes counts the times the client became degraded, for metrics (a
// counter: episodes shorter than a scrape still show).
func (c *Client) Episodes() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.episodes
}

// errDegraded is do's answer when Redis is not even tried.
var errDegraded = errors.New("cluster: degraded")

// do runs f against Redis within Timeout, unless the client is degraded.
// An error of f that is not the caller's context's makes the client
// degraded. The caller falls back to local limits on any error.
func (c *Client) do(ctx context.Context, f func(ctx context.Context) error) error {
	return c.doWithin(ctx, c.opt.Timeout, f)
}

// doBG is do for the background loop and status, within
// BackgroundTimeout.
func (c *Client) doBG(ctx context.Context, f func(ctx context.Context) error) error {
	return c.doWithin(ctx, c.opt.BackgroundTimeout, f)
}

func (c *Client) doWithin(ctx context.Context, d time.Duration, f func(ctx context.Context) error) error {
	if c.Degraded() {
		return errDegraded
	}
	err := c.callWithin(ctx, d, f)
	if err != nil && ctx.Err() == nil {
		c.enterDegraded(err)
	}
	return err
}

// callWithin runs f within d, degraded or not.
func (c *Client) callWithin(ctx context.Context, d time.Duration, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(cctx)
}

// enterDegraded switches to the local fallback and logs the episode once.
// Every lease held is marked as possibly missing from Redis (a restarted
// Redis has lost them), so recovery registers them all again.
func (c *Client) enterDegraded(err error) {
	c.mu.Lock()
	was := c.mu.degraded
	c.mu.degraded = true
	if !was {
		c.mu.episodes++
		c.mu.graceUntil = c.graceEnd()
		c.mu.graceHeld = make(map[string]int, len(c.mu.leases))
		for dest, set := range c.mu.leases {
			c.mu.graceHeld[dest] = len(set)
		}
	}
	for _, set := range c.mu.leases {
		for l := range set {
			l.inRedis = false
		}
	}
	c.mu.Unlock()
	if !was {
		c.opt.Log.Warn().Err(err).Str("node", c.opt.Node).Int("expected_nodes", c.opt.ExpectedNodes).
			Msg("cluster: Redis unreachable; each destination's cap and rate are divided by expected_nodes on this node until it answers")
	}
}

// fallbackGrace is how long the switches between shared and fallback
// limits take to reach every node. With ExpectedNodes above 1 (other
// nodes are expected, whether this one has seen them yet or not):
//
//   - A node that lost Redis opens no more connections than it held when
//     it lost it. The others may still hold connections Redis granted
//     them beyond their fallback share: each notices at its next renewal
//     (every LeaseTTL/3, looked at every CapRefresh, failing within
//     BackgroundTimeout) and then closes what is beyond its share as soon
//     as the message in flight on it ends (allowed one more
//     BackgroundTimeout). Taking its whole share at once, the first node
//     to notice would push the destination over its cap.
//   - A node that finds Redis again keeps to its fallback share: the
//     others may still be degraded, holding leases a restarted Redis does
//     not count until their own probe (every CapRefresh) registers them,
//     or their renewal if they never noticed a short outage. Counting
//     only its own, the first node back would be granted the whole cap.
//
// A node started while Redis is down has held nothing yet: it opens no
// connection for the grace, as the others may hold the whole cap.
func (c *Client) fallbackGrace() time.Duration {
	if c.opt.ExpectedNodes <= 1 {
		return 0
	}
	return c.opt.LeaseTTL/3 + c.opt.CapRefresh + 2*c.opt.BackgroundTimeout
}

// graceEnd is when a switch made now has reached every node; zero
// without a grace.
func (c *Client) graceEnd() time.Time {
	if g := c.fallbackGrace(); g > 0 {
		return c.opt.Now().Add(g)
	}
	return time.Time{}
}

// loop runs the periodic work until halt: every CapRefresh it refreshes
// learned caps and rates (or probes Redis while degraded); every third of
// LeaseTTL it renews the leases; every heartbeatEvery it writes the
// heartbeat.
func (c *Client) loop() {
	defer close(c.done)
	ctx, cancel := context.WithCancel(c.base)
	defer cancel()
	tick := time.NewTicker(c.opt.CapRefresh)
	defer tick.Stop()
	var lastRenew, lastBeat time.Time
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		if c.Degraded() {
			c.recover(ctx)
			continue
		}
		c.refreshLearned(ctx)
		if time.Since(lastRenew) >= c.opt.LeaseTTL/3 {
			c.renew(ctx)
			lastRenew = time.Now()
		}
		if time.Since(lastBeat) >= heartbeatEvery {
			_ = c.doBG(ctx, c.heartbeat)
			lastBeat = time.Now()
		}
	}
}

// RedisLogger adapts go-redis's own log lines (failed dials, pool
// warnings) to zerolog at debug level: while Redis is down they would come
// with every probe, and Degraded's one warning per episode says it all.
// Install it once in main with redis.SetLogger(cluster.RedisLogger(log)).
func RedisLogger(log zerolog.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return redisLogger{log}
}

type redisLogger struct{ log zerolog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Msgf("cluster: go-redis: "+format, v...)
}
