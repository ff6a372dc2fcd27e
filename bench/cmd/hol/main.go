// Command hol measures head-of-line blocking in relayq's delivery: one
// slow destination must not hold up mail for the others.
//
// It runs the real binary with relayq's defaults (max_connections = 200)
// and per-domain routes to five loopback sinks: slow.test's sink allows one
// connection (421 4.3.2 beyond) and takes -slow per message; healthy1.test
// to healthy4.test take mail at once. It queues -n messages for slow.test,
// then -healthy messages spread over the four healthy domains, and prints
// the median and worst delay of the healthy mail from relayq's 250 to its
// arrival, and how many messages per second the slow destination took in
// the -window from the first healthy 250 on.
//
// Usage (from the repository root, after `make build`):
//
//	go run ./bench/cmd/hol
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
		bin     = flag.String("relayq", "bin/relayq", "relayq binary")
		n       = flag.Int("n", 300, "messages queued for the slow destination")
		healthy = flag.Int("healthy", 40, "messages for the four healthy destinations, after those")
		slow    = flag.Duration("slow", 300*time.Millisecond, "time the slow destination takes per message")
		window  = flag.Duration("window", 5*time.Second, "how long after the healthy mail's first 250 the slow destination's rate is measured")
	)
	flag.Parse()
	dir, err := os.MkdirTemp("", "relayq-hol")
	check(err)
	defer os.RemoveAll(dir)

	a := &arrivals{at: map[string]time.Time{}, accepted: map[string]time.Time{}}
	routes, closeSinks := startSinks(a, *slow)
	defer closeSinks()
	listen, stop := startRelayq(*bin, dir, routes)
	defer stop()

	// The slow backlog, over 10 connections, then the healthy mail, each
	// message's 250 noted.
	var next atomic.Int64
	queued := time.Now()
	send(listen, 10, func() (string, string, bool) {
		i := next.Add(1)
		return fmt.Sprintf("slow-%d", i), "u@slow.test", i <= int64(*n)
	}, nil)
	next.Store(0)
	start := time.Now()
	send(listen, 4, func() (string, string, bool) {
		i := next.Add(1)
		return fmt.Sprintf("healthy-%d", i), fmt.Sprintf("u@healthy%d.test", 1+i%4), i <= int64(*healthy)
	}, a.accept)

	delays := a.healthyDelays(*healthy)
	time.Sleep(time.Until(start.Add(*window)))
	end := time.Now()
	slices.Sort(delays)
	during, total := a.slowBetween(start, end)
	fmt.Printf("healthy mail (%d messages, 4 destinations), delay after relayq's 250: median %.3f s, worst %.3f s\n",
		len(delays), delays[len(delays)/2].Seconds(), delays[len(delays)-1].Seconds())
	fmt.Printf("slow destination in the %.1f s from the healthy mail's first 250: %d delivered, %.2f msgs/s (one connection at %s per message allows %.2f); %d of %d in the %.1f s since its first was queued\n",
		end.Sub(start).Seconds(), during, float64(during)/end.Sub(start).Seconds(), *slow, 1/slow.Seconds(), total, *n, end.Sub(queued).Seconds())
}

// arrivals notes, by Subject, when relayq said 250 to each healthy
// message and when each message reached its sink.
type arrivals struct {
	mu     sync.Mutex
	at     map[string]time.Time // Subject → arrival
	slowAt []time.Time          // the slow destination's arrivals

	amu      sync.Mutex
	accepted map[string]time.Time // Subject → relayq's 250
}

// note is the sinks' OnData: m arrived now.
func (a *arrivals) note(m *sink.Message) error {
	i := bytes.Index(m.Data, []byte("Subject: "))
	subj := string(m.Data[i+9 : i+9+bytes.IndexByte(m.Data[i+9:], '\r')])
	a.mu.Lock()
	a.at[subj] = time.Now()
	if strings.HasPrefix(subj, "slow") {
		a.slowAt = append(a.slowAt, time.Now())
	}
	a.mu.Unlock()
	return nil
}

// accept notes relayq's 250 to the message subj.
func (a *arrivals) accept(subj string) { a.amu.Lock(); a.accepted[subj] = time.Now(); a.amu.Unlock() }

// healthyDelays waits, two minutes at most, until the want healthy
// messages have arrived, and returns each one's delay after its 250.
func (a *arrivals) healthyDelays(want int) []time.Duration {
	var delays []time.Duration
	deadline := time.Now().Add(2 * time.Minute)
	for len(delays) < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		delays = delays[:0]
		a.mu.Lock()
		for subj, at := range a.accepted {
			if got, ok := a.at[subj]; ok {
				delays = append(delays, got.Sub(at))
			}
		}
		a.mu.Unlock()
	}
	if len(delays) < want {
		log.Fatalf("only %d of %d healthy messages arrived within 2 minutes", len(delays), want)
	}
	return delays
}

// slowBetween counts the slow destination's arrivals from start to end,
// and all of them.
func (a *arrivals) slowBetween(start, end time.Time) (during, total int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.slowAt {
		if !at.Before(start) && !at.After(end) {
			during++
		}
	}
	return during, len(a.slowAt)
}

// startSinks starts slow.test's sink (one connection, slow per message)
// and the four healthy ones, all noting arrivals in a, and returns the
// routes to them (relayq.toml) and what closes them.
func startSinks(a *arrivals, slow time.Duration) (routes string, closeAll func()) {
	slowSink, err := sink.Start(sink.Options{MaxConns: 1, Discard: true, OnData: func(m *sink.Message) error {
		time.Sleep(slow)
		return a.note(m)
	}})
	check(err)
	sinks := []*sink.Server{slowSink}
	routes = fmt.Sprintf("[[delivery.route]]\ndomains = [\"slow.test\"]\nvia = \"smarthost\"\nhosts = [%q]\ntls = \"none\"\n", slowSink.Addr())
	for i := 1; i <= 4; i++ {
		s, err := sink.Start(sink.Options{Discard: true, OnData: a.note})
		check(err)
		sinks = append(sinks, s)
		routes += fmt.Sprintf("[[delivery.route]]\ndomains = [\"healthy%d.test\"]\nvia = \"smarthost\"\nhosts = [%q]\ntls = \"none\"\n", i, s.Addr())
	}
	return routes, func() {
		for _, s := range slices.Backward(sinks) {
			s.Close()
		}
	}
}

// startRelayq runs bin serve with relayq's defaults, its queue in dir and
// routes, and returns once it answers EHLO: its listener's address, and
// what stops it.
func startRelayq(bin, dir, routes string) (listen string, stop func()) {
	listen = freeAddr()
	cfg := fmt.Sprintf("hostname = \"relay.bench.invalid\"\ndata_dir = %q\n[[listener]]\naddress = %q\n[admin]\naddress = %q\n%s",
		filepath.Join(dir, "queue"), listen, freeAddr(), routes)
	check(os.WriteFile(filepath.Join(dir, "relayq.toml"), []byte(cfg), 0o600))
	logf, err := os.Create(filepath.Join(dir, "relayq.log"))
	check(err)
	cmd := exec.Command(bin, "serve", "--config", filepath.Join(dir, "relayq.toml"), "--log-format", "json", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // also when log.Fatal ends this process
	check(cmd.Start())
	waitEHLO(listen)
	return listen, func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
}

// send sends messages over conns connections while more says so; each is
// to rcpt with Subject subj. accepted, if set, is told each 250.
func send(addr string, conns int, more func() (subj, rcpt string, ok bool), accepted func(subj string)) {
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			check(err)
			defer c.Close()
			check(c.Hello("bench.invalid"))
			for {
				subj, rcpt, ok := more()
				if !ok {
					break
				}
				body := "From: <b@src.invalid>\r\nTo: <" + rcpt + ">\r\nSubject: " + subj + "\r\n\r\nhello\r\n"
				check(c.SendMail("b@src.invalid", []string{rcpt}, strings.NewReader(body)))
				if accepted != nil {
					accepted(subj)
				}
			}
			c.Quit()
		}()
	}
	wg.Wait()
}

func waitEHLO(addr string) {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := smtp.Dial(addr); err == nil {
			err = c.Hello("bench.invalid")
			c.Close()
			if err == nil {
				return
			}
		}
	}
	log.Fatal("relayq did not answer EHLO within a minute")
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
