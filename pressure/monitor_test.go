package pressure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestGaugeHysteresis(t *testing.T) {
	type step struct {
		v    float64
		want Level
	}
	tests := []struct {
		name  string
		g     gauge
		steps []step
	}{
		{"queue messages: rises at once, leaves 10% below",
			gauge{medium: 100, high: 200},
			[]step{{50, Normal}, {100, Medium}, {95, Medium}, {91, Medium},
				{89, Normal}, {250, High}, {185, High}, {179, Medium},
				{150, Medium}, {50, Normal}, {200, High}, {10, Normal}}},
		{"free disk: less is worse, leaves 10% above",
			gauge{lowerWorse: true, medium: 4000, high: 500},
			[]step{{5000, Normal}, {3999, Medium}, {400, High}, {520, High},
				{560, Medium}, {4300, Medium}, {4400, Normal}, {0, High}}},
		{"medium off",
			gauge{medium: 0, high: 0.9},
			[]step{{0.5, Normal}, {0.95, High}, {0.85, High}, {0.80, Normal}}},
		{"informational never rises",
			gauge{},
			[]step{{0, Normal}, {math.MaxInt64, Normal}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tt.g
			for i, s := range tt.steps {
				g.level = g.next(s.v, DefaultMargin)
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
func testMonitorWith(t *testing.T, p *probes, log zerolog.Logger, set func(*Config)) *Monitor {
	t.Helper()
	p.free.Store(100e9)
	p.used.Store(100 << 20)
	cfg := Config{
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

// levelChanges returns the "back pressure level changed" lines of a JSON
// log.
func levelChanges(t *testing.T, log *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for dec := json.NewDecoder(log); dec.More(); {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("log: %v", err)
		}
		if m["message"] == "back pressure level changed" {
			out = append(out, m)
		}
	}
	return out
}

func TestMonitorLogsEachLevelChangeOnceWithReadingAndThreshold(t *testing.T) {
	var logs bytes.Buffer // Sample logs on the test goroutine
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

	text := logs.String()
	changes := levelChanges(t, &logs)
	if len(changes) != 2 {
		t.Fatalf("%d level-change lines, want 2 (up, down):\n%s", len(changes), text)
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
	if l, r := m.Level(); l != Normal || r != "" {
		t.Fatalf("level %v %q, want normal", l, r)
	}
	p.queue.msgs.Store(150) // medium
	p.used.Store(950 << 20) // 92.8% of 1 GiB: high
	m.Sample()
	if l, r := m.Level(); l != High || r != ResourceMemory {
		t.Errorf("level %v by %q, want high by memory", l, r)
	}
	p.used.Store(100 << 20)
	m.Sample()
	if l, r := m.Level(); l != Medium || r != ResourceQueueMessages {
		t.Errorf("level %v by %q, want medium by queue_messages", l, r)
	}
}

func TestMonitorKeepsLevelWhenAProbeFails(t *testing.T) {
	var logs bytes.Buffer // Sample logs on the test goroutine
	p := &probes{}
	m := testMonitor(t, p, zerolog.New(&logs))
	p.free.Store(100e6)
	m.Sample()
	p.diskErr.Store(true)
	m.Sample()
	m.Sample()
	if l, _ := m.Level(); l != High {
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
	m := NewMonitor(Config{
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
	if !st.Enabled || st.Level != High || st.Cause != ResourceFreeDisk || !st.Since.Equal(now) || !st.SampledAt.Equal(now) {
		t.Errorf("status %+v", st)
	}
	got := map[Resource]ResourceStatus{}
	for _, r := range st.Resources {
		got[r.Resource] = r
	}
	checks := []struct {
		res           Resource
		reading, high string
		level         Level
		info          bool
	}{
		{ResourceFreeDisk, "400MB", "500MB", High, false},
		{ResourceQueueMessages, "7", "200", Normal, false},
		{ResourceQueueBytes, "12.35KB", "off", Normal, true},
		{ResourceMemory, "50.0%", "90.0%", Normal, false},
		{ResourceWriteStall, "0s", "10s", Normal, false},
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
	if l, _ := nilMon.Level(); l != Normal {
		t.Error("a nil monitor is not normal")
	}
}

func TestWriteStallsRaisePressure(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	w := NewStallWatch()
	w.now = now
	m := NewMonitor(Config{
		Stalls: w, Now: now,
		DiskFree:    func() (uint64, error) { return 1e12, nil },
		MemoryLimit: func() (uint64, error) { return 0, errNoProbe },
	}, zerolog.Nop())
	w.WriteStallBegin()
	select {
	case <-w.poke:
	default:
		t.Error("a stall does not make the monitor sample at once")
	}
	m.Sample()
	if l, r := m.Level(); l != Medium || r != ResourceWriteStall {
		t.Errorf("stall in progress: %v %q, want medium by write_stall", l, r)
	}
	clock.Add(int64(11 * time.Second))
	m.Sample()
	if l, _ := m.Level(); l != High {
		t.Errorf("11 s stall: %v, want high", l)
	}
	w.WriteStallEnd()
	m.Sample() // the stall ended since the last sample: still seen
	if l, _ := m.Level(); l != High {
		t.Errorf("sample right after an 11 s stall: %v, want high", l)
	}
	m.Sample()
	if l, _ := m.Level(); l != Normal {
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

// A burst the queue writes between two samples changes the level before
// the next one: once what was written since the last reading of free
// space would take it below a threshold, the monitor samples at once.
func TestWrittenBytesMakeTheMonitorSampleBeforeItsInterval(t *testing.T) {
	p := &probes{}
	var written atomic.Int64
	m := testMonitorWith(t, p, zerolog.Nop(), func(c *Config) { c.Written = written.Load })
	p.free.Store(600e6) // medium (below 4GB), 100 MB above high (500MB)
	m.Sample()
	write := func(n int64) { // the disk takes what the queue writes
		written.Add(n)
		p.free.Add(^uint64(n - 1))
	}
	write(60e6)
	if l, _ := m.Level(); l != Medium || len(m.poke) != 0 {
		t.Fatalf("after 60 MB of the 100 MB left above the high threshold: level %v, sample asked for: %v", l, len(m.poke) != 0)
	}
	write(50e6) // 490 MB free: below high
	if l, _ := m.Level(); l != Medium || len(m.poke) != 1 {
		t.Fatalf("after 110 MB: level %v, sample asked for: %v; want medium until the sample, which is asked for", l, len(m.poke) != 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx) // Interval is an hour: only Level's request samples
	waitFor(t, "the level to go high", func() bool {
		l, res := m.Level()
		return l == High && res == ResourceFreeDisk
	})
}

// A Put refused for want of room (the queue's reserve) takes free_disk to
// high at once, so that the next MAIL is refused before its body is sent;
// the next sample decides from the reading again.
func TestNoRoomRaisesFreeDiskToHighUntilTheNextSample(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	m.Sample()
	m.NoRoom()
	if l, res := m.Level(); l != High || res != ResourceFreeDisk {
		t.Errorf("after NoRoom the level is %v (%s), want high (free_disk)", l, res)
	}
	m.Sample() // 100 GB free: the reading says otherwise
	if l, _ := m.Level(); l != Normal {
		t.Errorf("after a sample with 100 GB free the level is %v, want normal", l)
	}
	m.SetThresholds(Thresholds{Off: true})
	m.NoRoom()
	if l, _ := m.Level(); l != Normal {
		t.Errorf("with back pressure off NoRoom made the level %v", l)
	}
}

// Start samples before it returns, so that the first client is judged by
// a reading, not by the normal level a monitor starts at; stop ends Run.
func TestStartSamplesBeforeReturning(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop())
	p.free.Store(1) // before Start: it must see it without waiting an interval
	stop := m.Start()
	if l, _ := m.Level(); l != High {
		t.Errorf("level %v right after Start, want high", l)
	}
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return")
	}
}

func TestLevelTextRoundTrips(t *testing.T) {
	for l := Normal; l <= High; l++ {
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		if want := `"` + l.String() + `"`; string(b) != want {
			t.Errorf("%v marshals as %s, want %s", l, b, want)
		}
		var back Level
		if err := json.Unmarshal(b, &back); err != nil || back != l {
			t.Errorf("%v: JSON %s reads back as %v, %v", l, b, back, err)
		}
	}
	if _, err := ParseLevel("urgent"); err == nil {
		t.Error(`ParseLevel("urgent") did not fail`)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestSetThresholdsChangesTheLevelAtOnce(t *testing.T) {
	p := &probes{}
	m := testMonitor(t, p, zerolog.Nop()) // disk medium 4GB, high 500MB
	p.free.Store(3e9)
	m.Sample()
	if l, _ := m.Level(); l != Medium {
		t.Fatalf("level %v at 3GB free, want medium", l)
	}
	th := Thresholds{FreeDiskMedium: 2e9, FreeDiskHigh: 500e6, QueueMessagesMedium: 100, QueueMessagesHigh: 200,
		MemoryMedium: 0.75, MemoryHigh: 0.90}
	m.SetThresholds(th)
	if l, _ := m.Level(); l != Normal {
		t.Errorf("level %v after lowering the medium threshold to 2GB, want normal", l)
	}
	th.FreeDiskHigh = 4e9
	m.SetThresholds(th)
	if l, res := m.Level(); l != High || res != ResourceFreeDisk {
		t.Errorf("level %v (%s) after raising the high threshold to 4GB, want high (free_disk)", l, res)
	}
	th.Off = true
	m.SetThresholds(th)
	if l, _ := m.Level(); l != Normal || m.Status().Enabled {
		t.Errorf("level %v, enabled %v after turning back pressure off", l, m.Status().Enabled)
	}
	th.Off = false
	m.SetThresholds(th)
	st := m.Status()
	if !st.Enabled || st.Level != High {
		t.Errorf("after turning it on again: enabled %v level %v, want high", st.Enabled, st.Level)
	}
	for _, r := range st.Resources {
		if r.Resource == ResourceFreeDisk && (r.Medium != 2e9 || r.High != 4e9) {
			t.Errorf("free_disk thresholds %v/%v in Status, want 2e9/4e9", r.Medium, r.High)
		}
	}
}
