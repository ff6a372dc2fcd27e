// Command benchsink is the measuring end of `make bench` (bench/run.sh).
//
//	benchsink serve -smtp ADDR -ctl ADDR   SMTP sink that counts messages, with an HTTP control port
//	benchsink follow -ctl ADDR             the same control port for Postfix's smtp-sink: reads the
//	                                       counter lines of `smtp-sink -c` from stdin
//	benchsink mark -ctl ADDR -n N          start a run: the next N messages complete it
//	benchsink wait -ctl ADDR -timeout D    block until the run is complete; print its seconds and the total
//	benchsink count -ctl ADDR              print how many messages the sink has taken
//	benchsink scrape URL                   print the body of URL (empty, exit 1, when unreachable)
//	benchsink quantile -q Q -metric NAME BEFORE AFTER
//	                                       Q-quantile of a Prometheus histogram between two scrapes
//	benchsink fsyncs -dir DIR -for D       serial create+write(1 KiB)+fsync+close per second in DIR
//
// The sink answers as fast as it can and throws the data away, like
// Postfix's smtp-sink, but it knows when the Nth message of a run arrived:
// the time of a run is from mark to the 250 of its last message, measured in
// the sink, not by polling. It offers PIPELINING (Postfix's client uses it)
// and flushes its replies only when it has no more input buffered.
//
// With follow, the messages are Postfix's smtp-sink's: `smtp-sink -c` prints
// "sess=N quit=N mesg=N\r" after every event, flushed, and follow takes the
// time a run completes from the line whose mesg reaches the run's target.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchsink serve|follow|mark|wait|count|scrape|quantile|fsyncs ...")
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		err = serve(args)
	case "follow":
		err = follow(args)
	case "mark", "wait", "count":
		err = control(os.Args[1], args)
	case "scrape":
		err = scrape(args)
	case "quantile":
		err = quantile(args)
	case "fsyncs":
		err = fsyncs(args)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchsink:", err)
		os.Exit(1)
	}
}

// sink counts messages; target and reached describe the current run.
type sink struct {
	count   atomic.Int64
	size    atomic.Int64 // messages in the current run
	target  atomic.Int64 // count at which the current run is complete
	marked  atomic.Int64 // Unix ns of mark
	reached atomic.Int64 // Unix ns of the target message's 250; 0 while running
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	smtpAddr := fs.String("smtp", "127.0.0.1:2600", "SMTP listen address")
	ctlAddr := fs.String("ctl", "127.0.0.1:2601", "HTTP control listen address")
	fs.Parse(args)
	s, err := newSink(*ctlAddr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *smtpAddr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go s.session(c)
	}
}

// follow counts the messages of Postfix's smtp-sink from its -c output on
// stdin; it returns when smtp-sink's output ends.
//
// It reads what has accumulated at most once per millisecond: smtp-sink
// writes a line per event (three per message), and waking up for each
// would take CPU from the relays being measured on the same 2 CPUs. While
// the end of a run is still far (or no run is on), it sleeps longer, up
// to pollMax: at 1 ms throughout, this process took 6 % of a CPU during a
// run. Near a run's end it reads every millisecond again, so the end is
// seen at most 1 ms late.
func follow(args []string) error {
	fs := flag.NewFlagSet("follow", flag.ExitOnError)
	ctlAddr := fs.String("ctl", "127.0.0.1:2601", "HTTP control listen address")
	fs.Parse(args)
	s, err := newSink(*ctlAddr)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	var pending []byte // an event line not yet ended by its \r
	mesg := []byte("mesg=")
	last, lastCount := time.Now(), s.count.Load()
	for {
		n, err := os.Stdin.Read(buf)
		pending = append(pending, buf[:n]...)
		if end := bytes.LastIndexByte(pending, '\r'); end >= 0 {
			// The last complete line has the latest count.
			line := pending[:end]
			if i := bytes.LastIndex(line, mesg); i >= 0 {
				v := line[i+len(mesg):]
				if j := bytes.IndexAny(v, " \r\n"); j >= 0 {
					v = v[:j]
				}
				if c, perr := strconv.ParseInt(string(v), 10, 64); perr == nil && c > s.count.Load() {
					s.count.Store(c)
					s.arrived(c)
				}
			}
			pending = append(pending[:0], pending[end+1:]...)
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return err
		}
		now, count := time.Now(), s.count.Load()
		time.Sleep(followSleep(s.target.Load()-count, count-lastCount, now.Sub(last)))
		last, lastCount = now, count
	}
}

// followSleep is how long follow sleeps before its next read: a quarter of
// the time the remaining messages of the run take at the rate of the last
// interval (arrived in elapsed), between 1 ms and pollMax; pollMax when no
// run is on.
func followSleep(remaining, arrived int64, elapsed time.Duration) time.Duration {
	const pollMin, pollMax = time.Millisecond, 20 * time.Millisecond
	switch {
	case remaining <= 0 || remaining > math.MaxInt64/2: // none on (see handleMark)
		return pollMax
	case arrived <= 0:
		return pollMin
	}
	left := time.Duration(float64(elapsed) * float64(remaining) / float64(arrived))
	return min(max(left/4, pollMin), pollMax)
}

// newSink returns a sink whose control port (mark, wait, count) listens on
// ctlAddr.
func newSink(ctlAddr string) (*sink, error) {
	s := &sink{}
	s.target.Store(math.MaxInt64)
	ctl, err := net.Listen("tcp", ctlAddr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mark", s.handleMark)
	mux.HandleFunc("GET /wait", s.handleWait)
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, s.count.Load())
	})
	go func() { _ = http.Serve(ctl, mux) }()
	return s, nil
}

func (s *sink) handleMark(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n <= 0 {
		http.Error(w, "n must be a positive count", http.StatusBadRequest)
		return
	}
	s.target.Store(math.MaxInt64) // no arrival completes the run until it is set below
	s.reached.Store(0)
	s.size.Store(n)
	s.marked.Store(time.Now().UnixNano())
	s.target.Store(s.count.Load() + n)
	fmt.Fprintln(w, s.target.Load())
}

func (s *sink) handleWait(w http.ResponseWriter, r *http.Request) {
	timeout, err := time.ParseDuration(r.URL.Query().Get("timeout"))
	if err != nil {
		http.Error(w, "timeout must be a duration", http.StatusBadRequest)
		return
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.reached.Load() == 0 {
		if time.Now().After(deadline) {
			http.Error(w, fmt.Sprintf("timeout: %d of the run's %d messages arrived",
				s.size.Load()-(s.target.Load()-s.count.Load()), s.size.Load()), http.StatusGatewayTimeout)
			return
		}
		<-tick.C
	}
	secs := float64(s.reached.Load()-s.marked.Load()) / 1e9
	fmt.Fprintf(w, "%.6f %d\n", secs, s.count.Load())
}

func (s *sink) delivered() { s.arrived(s.count.Add(1)) }

// arrived notes that the sink's count reached n; the first n at or past the
// run's target completes it.
func (s *sink) arrived(n int64) {
	if n >= s.target.Load() {
		s.reached.CompareAndSwap(0, time.Now().UnixNano())
	}
}

// session speaks just enough SMTP for smtp-source, Postfix and relayq.
func (s *sink) session(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 4<<10)
	w.WriteString("220 benchsink ESMTP\r\n")
	w.Flush()
	for {
		line, err := readLine(r)
		if err != nil {
			return
		}
		verb := strings.ToUpper(string(line[:min(4, len(line))]))
		switch verb {
		case "EHLO":
			w.WriteString("250-benchsink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1073741824\r\n250 ENHANCEDSTATUSCODES\r\n")
		case "HELO", "RSET", "NOOP":
			w.WriteString("250 2.0.0 Ok\r\n")
		case "MAIL":
			w.WriteString("250 2.1.0 Ok\r\n")
		case "RCPT":
			w.WriteString("250 2.1.5 Ok\r\n")
		case "DATA":
			w.WriteString("354 End data with <CR><LF>.<CR><LF>\r\n")
			w.Flush()
			if err := skipData(r); err != nil {
				return
			}
			s.delivered()
			w.WriteString("250 2.0.0 Ok: queued\r\n")
		case "QUIT":
			w.WriteString("221 2.0.0 Bye\r\n")
			w.Flush()
			return
		default:
			w.WriteString("502 5.5.2 Command not recognized\r\n")
		}
		if r.Buffered() == 0 { // RFC 2920: reply to a pipelined group at once
			if w.Flush() != nil {
				return
			}
		}
	}
}

// readLine returns one command line without its line ending; an over-long
// line is cut to what the buffer holds, the rest discarded.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	for errors.Is(err, bufio.ErrBufferFull) {
		_, err = r.ReadSlice('\n')
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// skipData reads up to and including the line ".".
func skipData(r *bufio.Reader) error {
	atStart := true
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			atStart = false
			continue
		}
		if err != nil {
			return err
		}
		if atStart && (string(line) == ".\r\n" || string(line) == ".\n") {
			return nil
		}
		atStart = true
	}
}

func control(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	ctl := fs.String("ctl", "127.0.0.1:2601", "control address")
	n := fs.Int("n", 0, "messages in the run (mark)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait (wait)")
	fs.Parse(args)
	base := "http://" + *ctl
	var (
		resp *http.Response
		err  error
	)
	client := &http.Client{Timeout: *timeout + 10*time.Second}
	switch cmd {
	case "mark":
		resp, err = client.Post(fmt.Sprintf("%s/mark?n=%d", base, *n), "text/plain", nil)
	case "wait":
		resp, err = client.Get(fmt.Sprintf("%s/wait?timeout=%s", base, *timeout))
	default:
		resp, err = client.Get(base + "/count")
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", cmd, strings.TrimSpace(string(body)))
	}
	_, err = os.Stdout.Write(body)
	return err
}

func scrape(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: scrape URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", args[0], resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// quantile prints the q-quantile of the observations a histogram got
// between two scrapes, interpolated linearly inside the bucket as
// Prometheus' histogram_quantile does, or "n/a".
func quantile(args []string) error {
	fs := flag.NewFlagSet("quantile", flag.ExitOnError)
	q := fs.Float64("q", 0.99, "quantile")
	metric := fs.String("metric", "relayq_accept_duration_seconds", "histogram name")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return errors.New("usage: quantile [-q Q] [-metric NAME] BEFORE AFTER")
	}
	before, err := buckets(fs.Arg(0), *metric)
	if err != nil {
		return err
	}
	after, err := buckets(fs.Arg(1), *metric)
	if err != nil {
		return err
	}
	if len(after) == 0 {
		fmt.Println("n/a (no such histogram at /metrics)")
		return nil
	}
	les := make([]float64, 0, len(after))
	for le := range after {
		les = append(les, le)
	}
	sort.Float64s(les)
	total := after[math.Inf(1)] - before[math.Inf(1)]
	if total <= 0 {
		fmt.Println("n/a (the histogram has no observations)")
		return nil
	}
	rank := *q * total
	prevLE, prevN := 0.0, 0.0
	for _, le := range les {
		n := after[le] - before[le]
		if n >= rank {
			if math.IsInf(le, 1) {
				fmt.Printf("> %g s (n=%.0f)\n", prevLE, total)
				return nil
			}
			v := prevLE + (le-prevLE)*(rank-prevN)/max(n-prevN, 1)
			fmt.Printf("%.2f ms (n=%.0f, bucket %g–%g ms)\n", v*1000, total, prevLE*1000, le*1000)
			return nil
		}
		prevLE, prevN = le, n
	}
	fmt.Println("n/a")
	return nil
}

// buckets reads NAME_bucket{le="X"} V lines of a scrape; a missing or
// empty file gives no buckets.
func buckets(path, metric string) (map[float64]float64, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := map[float64]float64{}
	prefix := metric + `_bucket{le="`
	for _, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		leText, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		le, err1 := strconv.ParseFloat(leText, 64)
		v, err2 := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out[le] = v
	}
	return out, nil
}

// fsyncs measures what the issue calls the disk's rate: one file at a time
// created, written (1 KiB), fsynced and closed, as an MTA's queue file.
func fsyncs(args []string) error {
	fs := flag.NewFlagSet("fsyncs", flag.ExitOnError)
	dir := fs.String("dir", os.TempDir(), "directory on the disk to measure")
	dur := fs.Duration("for", 2*time.Second, "how long to measure")
	fs.Parse(args)
	tmp, err := os.MkdirTemp(*dir, "fsyncs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	buf := bytes.Repeat([]byte("x"), 1024)
	start := time.Now()
	n := 0
	for ; time.Since(start) < *dur; n++ {
		f, err := os.Create(filepath.Join(tmp, strconv.Itoa(n)))
		if err != nil {
			return err
		}
		_, werr := f.Write(buf)
		serr := f.Sync()
		if err := errors.Join(werr, serr, f.Close()); err != nil {
			return err
		}
	}
	fmt.Printf("%.0f\n", float64(n)/time.Since(start).Seconds())
	return nil
}
