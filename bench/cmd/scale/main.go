// Command scale measures relayq with a large queue, as issue 7 asks: it runs
// the real binary with its destination down, queues N messages over SMTP,
// and prints
//
//   - the enqueue rate on an empty queue and with N queued,
//   - the peak RSS while N are queued,
//   - the time from a restart to the first accepted EHLO (after SIGTERM and
//     after SIGKILL),
//   - the RSS a 50 MB message adds,
//   - the rate at which the deferred messages drain once the destination
//     is back (the first -drain of them, after `relayq queue flush --all`),
//     and the peak RSS meanwhile.
//
// Everything runs on loopback. Usage (from the repository root, after
// `make build`):
//
//	go run ./bench/cmd/scale -n 1000000
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
)

func main() {
	var (
		bin    = flag.String("relayq", "bin/relayq", "relayq binary")
		n      = flag.Int("n", 1_000_000, "messages to queue")
		conns  = flag.Int("conns", 20, "concurrent SMTP connections")
		size   = flag.Int("size", 1024, "message size in bytes")
		drain  = flag.Int("drain", 100_000, "messages to time while draining")
		keep   = flag.Bool("keep", false, "keep the temporary directory")
		reuse  = flag.String("dir", "", "use this directory (and keep it) instead of a new temporary one; with -n 0, the restart and 50 MB figures of a queue kept by -keep")
		prof   = flag.String("profile", "", "directory for profiles of relayq taken over its admin API: CPU with a near-empty and with a full queue (each an extra load phase of -profile-seconds), heap around the 50 MB message, CPU over the first -profile-seconds of the drain")
		psecs  = flag.Int("profile-seconds", 15, "length of each CPU profile")
		only   = flag.Bool("enqueue-only", false, "stop after the enqueue figures")
		settle = flag.Bool("settle", true, "before the 50 MB message, wait until relayq has counted the queue it restarted with (false: send it right after the restart, so that its figure includes that count)")
	)
	flag.Parse()
	dir := *reuse
	if dir == "" {
		var err error
		dir, err = os.MkdirTemp("", "relayq-scale")
		check(err)
		if !*keep {
			atExit(func() { os.RemoveAll(dir) })
		}
	}
	defer exit(0)
	r := &run{bin: *bin, dir: dir, listen: freeAddr(), admin: freeAddr(), dest: freeAddr()}
	r.writeConfig()

	fmt.Printf("machine: %d CPUs, %s; queue in %s\n", numCPU(), cpuModel(), dir)
	fmt.Printf("relayq: SMTP %s, admin %s\n", r.listen, r.admin)
	r.start()
	atExit(func() { r.stop(syscall.SIGTERM) })

	if sample := min(*n/20, 20_000); sample > 0 {
		r.enqueue(*n, sample, *conns, message(*size), *prof, time.Duration(*psecs)*time.Second)
	}
	fmt.Printf("queue on disk:                    %8.1f MB\n", mb(dirSize(filepath.Join(dir, "queue"))))
	if *only {
		return
	}

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		r.stop(sig)
		took := r.start()
		fmt.Printf("restart after %-7s to EHLO:     %8.2f s (RSS after start %.1f MB)\n", sigName(sig), took.Seconds(), mb(r.rss()))
	}
	// Open counts the queue in the background, over every m/ record, while
	// relayq already takes mail. The 50 MB figure is what the message adds,
	// not what that count does, so it waits for the count.
	var took time.Duration
	if *settle {
		var queued int64
		queued, took = r.waitCounted()
		fmt.Printf("queue counted after restart:      %8.2f s (%d messages; RSS then %.1f MB, peak %.1f MB)\n", took.Seconds(), queued, mb(r.rss()), mb(r.peakRSS.Load()))
	}

	before, beforeAnon, beforeFile := r.rss(), r.status("RssAnon"), r.status("RssFile")
	r.peakRSS.Store(before)
	r.peakAnon.Store(beforeAnon)
	big := message(50 << 20)
	if *prof != "" {
		r.fetch(*prof, "heap-before-50mb", "/debug/pprof/heap?gc=1")
	}
	r.load(1, 1, big)
	if *prof != "" {
		r.fetch(*prof, "heap-after-50mb", "/debug/pprof/heap")
	}
	fmt.Printf("50 MB message: RSS %.1f → %.1f MB (peak %.1f MB, +%.1f MB)\n", mb(before), mb(r.rss()), mb(r.peakRSS.Load()), mb(r.peakRSS.Load()-before))
	fmt.Printf("               anonymous %.1f → peak %.1f MB (+%.1f MB), file-backed %.1f → %.1f MB\n", mb(beforeAnon), mb(r.peakAnon.Load()), mb(r.peakAnon.Load()-beforeAnon), mb(beforeFile), mb(r.status("RssFile")))

	r.drain(*drain, *prof, *psecs)
}

// drain brings the destination up, flushes the queue and times the
// delivery of its first n messages; with prof, it profiles the first psecs
// seconds of it.
func (r *run) drain(n int, prof string, psecs int) {
	dst, err := sink.Start(sink.Options{Addr: r.dest, Discard: true})
	check(err)
	defer dst.Close()
	// The flush of every queued message is itself one synced change per
	// message and takes a while with a large queue: deliveries start as
	// soon as it begins, so it runs beside the timing, not before it.
	r.peakRSS.Store(r.rss()) // the drain's own peak: the scheduler's lines fill
	cpu := r.cpuTime()
	start := time.Now()
	flushed := make(chan error, 1)
	go func() { flushed <- r.flushAll() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- dst.Wait(ctx, n) }()
	if prof != "" {
		// A CPU profile of the drain's start (the flush beside it).
		go r.fetch(prof, "drain", fmt.Sprintf("/debug/pprof/profile?seconds=%d", psecs))
	}
	select {
	case err := <-flushed:
		check(err)
		check(<-drained)
	case err := <-drained:
		// The flush of the rest of the queue goes on; relayq is stopped
		// under it.
		check(err)
	}
	took := time.Since(start)
	fmt.Printf("drain: %d deferred messages delivered in %s: %.0f msgs/s (relayq CPU %.3f ms/msg, the flush included; peak RSS %.1f MB)\n",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), ms((r.cpuTime()-cpu)/time.Duration(n)), mb(r.peakRSS.Load()))
}

type run struct {
	bin, dir, listen, admin, dest string
	cmd                           *exec.Cmd
	peakRSS, peakAnon             atomic.Int64
	stopSampling                  chan struct{}
}

func (r *run) writeConfig() {
	cfg := fmt.Sprintf(`
hostname = "relay.bench.invalid"
data_dir = %q
[[listener]]
address = %q
[admin]
address = %q
[limits]
max_connections_per_source = 200
max_message_size = "64MB"
[back_pressure]
queue_messages_medium = 5000000
queue_messages_high = 6000000
free_disk_medium = "2GB"
free_disk_high = "1GB"
[delivery.smarthost]
hosts = [%q]
tls = "none"
[retry]
min_backoff = "1h"
max_backoff = "2h"
`, filepath.Join(r.dir, "queue"), r.listen, r.admin, r.dest)
	check(os.WriteFile(filepath.Join(r.dir, "relayq.toml"), []byte(cfg), 0o600))
}

// start runs relayq and returns how long it took to answer EHLO.
func (r *run) start() time.Duration {
	logf, err := os.OpenFile(filepath.Join(r.dir, "relayq.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	check(err)
	begin := time.Now()
	r.cmd = exec.Command(r.bin, "serve", "--config", filepath.Join(r.dir, "relayq.toml"), "--log-format", "json", "--log-level", "warn")
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	check(r.cmd.Start())
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if c, err := net.DialTimeout("tcp", r.listen, time.Second); err == nil {
			cl := smtp.NewClient(c)
			err := cl.Hello("bench.invalid")
			cl.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			fatalf("relayq did not answer EHLO within 2 minutes; see %s", logf.Name())
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(begin)
	r.peakRSS.Store(0) // peaks are of this process
	r.peakAnon.Store(0)
	r.stopSampling = make(chan struct{})
	go r.sample(r.stopSampling)
	return took
}

func (r *run) stop(sig syscall.Signal) {
	if r.cmd == nil {
		return
	}
	close(r.stopSampling)
	r.cmd.Process.Signal(sig)
	r.cmd.Wait()
	r.cmd = nil
}

// sample records the peak RSS of the running relayq.
func (r *run) sample(stop chan struct{}) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if v := r.rss(); v > r.peakRSS.Load() {
				r.peakRSS.Store(v)
			}
			if v := r.status("RssAnon"); v > r.peakAnon.Load() {
				r.peakAnon.Store(v)
			}
		}
	}
}

// cpuTime reads the CPU time (user and system) relayq has used so far.
func (r *run) cpuTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.cmd.Process.Pid))
	check(err)
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15 (proc(5)), in
	// clock ticks of 1/100 s.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[14-3], 10, 64)
	stime, err2 := strconv.ParseInt(f[15-3], 10, 64)
	check(errors.Join(err1, err2))
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// rss reads VmRSS of the relayq process.
func (r *run) rss() int64 { return r.status("VmRSS") }

// status reads a size field (kB) of the relayq process's /proc status.
func (r *run) status(field string) int64 {
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// load sends n messages over conns connections and returns messages/s.
func (r *run) load(n, conns int, body []byte) float64 {
	var next, sent atomic.Int64
	start := time.Now()
	r.senders(min(conns, n), body, func() bool { return next.Add(1) <= int64(n) }, &sent)()
	return float64(n) / time.Since(start).Seconds()
}

// senders starts conns SMTP clients that each send body while more says
// so, counting the messages in sent; the function returned waits until
// every client has quit.
func (r *run) senders(conns int, body []byte, more func() bool, sent *atomic.Int64) (wait func()) {
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", r.listen, 10*time.Second)
			check(err)
			cl := smtp.NewClient(conn)
			defer cl.Close()
			check(cl.Hello("bench.invalid"))
			for more() {
				check(cl.SendMail("bench@src.invalid", []string{"rcpt@dst.invalid"}, bytes.NewReader(body)))
				sent.Add(1)
			}
			cl.Quit()
		}()
	}
	return wg.Wait
}

// enqueue queues n messages and prints the enqueue rates on an empty queue
// (the first sample) and with n queued (the last sample).
//
// Beside each rate it prints relayq's CPU time per message over the same
// messages (its intake and the attempts they cause): on a machine shared
// with other work the rates vary from run to run, the CPU per message much
// less.
func (r *run) enqueue(n, sample, conns int, body []byte, prof string, psecs time.Duration) {
	cpu := r.cpuTime()
	emptyRate := r.load(sample, conns, body)
	emptyCPU := (r.cpuTime() - cpu) / time.Duration(sample)
	fmt.Printf("enqueue rate, empty queue:        %8.0f msgs/s (first %d; relayq CPU %.3f ms/msg)\n", emptyRate, sample, ms(emptyCPU))
	if prof != "" {
		r.profileLoad(prof, "cpu-empty", psecs, conns, body)
	}
	if rest := n - 2*sample; rest > 0 {
		start, cpu := time.Now(), r.cpuTime()
		r.load(rest, conns, body)
		fmt.Printf("filling:                          %8.0f msgs/s (%d more in %s; relayq CPU %.3f ms/msg)\n", float64(rest)/time.Since(start).Seconds(), rest, time.Since(start).Round(time.Second), ms((r.cpuTime()-cpu)/time.Duration(rest)))
	}
	if prof != "" {
		r.profileLoad(prof, "cpu-full", psecs, conns, body)
	}
	cpu = r.cpuTime()
	fullRate := r.load(sample, conns, body)
	fullCPU := (r.cpuTime() - cpu) / time.Duration(sample)
	fmt.Printf("enqueue rate, %7d queued:       %8.0f msgs/s (last %d; %.0f%% of empty; relayq CPU %.3f ms/msg, %.0f%% of empty)\n", n-sample, fullRate, sample, 100*fullRate/emptyRate, ms(fullCPU), 100*float64(fullCPU)/float64(emptyCPU))
	fmt.Printf("RSS with %d queued:             %8.1f MB (peak while filling %.1f MB)\n", n, mb(r.rss()), mb(r.peakRSS.Load()))
}

// waitCounted waits until the number of queued messages relayq reports has
// not changed for a second, and returns it and how long it took to settle.
func (r *run) waitCounted() (int64, time.Duration) {
	start := time.Now()
	last, stable := int64(-1), 0
	for deadline := start.Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var st struct {
			Queue struct {
				Messages int64 `json:"messages"`
			} `json:"queue"`
		}
		resp, err := http.Get("http://" + r.admin + "/api/status")
		check(err)
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		check(err)
		if st.Queue.Messages != last {
			last, stable = st.Queue.Messages, 0
			continue
		}
		if stable++; stable == 5 {
			return last, time.Since(start) - time.Second
		}
	}
	fatalf("the queue count did not settle within 5 minutes")
	return 0, 0
}

// profileLoad loads relayq for d (plus a second either side) while it takes
// a CPU profile of d, saved as dir/name.pprof.
func (r *run) profileLoad(dir, name string, d time.Duration, conns int, body []byte) {
	var (
		stop atomic.Bool
		sent atomic.Int64
	)
	wait := r.senders(conns, body, func() bool { return !stop.Load() }, &sent)
	time.Sleep(time.Second)
	before := sent.Load()
	start := time.Now()
	r.fetch(dir, name, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	rate := float64(sent.Load()-before) / time.Since(start).Seconds()
	stop.Store(true)
	wait()
	fmt.Printf("profile %-20s %8.0f msgs/s while profiling (%d messages in this phase)\n", name+":", rate, sent.Load())
}

// fetch saves the admin API's answer at path as dir/name.pprof.
func (r *run) fetch(dir, name, path string) {
	check(os.MkdirAll(dir, 0o755))
	resp, err := http.Get("http://" + r.admin + path)
	check(err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fatalf("%s: %s", path, resp.Status)
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	check(err)
	_, err = io.Copy(f, resp.Body)
	check(errors.Join(err, f.Close()))
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// flushAll asks relayq to try every queued message now.
func (r *run) flushAll() error {
	resp, err := http.Post("http://"+r.admin+"/api/queue/flush?all=true", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("flush: %s", resp.Status)
	}
	return nil
}

func message(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <bench@src.invalid>\r\nTo: <rcpt@dst.invalid>\r\nSubject: scale\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

func numCPU() int {
	out, _ := exec.Command("nproc").Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func sigName(s syscall.Signal) string {
	if s == syscall.SIGKILL {
		return "SIGKILL"
	}
	return "SIGTERM"
}

func mb(b int64) float64 { return float64(b) / 1e6 }

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }

// onExit is what exit does first, last added first: stop relayq, remove
// the temporary directory. log.Fatal would skip it.
var (
	onExitMu sync.Mutex
	onExit   []func()
)

func atExit(f func()) {
	onExitMu.Lock()
	defer onExitMu.Unlock()
	onExit = append(onExit, f)
}

func exit(code int) {
	onExitMu.Lock()
	fs := onExit
	onExit = nil
	onExitMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
	os.Exit(code)
}

func fatalf(format string, args ...any) {
	log.Printf(format, args...)
	exit(1)
}

func check(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}
