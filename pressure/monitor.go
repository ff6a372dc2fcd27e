package pressure

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Level is the back-pressure level, Exchange's three (docs/design.md
// "Back pressure"): what intake does at each is in relay's doc.go. Its
// text form ("normal", "medium", "high") is what logs, the admin API and
// `relayq status` show.
type Level int32

const (
	Normal Level = iota // accept
	Medium              // accept only from allowed networks and authenticated clients
	High                // refuse every MAIL with 452 4.3.1
)

// ParseLevel parses a level's text form.
func ParseLevel(s string) (Level, error) {
	for l := Normal; l <= High; l++ {
		if s == l.String() {
			return l, nil
		}
	}
	return Normal, fmt.Errorf("back-pressure level %q is not one of normal, medium, high", s)
}

// MarshalText is the level's text form.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses the level's text form.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := ParseLevel(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

func (l Level) String() string {
	switch l {
	case Normal:
		return "normal"
	case Medium:
		return "medium"
	case High:
		return "high"
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}

// Resource names one monitored reading. The names are stable: logs,
// metrics and `relayq status` use them.
type Resource string

const (
	ResourceFreeDisk      Resource = "free_disk"      // bytes free on the data_dir volume; less is worse
	ResourceQueueMessages Resource = "queue_messages" // messages in the queue
	ResourceQueueBytes    Resource = "queue_bytes"    // bytes in the queue; informational, no thresholds
	ResourceMemory        Resource = "memory"         // process memory / memory limit, a fraction
	ResourceWriteStall    Resource = "write_stall"    // seconds Pebble stalled writes since the last sample
)

// Describe is the resource as the 452 reply names it.
func (r Resource) Describe() string {
	switch r {
	case ResourceFreeDisk:
		return "queue disk space"
	case ResourceQueueMessages:
		return "queue size"
	case ResourceMemory:
		return "memory"
	case ResourceWriteStall:
		return "queue write stall"
	}
	return string(r)
}

// Defaults of Config.
const (
	DefaultInterval = 5 * time.Second
	// DefaultMargin is the hysteresis: a resource leaves a level
	// only once its reading is 10% on the good side of that level's
	// threshold, so a reading hovering at a threshold does not flap.
	DefaultMargin      = 0.10
	DefaultStallMedium = time.Nanosecond // any stall
	DefaultStallHigh   = 10 * time.Second
)

// QueueGauge is what the monitor reads of the queue; *queue.Store is one.
type QueueGauge interface {
	Messages() int64
	Bytes() int64
}

// Config configures a Monitor. A threshold of 0 turns that level
// of that resource off.
type Config struct {
	Interval time.Duration // between samples; default DefaultInterval
	Margin   float64       // hysteresis fraction; default DefaultMargin

	FreeDiskMedium, FreeDiskHigh           int64   // bytes; pressure when free space is below
	QueueMessagesMedium, QueueMessagesHigh int64   // pressure at or above
	MemoryMedium, MemoryHigh               float64 // fraction of the memory limit; at or above
	StallMedium, StallHigh                 time.Duration

	// DataDir is the queue directory whose volume's free space is read.
	DataDir string
	// Queue gives the queue's size; nil leaves queue size unmonitored.
	Queue QueueGauge
	// Stalls gives Pebble's write stalls; nil leaves them unmonitored.
	Stalls *StallWatch
	// Written gives the bytes the queue has written so far (a counter
	// that only grows; *queue.Store.Written). Between two readings of free
	// space, what was written since the last one is taken off it: once
	// that estimate crosses a free-space threshold, Level has the monitor
	// sample at once, so that a burst of mail changes the level before
	// the next regular sample. nil: free space is read every Interval only.
	Written func() int64

	// Probes, for tests; nil means the real ones: statfs(DataDir), the
	// process's resident memory (/proc/self/statm, else runtime/metrics),
	// the cgroup memory limit or else the RAM size (read once, at
	// NewMonitor).
	DiskFree    func() (uint64, error)
	MemoryUsed  func() (uint64, error)
	MemoryLimit func() (uint64, error)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Monitor samples the resources that limit intake and keeps the current
// back-pressure level. Its methods are safe for concurrent use; Level is a
// single atomic load, cheap enough for every MAIL. A nil *Monitor is
// always normal.
type Monitor struct {
	cfg      Config
	log      zerolog.Logger
	memLimit uint64 // 0: unknown, memory unmonitored
	current  atomic.Pointer[levelCause]
	// resampleAt is the Written count at which free space may have crossed
	// its next threshold (math.MaxInt64: none); poke asks Run to sample.
	resampleAt atomic.Int64
	poke       chan struct{}

	mu struct {
		sync.Mutex
		gauges    []*gauge
		off       bool // SetThresholds turned every threshold off
		level     Level
		since     time.Time
		sampledAt time.Time
	}
}

type levelCause struct {
	level Level
	cause Resource
}

// NewMonitor returns a monitor for cfg, at normal until its first Sample.
func NewMonitor(cfg Config, log zerolog.Logger) *Monitor {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Margin <= 0 {
		cfg.Margin = DefaultMargin
	}
	if cfg.StallMedium == 0 {
		cfg.StallMedium = DefaultStallMedium
	}
	if cfg.StallHigh == 0 {
		cfg.StallHigh = DefaultStallHigh
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DiskFree == nil {
		dir := cfg.DataDir
		cfg.DiskFree = func() (uint64, error) { return diskFree(dir) }
	}
	if cfg.MemoryUsed == nil {
		cfg.MemoryUsed = processMemory
	}
	if cfg.MemoryLimit == nil {
		cfg.MemoryLimit = memoryLimit
	}
	m := &Monitor{cfg: cfg, log: log.With().Str("component", "back_pressure").Logger(), poke: make(chan struct{}, 1)}
	m.resampleAt.Store(math.MaxInt64)
	if limit, err := cfg.MemoryLimit(); err != nil || limit == 0 {
		m.log.Warn().Err(err).Msg("memory limit unknown: memory is not monitored")
	} else {
		m.memLimit = limit
	}
	now := cfg.Now()
	add := func(g *gauge) {
		g.since = now
		m.mu.gauges = append(m.mu.gauges, g)
	}
	add(&gauge{res: ResourceFreeDisk, unit: unitBytes, lowerWorse: true,
		medium: float64(cfg.FreeDiskMedium), high: float64(cfg.FreeDiskHigh)})
	if cfg.Queue != nil {
		add(&gauge{res: ResourceQueueMessages, unit: unitMessages,
			medium: float64(cfg.QueueMessagesMedium), high: float64(cfg.QueueMessagesHigh)})
		add(&gauge{res: ResourceQueueBytes, unit: unitBytes})
	}
	if m.memLimit > 0 {
		add(&gauge{res: ResourceMemory, unit: unitRatio, medium: cfg.MemoryMedium, high: cfg.MemoryHigh})
	}
	if cfg.Stalls != nil {
		add(&gauge{res: ResourceWriteStall, unit: unitSeconds,
			medium: cfg.StallMedium.Seconds(), high: cfg.StallHigh.Seconds()})
	}
	m.mu.since = now
	m.current.Store(&levelCause{})
	return m
}

// Thresholds are the levels' thresholds a configuration reload may change
// (back_pressure.*); 0 turns that level of that resource off, as in
// Config.
type Thresholds struct {
	FreeDiskMedium, FreeDiskHigh           int64
	QueueMessagesMedium, QueueMessagesHigh int64
	MemoryMedium, MemoryHigh               float64
	// Off turns back pressure off (back_pressure.enabled = false): every
	// resource's thresholds, write stalls' included, are off and the level
	// is normal; the monitor goes on sampling for the status view.
	Off bool
}

// SetThresholds puts t in force and samples at once, so that the level
// reflects the new thresholds before SetThresholds returns (a level is
// still left only by the hysteresis margin). Safe while Run is going; a
// nil monitor ignores it.
func (m *Monitor) SetThresholds(t Thresholds) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.mu.off = t.Off
	for _, g := range m.mu.gauges {
		switch g.res {
		case ResourceFreeDisk:
			g.medium, g.high = float64(t.FreeDiskMedium), float64(t.FreeDiskHigh)
		case ResourceQueueMessages:
			g.medium, g.high = float64(t.QueueMessagesMedium), float64(t.QueueMessagesHigh)
		case ResourceMemory:
			g.medium, g.high = t.MemoryMedium, t.MemoryHigh
		case ResourceWriteStall:
			// Not in the configuration: the monitor's own, unless off.
			g.medium, g.high = m.cfg.StallMedium.Seconds(), m.cfg.StallHigh.Seconds()
		}
		if t.Off {
			g.medium, g.high = 0, 0
		}
	}
	m.mu.Unlock()
	m.Sample() // a level changed by the new thresholds is logged there
}

// Level returns the current level and the resource that sets it ("" at
// normal). When the queue has written enough since the last sample for
// free space to have crossed its next threshold (Config.Written),
// it asks Run to sample now; the level it returns is the current one.
func (m *Monitor) Level() (Level, Resource) {
	if m == nil {
		return Normal, ""
	}
	if w := m.cfg.Written; w != nil && w() >= m.resampleAt.Load() {
		select {
		case m.poke <- struct{}{}:
		default:
		}
	}
	c := m.current.Load()
	return c.level, c.cause
}

// NoRoom tells the monitor that the queue refused a message for want of
// disk space (its reserve): free_disk goes to high at once, so that the
// next MAIL is refused before its body is sent, and leaves it when a
// sample reads free space clear of the high threshold (hysteresis). With
// back pressure off it does nothing; a nil monitor ignores it.
func (m *Monitor) NoRoom() {
	if m == nil {
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	var disk *gauge
	for _, g := range m.mu.gauges {
		if g.res == ResourceFreeDisk {
			disk = g
		}
	}
	if m.mu.off || disk == nil || disk.level == High {
		m.mu.Unlock()
		return
	}
	disk.prev, disk.level, disk.since = disk.level, High, now
	level := m.setOverallLocked(now)
	changed := *disk
	m.mu.Unlock()
	m.logChange(&changed, level)
}

// setOverallLocked makes the worst resource's level the overall one and
// returns it.
func (m *Monitor) setOverallLocked(now time.Time) Level {
	level, cause := Normal, Resource("")
	for _, g := range m.mu.gauges {
		if g.level > level {
			level, cause = g.level, g.res
		}
	}
	if level != m.mu.level {
		m.mu.level, m.mu.since = level, now
	}
	m.current.Store(&levelCause{level, cause})
	return level
}

// Run samples every Interval, at once when Pebble reports a write stall,
// low disk space or a deleted file, and when Level finds that the queue
// wrote enough for free space to cross a threshold, until ctx ends. It
// does not sample on entry: call Sample first when the level is needed
// right away.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	var poke <-chan struct{}
	if m.cfg.Stalls != nil {
		poke = m.cfg.Stalls.poke
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-poke:
		case <-m.poke:
		}
		m.Sample()
	}
}

// Start samples once, so that the level is known before the first client
// comes, and runs the monitor (Run) until stop is called; stop returns once
// Run has. The running instance owns the monitor and calls Start when it
// starts and stop when it stops.
func (m *Monitor) Start() (stop func()) {
	m.Sample()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// reading is one probe's result.
type reading struct {
	value float64
	err   error
}

// Sample reads every resource now, updates the levels and logs each
// change of a resource's level at warn, once, with its reading and the
// threshold.
func (m *Monitor) Sample() {
	now := m.cfg.Now()
	// The probes do I/O (statfs, /proc): outside the lock.
	readings := map[Resource]reading{}
	var written int64
	if w := m.cfg.Written; w != nil {
		written = w() // before statfs: what is written meanwhile counts again
	}
	free, err := m.cfg.DiskFree()
	readings[ResourceFreeDisk] = reading{float64(free), err}
	if q := m.cfg.Queue; q != nil {
		readings[ResourceQueueMessages] = reading{float64(q.Messages()), nil}
		readings[ResourceQueueBytes] = reading{float64(q.Bytes()), nil}
	}
	if m.memLimit > 0 {
		used, err := m.cfg.MemoryUsed()
		readings[ResourceMemory] = reading{float64(used) / float64(m.memLimit), err}
	}
	if w := m.cfg.Stalls; w != nil {
		readings[ResourceWriteStall] = reading{w.take(now).Seconds(), nil}
	}

	var events []func()
	m.mu.Lock()
	first := m.mu.sampledAt.IsZero()
	m.mu.sampledAt = now
	var changed []*gauge
	for _, g := range m.mu.gauges {
		r := readings[g.res]
		if r.err != nil {
			if g.err == nil {
				g := *g
				events = append(events, func() {
					m.log.Warn().Str("resource", string(g.res)).Err(r.err).
						Str("pressure", g.level.String()).Msg("back pressure: cannot read resource; keeping its level")
				})
			}
			g.err = r.err
			continue
		}
		g.err = nil
		g.value = r.value
		if next := g.next(r.value, m.cfg.Margin); next != g.level {
			g.prev, g.level, g.since = g.level, next, now
			changed = append(changed, g)
		}
	}
	level := m.setOverallLocked(now)
	if m.cfg.Written != nil {
		m.resampleAt.Store(m.resampleAtLocked(written))
	}
	for _, g := range changed {
		g := *g
		events = append(events, func() { m.logChange(&g, level) })
	}
	if first {
		// One line at start with every reading and threshold, so the
		// operator sees how far each resource is from its limits.
		d := zerolog.Dict()
		for _, g := range m.mu.gauges {
			if g.medium <= 0 && g.high <= 0 {
				d.Str(string(g.res), format(g.unit, g.value))
				continue
			}
			d.Str(string(g.res), fmt.Sprintf("%s (medium %s, high %s)",
				format(g.unit, g.value), thresholdText(g.unit, g.medium), thresholdText(g.unit, g.high)))
		}
		events = append(events, func() {
			m.log.Info().Str("pressure", level.String()).Dict("resources", d).Msg("back pressure monitoring started")
		})
	}
	m.mu.Unlock()
	for _, e := range events {
		e()
	}
}

// minResample is the least the queue writes between two samples that
// Level asks for: near a threshold, not a statfs for every message.
const minResample = 1 << 20

// resampleAtLocked is the Written count at which the free space read at
// written is used up down to its next threshold (math.MaxInt64 when it
// is already below every threshold, or could not be read).
func (m *Monitor) resampleAtLocked(written int64) int64 {
	for _, g := range m.mu.gauges {
		if g.res != ResourceFreeDisk || g.err != nil {
			continue
		}
		var next float64 // the largest threshold still below the reading
		for _, t := range []float64{g.medium, g.high} {
			if t > 0 && t <= g.value && t > next {
				next = t
			}
		}
		if next > 0 {
			return written + max(int64(g.value-next), minResample)
		}
	}
	return math.MaxInt64
}

// logChange is the one warn line per level change of a resource: the
// clue the operator of an Exchange hub that stopped taking mail at 3.95 GB
// free never got.
func (m *Monitor) logChange(g *gauge, overall Level) {
	t := g.threshold(g.level)
	if g.level < g.prev {
		t = g.threshold(g.prev) // the threshold it is now comfortably clear of
	}
	m.log.Warn().Str("resource", string(g.res)).Str("pressure", g.level.String()).
		Str("previous", g.prev.String()).Str("reading", format(g.unit, g.value)).
		Str("threshold", format(g.unit, t)).Str("overall", overall.String()).
		Str("effect", effect(overall)).Msg("back pressure level changed")
}

func effect(l Level) string {
	switch l {
	case High:
		return "refusing all new mail with 452 4.3.1; delivery of queued mail goes on"
	case Medium:
		return "accepting mail only from allowed networks and authenticated clients; others get 452 4.3.1"
	}
	return "accepting mail"
}

// Status is the state of back pressure, for `relayq status`,
// /metrics and /healthz.
type Status struct {
	Enabled   bool
	Level     Level
	Since     time.Time // when Level was entered
	Cause     Resource  // the resource at Level; "" at normal
	SampledAt time.Time
	Resources []ResourceStatus
}

// ResourceStatus is one resource's reading and thresholds.
type ResourceStatus struct {
	Resource Resource
	Level    Level
	Since    time.Time // when Level was entered
	Unit     string    // "bytes", "messages", "ratio" (of the memory limit) or "seconds"
	Value    float64
	Medium   float64 // threshold; 0: off
	High     float64 // threshold; 0: off
	// Reading, MediumText and HighText are Value and the thresholds for
	// people: "3.95GB", "75%", "off".
	Reading, MediumText, HighText string
	// Informational readings have no thresholds and never raise the level.
	Informational bool
	// Err is why the last reading failed; the level is kept meanwhile.
	Err string
}

// Status returns the current level, since when, and every resource's
// reading and thresholds. A nil monitor reports Enabled false.
func (m *Monitor) Status() Status {
	if m == nil {
		return Status{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Enabled: !m.mu.off, Level: m.mu.level, Since: m.mu.since, SampledAt: m.mu.sampledAt}
	st.Cause = m.current.Load().cause
	for _, g := range m.mu.gauges {
		rs := ResourceStatus{
			Resource: g.res, Level: g.level, Since: g.since, Unit: g.unit, Value: g.value,
			Medium: g.medium, High: g.high, Reading: format(g.unit, g.value),
			MediumText: thresholdText(g.unit, g.medium), HighText: thresholdText(g.unit, g.high),
			Informational: g.medium <= 0 && g.high <= 0,
		}
		if g.err != nil {
			rs.Err = g.err.Error()
		}
		st.Resources = append(st.Resources, rs)
	}
	return st
}
