// Package redistest runs a real redis-server for tests: on a free loopback
// port, with its own temporary directory, no persistence, stopped at the
// end of the test. A test can kill it and start it again on the same port,
// to see what its code does while Redis is gone.
//
// Without a redis-server binary on PATH, Start skips the test with a
// message saying so; CI installs the binary (.ci/run), so there the tests
// always run.
package redistest

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long Start and Restart wait for the first PONG.
const startTimeout = 10 * time.Second

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	tls  *TLS // nil: plain TCP

	mu struct {
		sync.Mutex
		cmd  *exec.Cmd
		done chan struct{} // closed when cmd has exited
	}
}

// TLS is the server certificate of a server that speaks only TLS
// (rediss://); clients are not asked for certificates.
type TLS struct{ CertFile, KeyFile string }

// Start starts redis-server on a free port of 127.0.0.1 and waits until it
// answers PING. It is stopped when the test ends.
func Start(t testing.TB) *Server { return start(t, nil) }

// StartTLS is Start for a server that speaks TLS only, with the given
// certificate and key.
func StartTLS(t testing.TB, cert TLS) *Server { return start(t, &cert) }

func start(t testing.TB, cert *TLS) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED: no redis-server binary on PATH; these tests need one (apt-get install redis-server; .ci/run installs it)")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), tls: cert}
	var lastErr error
	for range 5 {
		// The port was free when picked; another process may take it
		// before redis-server binds it, so try a few.
		if s.port, lastErr = freePort(); lastErr != nil {
			continue
		}
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("redistest: starting redis-server: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the server's redis:// (rediss:// with TLS) URL, database 0.
func (s *Server) URL() string {
	if s.tls != nil {
		return "rediss://" + s.Addr() + "/0"
	}
	return "redis://" + s.Addr() + "/0"
}

// Kill ends the server with SIGKILL and waits for it to exit. Killing a
// server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.mu.cmd, s.mu.done
	s.mu.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused process dies only once resumed
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts a killed server again on the same port, empty (nothing is
// persisted), and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: restarting redis-server on %s: %v", s.Addr(), err)
		}
		time.Sleep(50 * time.Millisecond) // the old socket may linger a moment
	}
}

// Pause stops the server with SIGSTOP: connections stay open and calls
// hang, as with an overloaded server. Resume undoes it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.cmd != nil {
		_ = s.mu.cmd.Process.Signal(sig)
	}
}

// start runs redis-server on s.port and waits for PONG; on failure the
// process is gone.
func (s *Server) start() error {
	args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--logfile", ""}
	if s.tls != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", s.tls.CertFile, "--tls-key-file", s.tls.KeyFile, "--tls-auth-clients", "no")
	}
	cmd := exec.Command(s.bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited: %s", lastLines(out.String()))
		default:
		}
		if s.ping() == nil {
			s.mu.Lock()
			s.mu.cmd, s.mu.done = cmd, done
			s.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("no PONG within %s", startTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ping sends one PING in the inline protocol and expects +PONG.
func (s *Server) ping() error {
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: time.Second}
	if s.tls != nil {
		// Whether the server's certificate is trusted is the client's
		// test, not this one's.
		c, err = tls.DialWithDialer(d, "tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = d.Dial("tcp", s.Addr())
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
