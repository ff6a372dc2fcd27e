package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	"relayq/queue"
)

func TestGaugeHysteresis(t *testing.T) {
	type step struct {
		v    float64
		want PressureLevel
	}
	tests := []struct {
		name  string
		g     gauge
		steps []step
	}{
		{"queue messages: rises at once, leaves 10% below",
			gauge{medium: 100, high: 200},
			[]step{{50, PressureNormal}, {100, PressureMedium}, {95, PressureMedium}, {91, PressureMedium},
				{89, PressureNormal}, {250, PressureHigh}, {185, PressureHigh}, {179, PressureMedium},
				{150, PressureMedium}, {50, PressureNormal}, {200, PressureHigh}, {10, PressureNormal}}},
		{"free disk: less is worse, leaves 10% above",
			gauge{lowerWorse: true, medium: 4000, high: 500},
			[]step{{5000, PressureNormal}, {3999, PressureMedium}, {400, PressureHigh}, {520, PressureHigh},
				{560, PressureMedium}, {4300, PressureMedium}, {4400, PressureNormal}, {0, PressureHigh}}},
		{"medium off",
			gauge{medium: 0, high: 0.9},
			[]step{{0.5, PressureNormal}, {0.95, PressureHigh}, {0.85, PressureHigh}, {0.80, PressureNormal}}},
		{"informational never rises",
			gauge{},
			[]step{{0, PressureNormal}, {math.MaxInt64, PressureNormal}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tt.g
			for i, s := range tt.steps {
				g.level = g.next(s.v, DefaultPressureMargin)
				if g.level != s.want {
					t.Fatalf("step %d: reading %v gives %v, want %v", i, s.v, g.level, s.want)
				}
			}
		})
	}
}

// fakeQueue is a QueueGauge the test sets.
type fakeQueue struct{ msgs, bytes atomic.Int64 }

func (q *fakeQueue) Messages() int64 { return q.msgs.Load() }
func (q *fakeQueue) Bytes() int64    { return q.bytes.Load() }

// probes are the monitor's inputs, set by the test.
type probes struct {
	free    atomic.Uint64
	diskErr atomic.Bool
	used    atomic.Uint64
	queue   fakeQueue
}

// testMonitor returns a monitor over p with a 1 GiB memory limit, 4GB/500MB
// disk thresholds, 100/200 queued messages and 75%/90% memory, that never
// samples on its own.
func testMonitor(t *testing.T, p *probes, log zerolog.Logger) *Monitor {
	t.Helper()
	return testMonitorWith(t, p, log, nil)
}

// testMonitorWith is testMonitor with its configuration changed by set
// first (nil: as is).
func testMonitorWith(t *testing.T, p *probes, log zerolog.Logger, set func(*PressureConfig)) *Monitor {
	t.Helper()
	p.free.Store(100e9)
	p.used.Store(100 << 20)
	cfg := PressureConfig{
		Interval:       time.Hour,
		FreeDiskMedium: 4e9, FreeDiskHigh: 500e6,
		QueueMessagesMedium: 100, QueueMessagesHigh: 200,
		MemoryMedium: 0.75, MemoryHigh: 0.90,
		Queue: &p.queue,
		DiskFree: func() (uint64, error) {
			if p.diskErr.Load() {
				return 0, errors.New("statfs: input/output error")
			}
			return p.free.Load(), nil
		},
		MemoryUsed:  func() (uint64, error) { return p.used.Load(), nil },
		MemoryLimit: func() (uint64, error) { return 1 << 30, nil },
	}
	if set != nil {
		set(&cfg)
	}
	return NewMonitor(cfg, log)
}

// logLines parses the JSON lines of a log.
func logLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestMonitorLogsEachLevelChangeOnceWithReadingAndThreshold(t *testing.T) {
	var logs syncBuffer
	p := &probes{}
	m := testMonitor(t, p, zerolog.New(&logs))
	m.Sample()
	p.free.Store(3_950_000_000) // the Exchange hub: 3.95 GB free, 4 GB wanted
	for range 3 {
		m.Sample()
	}
	p.free.Store(10e9)
	m.Sample()
	m.Sample()

	var changes []map[string]any
	for _, l := range logLines(t, logs.String()) {
		if l["message"] == "back pressure level changed" {
			changes = append(changes, l)
		}
	}
	if len(changes) != 2 {
		t.Fatalf("%d level-change lines, want 2 (up, down):\n%s", len(changes), logs.String())
	}
	up := changes[0]
	want := map[string]any{"level": "warn", "resource": "free_disk", "pressure": "medium",
		"previous": "normal", "reading": "3.95GB", "threshold": "4GB", "overall": "medium"}
	for k, v := range want {
		if up[k] != v {
			t.Errorf("up line %s = %v, want %v (line %v)", k, up[k], v, up)
		}
	}
	if !strings.Contains(up["effect"].(string), "452 4.3.1") {
		t.Errorf("effect %q does not say what clients get", up["effect"])
	}
	if down := changes[1]; down["overall"] != "normal" || down["previous"] != "medium" || down["reading"] != "10GB" {
		t.Errorf("down line %v", down)
	}
}

func TestMonitorWorstResourceSetsTheLevel(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	m.Sample()
	if l, r := m.Level(); l != PressureNormal || r != "" {
		t.Fatalf("level %v %q, want normal", l, r)
	}
	p.queue.msgs.Store(150) // medium
	p.used.Store(950 << 20) // 92.8% of 1 GiB: high
	m.Sample()
	if l, r := m.Level(); l != PressureHigh || r != ResourceMemory {
		t.Errorf("level %v by %q, want high by memory", l, r)
	}
	p.used.Store(100 << 20)
	m.Sample()
	if l, r := m.Level(); l != PressureMedium || r != ResourceQueueMessages {
		t.Errorf("level %v by %q, want medium by queue_messages", l, r)
	}
}

func TestMonitorKeepsLevelWhenAProbeFails(t *testing.T) {
	var logs syncBuffer
	p := &probes{}
	m := testMonitor(t, p, zerolog.New(&logs))
	p.free.Store(100e6)
	m.Sample()
	p.diskErr.Store(true)
	m.Sample()
	m.Sample()
	if l, _ := m.Level(); l != PressureHigh {
		t.Errorf("level %v after a failed reading, want high kept", l)
	}
	if n := strings.Count(logs.String(), "cannot read resource"); n != 1 {
		t.Errorf("%d probe-failure lines, want 1", n)
	}
	st := m.Status()
	if st.Resources[0].Resource != ResourceFreeDisk || !strings.Contains(st.Resources[0].Err, "input/output") {
		t.Errorf("status does not report the failure: %+v", st.Resources[0])
	}
}

func TestMonitorStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := &probes{}
	stalls := NewStallWatch()
	m := NewMonitor(PressureConfig{
		FreeDiskMedium: 4e9, FreeDiskHigh: 500e6, QueueMessagesMedium: 100, QueueMessagesHigh: 200,
		MemoryMedium: 0.75, MemoryHigh: 0.9, Queue: &p.queue, Stalls: stalls,
		DiskFree:    func() (uint64, error) { return 400e6, nil },
		MemoryUsed:  func() (uint64, error) { return 512 << 20, nil },
		MemoryLimit: func() (uint64, error) { return 1 << 30, nil },
		Now:         func() time.Time { return now },
	}, zerolog.Nop())
	p.queue.msgs.Store(7)
	p.queue.bytes.Store(12345)
	m.Sample()
	st := m.Status()
	if !st.Enabled || st.Level != PressureHigh || st.Cause != ResourceFreeDisk || !st.Since.Equal(now) || !st.SampledAt.Equal(now) {
		t.Errorf("status %+v", st)
	}
	got := map[Resource]ResourceStatus{}
	for _, r := range st.Resources {
		got[r.Resource] = r
	}
	checks := []struct {
		res           Resource
		reading, high string
		level         PressureLevel
		info          bool
	}{
		{ResourceFreeDisk, "400MB", "500MB", PressureHigh, false},
		{ResourceQueueMessages, "7", "200", PressureNormal, false},
		{ResourceQueueBytes, "12.35KB", "off", PressureNormal, true},
		{ResourceMemory, "50.0%", "90.0%", PressureNormal, false},
		{ResourceWriteStall, "0s", "10s", PressureNormal, false},
	}
	for _, c := range checks {
		r, ok := got[c.res]
		if !ok || r.Reading != c.reading || r.HighText != c.high || r.Level != c.level || r.Informational != c.info {
			t.Errorf("%s: %+v; want reading %s, high %s, level %v, informational %v", c.res, r, c.reading, c.high, c.level, c.info)
		}
	}
	var nilMon *Monitor
	if st := nilMon.Status(); st.Enabled {
		t.Error("a nil monitor reports enabled")
	}
	if l, _ := nilMon.Level(); l != PressureNormal {
		t.Error("a nil monitor is not normal")
	}
}

func TestWriteStallsRaisePressure(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	w := NewStallWatch()
	w.now = now
	m := NewMonitor(PressureConfig{
		Stalls: w, Now: now,
		DiskFree:    func() (uint64, error) { return 1e12, nil },
		MemoryLimit: func() (uint64, error) { return 0, errNoProbe },
	}, zerolog.Nop())
	el := w.EventListener()

	el.WriteStallBegin(pebbleStallInfo())
	select {
	case <-w.poke:
	default:
		t.Error("a stall does not make the monitor sample at once")
	}
	m.Sample()
	if l, r := m.Level(); l != PressureMedium || r != ResourceWriteStall {
		t.Errorf("stall in progress: %v %q, want medium by write_stall", l, r)
	}
	clock.Add(int64(11 * time.Second))
	m.Sample()
	if l, _ := m.Level(); l != PressureHigh {
		t.Errorf("11 s stall: %v, want high", l)
	}
	el.WriteStallEnd()
	m.Sample() // the stall ended since the last sample: still seen
	if l, _ := m.Level(); l != PressureHigh {
		t.Errorf("sample right after an 11 s stall: %v, want high", l)
	}
	m.Sample()
	if l, _ := m.Level(); l != PressureNormal {
		t.Errorf("no stall since the last sample: %v, want normal", l)
	}
	if w.Stalls() != 1 {
		t.Errorf("%d stalls counted", w.Stalls())
	}
}

func TestRealProbesReadThisMachine(t *testing.T) {
	if free, err := diskFree(t.TempDir()); err != nil && !errors.Is(err, errNoProbe) || err == nil && free == 0 {
		t.Errorf("diskFree = %d, %v", free, err)
	}
	if used, err := processMemory(); err != nil || used < 1<<20 {
		t.Errorf("processMemory = %d, %v", used, err)
	}
	if _, err := os.Stat("/proc/meminfo"); err == nil {
		if limit, err := memoryLimit(); err != nil || limit < 1<<20 {
			t.Errorf("memoryLimit = %d, %v", limit, err)
		}
	}
}

func TestMemoryLimitPrefersALowerCgroupLimit(t *testing.T) {
	const meminfo = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n"
	ram := uint64(16384000 * 1024)
	tests := []struct {
		name   string
		cgroup string            // /proc/self/cgroup
		files  map[string]string // under the cgroup root
		want   uint64
	}{
		{"v2 limit in own cgroup", "0::/system.slice/relayq.service\n",
			map[string]string{"system.slice/relayq.service/memory.max": "1073741824\n"}, 1 << 30},
		{"v2 limit at the namespace root", "0::/\n", map[string]string{"memory.max": "536870912\n"}, 512 << 20},
		{"v2 max is no limit", "0::/\n", map[string]string{"memory.max": "max\n"}, ram},
		{"v2 limit above RAM", "0::/\n", map[string]string{"memory.max": "99999999999999\n"}, ram},
		{"v1 limit", "12:cpu,cpuacct:/\n11:memory:/docker/abc\n",
			map[string]string{"memory/docker/abc/memory.limit_in_bytes": "268435456\n"}, 256 << 20},
		{"v1 unlimited", "11:memory:/\n",
			map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, ram},
		{"no cgroup files", "0::/\n", nil, ram},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc, root := t.TempDir(), t.TempDir()
			write := func(path, data string) {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write(filepath.Join(proc, "meminfo"), meminfo)
			write(filepath.Join(proc, "self", "cgroup"), tt.cgroup)
			for p, d := range tt.files {
				write(filepath.Join(root, p), d)
			}
			got, err := memoryLimitAt(proc, root)
			if err != nil || got != tt.want {
				t.Errorf("memoryLimitAt = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestParseStatm(t *testing.T) {
	if got, err := parseStatm([]byte("5000 1200 300 10 0 900 0\n"), 4096); err != nil || got != 1200*4096 {
		t.Errorf("parseStatm = %d, %v", got, err)
	}
	if _, err := parseStatm([]byte("garbage"), 4096); err == nil {
		t.Error("parseStatm accepted garbage")
	}
}

// pressureServer serves cfg with the monitor m over loopback, letting
// 127.0.0.1 relay and app1 authenticate in plaintext.
func pressureServer(t *testing.T, m *Monitor) string {
	t.Helper()
	cfg := testConfig()
	cfg.Pressure = m
	cfg.Users = testUsers(t)
	_, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	return addr
}

func TestHighPressureRefusesMailFromEveryoneWith452_4_3_1(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	addr := pressureServer(t, m)
	p.queue.msgs.Store(500)
	m.Sample()

	r := dialRaw(t, addr, "127.0.0.1") // allowed network
	if msg := r.cmd("MAIL FROM:<s@example.org>", 452); msg != "4.3.1 Insufficient system resources (queue size)" {
		t.Errorf("MAIL at high: 452 %s", msg)
	}
	a := dialRaw(t, addr, "127.0.0.2")
	a.cmd("AUTH PLAIN "+b64(goodPlain), 235)
	a.cmd("MAIL FROM:<s@example.org>", 452) // authenticated too

	p.queue.msgs.Store(10)
	m.Sample()
	r.cmd("MAIL FROM:<s@example.org>", 250)
}

func TestMediumPressureLetsAllowedNetworksAndAuthenticatedClientsThrough(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	addr := pressureServer(t, m)
	p.free.Store(3e9) // below 4GB: medium
	m.Sample()
	if l, _ := m.Level(); l != PressureMedium {
		t.Fatalf("level %v", l)
	}
	dialRaw(t, addr, "127.0.0.1").cmd("MAIL FROM:<s@example.org>", 250)
	other := dialRaw(t, addr, "127.0.0.2")
	if msg := other.cmd("MAIL FROM:<s@example.org>", 452); msg != "4.3.1 Insufficient system resources (queue disk space)" {
		t.Errorf("MAIL from elsewhere at medium: 452 %s", msg)
	}
	other.cmd("AUTH PLAIN "+b64(goodPlain), 235)
	other.cmd("MAIL FROM:<s@example.org>", 250)
}

func TestServerSamplesTheMonitorBeforeTheFirstClient(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	p.free.Store(1) // before New: the server must see it without waiting an interval
	addr := pressureServer(t, m)
	dialRaw(t, addr, "127.0.0.1").cmd("MAIL FROM:<s@example.org>", 452)
}

func TestFormatReadings(t *testing.T) {
	for _, c := range []struct {
		unit string
		v    float64
		want string
	}{
		{unitBytes, 4e9, "4GB"}, {unitBytes, 3.95e9, "3.95GB"}, {unitBytes, 500e6, "500MB"},
		{unitBytes, 0, "0B"}, {unitBytes, 1e15, "1000TB"}, {unitRatio, 0.755, "75.5%"},
		{unitMessages, 200000, "200000"}, {unitSeconds, 1.5, "1.5s"},
	} {
		if got := format(c.unit, c.v); got != c.want {
			t.Errorf("format(%s, %v) = %q, want %q", c.unit, c.v, got, c.want)
		}
	}
}

func pebbleStallInfo() pebble.WriteStallBeginInfo {
	return pebble.WriteStallBeginInfo{Reason: "memtable count limit reached"}
}

// A burst the queue writes between two samples changes the level before
// the next one: once what was written since the last reading of free
// space would take it below a threshold, the monitor samples at once.
func TestWrittenBytesMakeTheMonitorSampleBeforeItsInterval(t *testing.T) {
	p := &probes{}
	var written atomic.Int64
	m := testMonitorWith(t, p, zerolog.Nop(), func(c *PressureConfig) { c.Written = written.Load })
	p.free.Store(600e6) // medium (below 4GB), 100 MB above high (500MB)
	m.Sample()
	write := func(n int64) { // the disk takes what the queue writes
		written.Add(n)
		p.free.Add(^uint64(n - 1))
	}
	write(60e6)
	if l, _ := m.Level(); l != PressureMedium || len(m.poke) != 0 {
		t.Fatalf("after 60 MB of the 100 MB left above the high threshold: level %v, sample asked for: %v", l, len(m.poke) != 0)
	}
	write(50e6) // 490 MB free: below high
	if l, _ := m.Level(); l != PressureMedium || len(m.poke) != 1 {
		t.Fatalf("after 110 MB: level %v, sample asked for: %v; want medium until the sample, which is asked for", l, len(m.poke) != 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx) // Interval is an hour: only Level's request samples
	waitFor(t, "the level to go high", func() bool {
		l, res := m.Level()
		return l == PressureHigh && res == ResourceFreeDisk
	})
}

// A Put refused for want of room (the queue's reserve) is the mail system
// being full: 452 4.3.1 naming the queue disk, not 451 4.3.0, and back
// pressure goes to high at once, so that the next MAIL is refused before
// its body is sent. The next sample decides from the reading again.
func TestPutRefusedForWantOfRoomAnswers452AndRaisesPressure(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	cfg := testConfig()
	cfg.Pressure = m
	q := &memQueue{beforeCommit: func(context.Context) error {
		return fmt.Errorf("%w: 1000 bytes free, 16777216 kept in reserve", queue.ErrNoRoom)
	}}
	_, addr := startServer(t, cfg, q)
	r := sendRefusedForWantOfRoom(t, addr)
	if l, res := m.Level(); l != PressureHigh || res != ResourceFreeDisk {
		t.Errorf("after a Put refused for want of room the level is %v (%s), want high (free_disk)", l, res)
	}
	r.cmd("MAIL FROM:<s@example.org>", 452)

	m.Sample() // 100 GB free: the reading says otherwise
	q.beforeCommit = nil
	r.cmd("MAIL FROM:<s@example.org>", 250)
}

// Without back pressure the refusal is the same 452 4.3.1.
func TestPutRefusedForWantOfRoomAnswers452WithoutBackPressure(t *testing.T) {
	q := &memQueue{beforeCommit: func(context.Context) error { return queue.ErrNoRoom }}
	_, addr := startServer(t, testConfig(), q)
	sendRefusedForWantOfRoom(t, addr)
}

// sendRefusedForWantOfRoom sends a message to addr, whose queue refuses
// it for want of room, and checks the reply to its body.
func sendRefusedForWantOfRoom(t *testing.T, addr string) *rawConn {
	t.Helper()
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<r@example.net>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	if msg := r.expect(452); msg != "4.3.1 Insufficient system resources (queue disk space)" {
		t.Errorf("a Put refused for want of room: 452 %s", msg)
	}
	return r
}
