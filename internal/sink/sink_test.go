package sink

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relayq/internal/testlog"
)

const testMsg = "Subject: hi\r\n\r\nhello\r\n"

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// dial opens a go-smtp client to s with short timeouts.
func dial(t *testing.T, s *Server) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = 5*time.Second, 5*time.Second
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("test.localhost"); err != nil {
		t.Fatal(err)
	}
	return c
}

func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code int, enhanced smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enhanced {
		t.Fatalf("got %v, want %d %v", err, code, enhanced)
	}
}

func TestMessageIsRecordedStoredAndLogged(t *testing.T) {
	dir := t.TempDir()
	var log syncBuffer
	s := start(t, Options{Dir: dir, Log: &log})
	c := dial(t, s)
	if err := send(c, "a@example.org", []string{"b@example.net", "c@example.net"}, testMsg); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(ctxTimeout(t), 1); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || s.Count() != 1 {
		t.Fatalf("got %d messages, Count %d", len(msgs), s.Count())
	}
	m := msgs[0]
	if m.From != "a@example.org" || strings.Join(m.To, ",") != "b@example.net,c@example.net" ||
		string(m.Data) != testMsg || m.RemoteAddr == "" || m.At.IsZero() {
		t.Errorf("message = %+v", m)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "1-*.eml"))
	if len(files) != 1 {
		t.Fatalf("files = %v", files)
	}
	if b, _ := os.ReadFile(files[0]); string(b) != testMsg {
		t.Errorf("file holds %q", b)
	}
	line := log.String()
	for _, want := range []string{"from=<a@example.org>", "to=<b@example.net>,<c@example.net>", "size=22", files[0]} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
	// Messages returns copies: changing one changes nothing recorded.
	msgs[0].Data[0] = 'X'
	if s.Messages()[0].Data[0] != 'S' {
		t.Error("Messages shares memory with the server")
	}
}

func TestMaxConnsRefusesTheExtraConnectionWith421_4_3_2(t *testing.T) {
	s := start(t, Options{MaxConns: 1})
	first := dial(t, s) // greeted and in session: holds the one slot

	conn, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "421 4.3.2 ") {
		t.Fatalf("extra connection got %q", line)
	}
	if open, peak, refused := s.Connections(); open != 1 || peak != 1 || refused != 1 {
		t.Errorf("Connections() = %d, %d, %d; want 1, 1, 1", open, peak, refused)
	}
	// The first session is unaffected.
	if err := send(first, "a@example.org", []string{"b@example.net"}, testMsg); err != nil {
		t.Fatal(err)
	}
}

func TestHooksRejectAndCanBeSwitchedOff(t *testing.T) {
	reject := func(code int, ec smtp.EnhancedCode) error {
		return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: "scripted"}
	}
	tests := []struct {
		name     string
		hooks    Hooks
		code     int
		enhanced smtp.EnhancedCode
	}{
		{"MAIL rejected", Hooks{OnMail: func(string) error { return reject(550, smtp.EnhancedCode{5, 7, 1}) }}, 550, smtp.EnhancedCode{5, 7, 1}},
		{"RCPT rejected", Hooks{OnRcpt: func(string) error { return reject(550, smtp.EnhancedCode{5, 1, 1}) }}, 550, smtp.EnhancedCode{5, 1, 1}},
		{"DATA rejected", Hooks{OnData: func(*Message) error { return reject(554, smtp.EnhancedCode{5, 6, 0}) }}, 554, smtp.EnhancedCode{5, 6, 0}},
		{"421 at RCPT", Hooks{OnRcpt: func(string) error { return reject(421, smtp.EnhancedCode{4, 3, 2}) }}, 421, smtp.EnhancedCode{4, 3, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Options{OnMail: tt.hooks.OnMail, OnRcpt: tt.hooks.OnRcpt, OnData: tt.hooks.OnData})
			c := dial(t, s)
			wantCode(t, send(c, "a@example.org", []string{"b@example.net"}, testMsg), tt.code, tt.enhanced)
			if s.Count() != 0 {
				t.Fatalf("a rejected message was counted")
			}
			s.SetHooks(Hooks{})
			c = dial(t, s)
			if err := send(c, "a@example.org", []string{"b@example.net"}, testMsg); err != nil {
				t.Fatalf("after SetHooks: %v", err)
			}
			if s.Count() != 1 {
				t.Fatalf("Count = %d after an accepted message", s.Count())
			}
		})
	}
}

func TestLimits(t *testing.T) {
	t.Run("MaxRecipients gives 452 4.5.3 Too many recipients", func(t *testing.T) {
		s := start(t, Options{MaxRecipients: 2})
		c := dial(t, s)
		err := send(c, "a@x.example", []string{"1@y.example", "2@y.example", "3@y.example"}, testMsg)
		wantCode(t, err, 452, smtp.EnhancedCode{4, 5, 3})
		if !strings.Contains(err.Error(), "Too many recipients") {
			t.Errorf("text: %v", err)
		}
	})
	t.Run("MaxSize is advertised and enforced with 552 5.3.4", func(t *testing.T) {
		s := start(t, Options{MaxSize: 10})
		c := dial(t, s)
		if n, ok := c.MaxMessageSize(); !ok || n != 10 {
			t.Errorf("SIZE = %d, %v", n, ok)
		}
		wantCode(t, send(c, "a@x.example", []string{"b@y.example"}, testMsg), 552, smtp.EnhancedCode{5, 3, 4})
		if s.Count() != 0 {
			t.Error("an over-size message was counted")
		}
	})
}

func TestAuthIsRequiredBeforeMail(t *testing.T) {
	users := map[string]string{"app": "s3cret"}
	tests := []struct {
		name   string
		mechs  []string
		client sasl.Client
		code   int // 0: AUTH succeeds and MAIL is accepted
	}{
		{"no AUTH: MAIL gets 530", nil, nil, 530},
		{"PLAIN with the right password", nil, sasl.NewPlainClient("", "app", "s3cret"), 0},
		{"LOGIN with the right password", []string{"LOGIN"}, sasl.NewLoginClient("app", "s3cret"), 0},
		{"PLAIN with a wrong password gets 535", nil, sasl.NewPlainClient("", "app", "nope"), 535},
		{"a mechanism not offered gets 504", []string{"LOGIN"}, sasl.NewPlainClient("", "app", "s3cret"), 504},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Options{Users: users, AuthMechanisms: tt.mechs})
			c := dial(t, s)
			var err error
			if tt.client != nil {
				err = c.Auth(tt.client)
			}
			if err == nil {
				err = send(c, "a@x.example", []string{"b@y.example"}, testMsg)
			}
			if tt.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != tt.code {
				t.Fatalf("got %v, want %d", err, tt.code)
			}
		})
	}
}

func TestWaitReturnsTheContextErrorWhenTooFewArrive(t *testing.T) {
	s := start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Wait(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctxTimeout(t), 2) }()
	c := dial(t, s)
	for range 2 {
		if err := send(c, "a@x.example", []string{"b@y.example"}, testMsg); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait(2) = %v", err)
	}
}

func TestImplicitTLSAndSTARTTLS(t *testing.T) {
	cfg, _, err := SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("STARTTLS is offered with TLS", func(t *testing.T) {
		s := start(t, Options{TLS: cfg})
		if ok, _ := dial(t, s).Extension("STARTTLS"); !ok {
			t.Error("STARTTLS not offered")
		}
	})
	t.Run("ImplicitTLS refuses plaintext greeting", func(t *testing.T) {
		s := start(t, Options{TLS: cfg, ImplicitTLS: true})
		conn, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
		// The server waits for a ClientHello: no plaintext greeting comes.
		if b, _ := bufio.NewReader(conn).ReadString('\n'); strings.HasPrefix(b, "220") {
			t.Fatalf("got a plaintext greeting %q", b)
		}
	})
	t.Run("ImplicitTLS without a config is an error", func(t *testing.T) {
		if _, err := Start(Options{ImplicitTLS: true}); err == nil {
			t.Fatal("no error")
		}
	})
}

// syncBuffer is the test's view of the log.
type syncBuffer = testlog.Buffer

// TestCloseRightAfterStartReturns: go-smtp's Close does not close a
// listener its Serve has not registered yet; Close must end Serve anyway.
func TestCloseRightAfterStartReturns(t *testing.T) {
	for i := 0; i < 200; i++ {
		s, err := Start(Options{})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Close right after Start did not return within 5 s (round %d)", i)
		}
	}
}
