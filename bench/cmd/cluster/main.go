// Command cluster measures relayq nodes sharing one destination through
// Redis ([cluster]), for the README's "Running several relayq nodes": it
// starts a redis-server, a destination (internal/sink) that allows 20
// connections (421 4.3.2 beyond) and takes -delay per message, then for
// each setup — 1 node without [cluster], 1 node with it, 3 nodes with it —
// starts the relayq binaries, pushes -n messages from -clients SMTP
// clients spread over the nodes, and prints messages/s from the first
// submission to the last arrival, and the destination's peak connections
// and refusals.
//
// Everything runs on loopback. Usage (from the repository root, after
// `make build`, with redis-server on PATH):
//
//	go run ./bench/cmd/cluster -n 3000
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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
)

func main() {
	var (
		bin     = flag.String("relayq", "bin/relayq", "relayq binary")
		n       = flag.Int("n", 3000, "messages per setup")
		clients = flag.Int("clients", 12, "concurrent SMTP clients, spread over the nodes")
		delay   = flag.Duration("delay", 20*time.Millisecond, "time the destination takes per message")
		limit   = flag.Int("limit", 20, "connections the destination allows")
	)
	flag.Parse()
	dir, err := os.MkdirTemp("", "relayq-cluster-bench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	redisURL, stopRedis := startRedis(dir)
	defer stopRedis()

	var arrived atomic.Int64
	dst, err := sink.Start(sink.Options{MaxConns: *limit, Discard: true, OnData: func(*sink.Message) error {
		time.Sleep(*delay) // the destination's own time per message
		arrived.Add(1)
		return nil
	}})
	if err != nil {
		log.Fatal(err)
	}
	defer dst.Close()

	fmt.Printf("destination: %d connections, %s per message; %d messages of 1 KiB from %d clients per setup\n", *limit, *delay, *n, *clients)
	for _, s := range []struct {
		nodes   int
		cluster bool
	}{{1, false}, {1, true}, {3, true}} {
		dst.ResetPeak()
		_, _, refusedBefore := dst.Connections()
		start, before := time.Now(), arrived.Load()
		stop := startNodes(*bin, filepath.Join(dir, fmt.Sprintf("run-%d-%v", s.nodes, s.cluster)), s.nodes, s.cluster, redisURL, dst.Addr(), *limit)
		push(stop.listens, *clients, *n)
		for arrived.Load()-before < int64(*n) {
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(start) - stop.startup
		_, peak, refused := dst.Connections()
		stop.stop()
		label := fmt.Sprintf("%d node(s)", s.nodes)
		if s.cluster {
			label += " with [cluster]"
		}
		fmt.Printf("%-24s %7.0f msgs/s  (%s; destination peak %d connections, %d refused)\n",
			label, float64(*n)/took.Seconds(), took.Round(time.Millisecond), peak, refused-refusedBefore)
	}
}

// startRedis runs redis-server on a free loopback port without persistence.
func startRedis(dir string) (string, func()) {
	port := freePort()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		log.Fatalf("redis-server: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "redis://" + addr + "/0", func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

type nodes struct {
	listens []string
	startup time.Duration // spent starting them, not delivering
	stop    func()
}

// startNodes starts n relayq processes delivering to dest, with [cluster]
// on redisURL when cluster is set, and waits until each listens.
func startNodes(bin, dir string, n int, cluster bool, redisURL, dest string, limit int) nodes {
	began := time.Now()
	var out nodes
	var cmds []*exec.Cmd
	for i := range n {
		listen := "127.0.0.1:" + strconv.Itoa(freePort())
		cfg := fmt.Sprintf(`hostname = "relay.bench.invalid"
data_dir = %q
[[listener]]
address = %q
[admin]
address = "127.0.0.1:0"
[back_pressure]
enabled = false
[delivery]
max_connections_per_destination = %d
[delivery.smarthost]
hosts = [%q]
tls = "none"
[log]
level = "warn"
`, filepath.Join(dir, fmt.Sprint(i)), listen, limit, dest)
		if cluster {
			cfg += fmt.Sprintf("[cluster]\nredis = %q\nnode = \"n%d\"\nexpected_nodes = %d\n", redisURL, i, n)
		}
		path := filepath.Join(dir, fmt.Sprintf("n%d.toml", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			log.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--config", path, "--log-format", "json")
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		cmds = append(cmds, cmd)
		waitListening(listen)
		out.listens = append(out.listens, listen)
	}
	out.startup = time.Since(began)
	out.stop = func() {
		for _, c := range cmds {
			_ = c.Process.Signal(os.Interrupt)
			_ = c.Wait()
		}
	}
	return out
}

func waitListening(addr string) {
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			log.Fatalf("relayq did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// push sends total messages from clients SMTP clients, client i to
// listens[i % len(listens)], and returns when all are answered 250.
func push(listens []string, clients, total int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	body := bytes.Repeat([]byte("x"), 1000)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(listens[i%len(listens)])
			if err != nil {
				log.Fatal(err)
			}
			defer c.Close()
			if err := c.Hello("bench.invalid"); err != nil {
				log.Fatal(err)
			}
			for next.Add(1) <= int64(total) {
				msg := append([]byte("Subject: bench\r\n\r\n"), body...)
				if err := c.SendMail("a@bench.invalid", []string{"b@dest.invalid"}, bytes.NewReader(append(msg, "\r\n"...))); err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	wg.Wait()
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
