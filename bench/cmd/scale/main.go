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
//     is back (the first -drain of them, after `relayq queue flush --all`).
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
	"flag"
	"fmt"
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
		bin   = flag.String("relayq", "bin/relayq", "relayq binary")
		n     = flag.Int("n", 1_000_000, "messages to queue")
		conns = flag.Int("conns", 20, "concurrent SMTP connections")
		size  = flag.Int("size", 1024, "message size in bytes")
		drain = flag.Int("drain", 100_000, "messages to time while draining")
		keep  = flag.Bool("keep", false, "keep the temporary directory")
	)
	flag.Parse()
	dir, err := os.MkdirTemp("", "relayq-scale")
	check(err)
	if !*keep {
		defer os.RemoveAll(dir)
	}
	r := &run{bin: *bin, dir: dir, listen: freeAddr(), admin: freeAddr(), dest: freeAddr()}
	r.writeConfig()

	fmt.Printf("machine: %d CPUs, %s; queue in %s\n", numCPU(), cpuModel(), dir)
	r.start()
	defer r.stop(syscall.SIGTERM)

	body := message(*size)
	sample := min(*n/20, 20_000)
	emptyRate := r.load(sample, *conns, body)
	fmt.Printf("enqueue rate, empty queue:        %8.0f msgs/s (first %d)\n", emptyRate, sample)
	if rest := *n - 2*sample; rest > 0 {
		start := time.Now()
		r.load(rest, *conns, body)
		fmt.Printf("filling:                          %8.0f msgs/s (%d more in %s)\n", float64(rest)/time.Since(start).Seconds(), rest, time.Since(start).Round(time.Second))
	}
	fullRate := r.load(sample, *conns, body)
	fmt.Printf("enqueue rate, %7d queued:       %8.0f msgs/s (last %d; %.0f%% of empty)\n", *n-sample, fullRate, sample, 100*fullRate/emptyRate)
	fmt.Printf("RSS with %d queued:             %8.1f MB (peak while filling %.1f MB)\n", *n, mb(r.rss()), mb(r.peakRSS.Load()))

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		r.stop(sig)
		took := r.start()
		fmt.Printf("restart after %-7s to EHLO:     %8.2f s (RSS after start %.1f MB)\n", sigName(sig), took.Seconds(), mb(r.rss()))
	}

	before := r.rss()
	r.peakRSS.Store(before)
	big := message(50 << 20)
	r.load(1, 1, big)
	fmt.Printf("50 MB message: RSS %.1f → %.1f MB (peak %.1f MB, +%.1f MB)\n", mb(before), mb(r.rss()), mb(r.peakRSS.Load()), mb(r.peakRSS.Load()-before))

	dst, err := sink.Start(sink.Options{Addr: r.dest, Discard: true})
	check(err)
	defer dst.Close()
	// The flush of every queued message is itself one synced change per
	// message and takes a while with a large queue: deliveries start as
	// soon as it begins, so it runs beside the timing, not before it.
	start := time.Now()
	go r.flushAll()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	check(dst.Wait(ctx, *drain))
	took := time.Since(start)
	fmt.Printf("drain: %d deferred messages delivered in %s: %.0f msgs/s\n", *drain, took.Round(time.Millisecond), float64(*drain)/took.Seconds())
}

type run struct {
	bin, dir, listen, admin, dest string
	cmd                           *exec.Cmd
	peakRSS                       atomic.Int64
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
			log.Fatalf("relayq did not answer EHLO within 2 minutes; see %s", logf.Name())
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(begin)
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
		}
	}
}

// rss reads VmRSS of the relayq process.
func (r *run) rss() int64 {
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
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// load sends n messages over conns connections and returns messages/s.
func (r *run) load(n, conns int, body []byte) float64 {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for c := 0; c < min(conns, n); c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", r.listen, 10*time.Second)
			check(err)
			cl := smtp.NewClient(conn)
			defer cl.Close()
			check(cl.Hello("bench.invalid"))
			for next.Add(1) <= int64(n) {
				check(cl.SendMail("bench@src.invalid", []string{"rcpt@dst.invalid"}, bytes.NewReader(body)))
			}
			cl.Quit()
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// flushAll asks relayq to try every queued message now.
func (r *run) flushAll() {
	resp, err := http.Post("http://"+r.admin+"/api/queue/flush?all=true", "", nil)
	check(err)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		log.Fatalf("flush: %s", resp.Status)
	}
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

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
