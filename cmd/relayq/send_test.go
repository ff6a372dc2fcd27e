package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/urfave/cli/v2"
)

// received is one message a sinkServer accepted.
type received struct {
	from string
	to   []string
	data []byte
	user string
}

// sinkServer is a real go-smtp server on 127.0.0.1 that records what it
// accepts and refuses what its rules say.
type sinkServer struct {
	addr string
	mu   struct {
		sync.Mutex
		msgs     []received
		sessions int
	}
	rcptReply map[string]*smtp.SMTPError // per recipient
	dataReply *smtp.SMTPError
}

func startSendTestSink(t *testing.T, withTLS bool) *sinkServer {
	return startSinkMax(t, withTLS, 0)
}

func startSinkMax(t *testing.T, withTLS bool, maxBytes int64) *sinkServer {
	t.Helper()
	s := &sinkServer{rcptReply: map[string]*smtp.SMTPError{}}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.mu.sessions++
		s.mu.Unlock()
		return &sinkSession{s: s}, nil
	}))
	srv.Domain = "sink.invalid"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.AllowInsecureAuth = !withTLS
	srv.MaxMessageBytes = maxBytes
	if withTLS {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *sinkServer) messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.mu.msgs...)
}

type sinkSession struct {
	s    *sinkServer
	cur  received
	user string
}

func (ss *sinkSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != "app1" || pass != "s3cret" {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.cur = received{from: from, user: ss.user}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if r := ss.s.rcptReply[to]; r != nil {
		return r
	}
	ss.cur.to = append(ss.cur.to, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.dataReply != nil {
		return ss.s.dataReply
	}
	ss.cur.data = b
	ss.s.mu.Lock()
	ss.s.mu.msgs = append(ss.s.mu.msgs, ss.cur)
	ss.s.mu.Unlock()
	return nil
}

func (ss *sinkSession) Reset()        { ss.cur = received{} }
func (ss *sinkSession) Logout() error { return nil }

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sink.invalid"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// runCLI runs `relayq args...` and returns its stdout and error; exit
// errors are returned, not acted on.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	app := &cli.App{
		Name:           "relayq",
		Commands:       []*cli.Command{sendCommand(), versionCommand()},
		Reader:         strings.NewReader(stdin),
		Writer:         &out,
		ErrWriter:      io.Discard,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := app.RunContext(ctx, append([]string{"relayq"}, args...))
	return out.String(), err
}

func exitCode(err error) int {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestSendDeliversMessageAndPrintsDialogue(t *testing.T) {
	s := startSendTestSink(t, false)
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example",
		"--to", "b@y.example", "--to", "c@z.example", "--subject", "hello",
		"--header", "X-Foo: one, two", "--ehlo", "client.invalid")
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	for _, want := range []string{
		"=== connected to " + s.addr,
		"<- 220 sink.invalid",
		"-> EHLO client.invalid",
		"<- 250-",
		"-> MAIL FROM:<a@x.example>",
		"-> RCPT TO:<b@y.example>",
		"-> RCPT TO:<c@z.example>",
		"-> DATA",
		"<- 354 ",
		"-> [message: ",
		"-> .\n",
		"-> QUIT",
		"<- 221 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "X-Foo") {
		t.Errorf("the message body was printed:\n%s", out)
	}
	msgs := s.messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.from != "a@x.example" || strings.Join(m.to, ",") != "b@y.example,c@z.example" {
		t.Errorf("envelope = %q -> %q", m.from, m.to)
	}
	if bytes.Contains(bytes.ReplaceAll(m.data, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("message has a bare LF:\n%q", m.data)
	}
	pm, err := mail.ReadMessage(bytes.NewReader(m.data))
	if err != nil {
		t.Fatal(err)
	}
	for h, want := range map[string]string{
		"From": "a@x.example", "To": "b@y.example, c@z.example", "Subject": "hello", "X-Foo": "one, two",
	} {
		if got := pm.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if _, err := pm.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	if id := pm.Header.Get("Message-ID"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@client.invalid>") {
		t.Errorf("Message-ID = %q", id)
	}
}

func TestSendFailsWithTheReplyOfARefusedRecipient(t *testing.T) {
	s := startSendTestSink(t, false)
	s.rcptReply["nobody@y.example"] = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example", "--to", "b@y.example", "--to", "nobody@y.example")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "RCPT TO:<nobody@y.example>: 550 5.1.1 no such user") {
		t.Fatalf("got %v (exit %d), want exit 1 with the 550 5.1.1 reply\n%s", err, exitCode(err), out)
	}
	if !strings.Contains(out, "<- 550 5.1.1 no such user") {
		t.Errorf("output lacks the refusal:\n%s", out)
	}
	if msgs := s.messages(); len(msgs) != 1 || strings.Join(msgs[0].to, ",") != "b@y.example" {
		t.Errorf("sink got %+v, want the message for b@y.example only", msgs)
	}
}

func TestSendWithEveryRecipientRefusedSendsNoData(t *testing.T) {
	s := startSendTestSink(t, false)
	s.rcptReply["nobody@y.example"] = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example", "--to", "nobody@y.example")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "no recipient accepted") {
		t.Fatalf("got %v, want exit 1, no recipient accepted\n%s", err, out)
	}
	if strings.Contains(out, "-> DATA") || !strings.Contains(out, "-> RSET") || !strings.Contains(out, "-> QUIT") {
		t.Errorf("want RSET and QUIT without DATA:\n%s", out)
	}
}

func TestSendFailsWithTheReplyAfterData(t *testing.T) {
	s := startSendTestSink(t, false)
	s.dataReply = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum"}
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example", "--to", "b@y.example", "--size", "10KB")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "end of DATA: 552 5.3.4 Message size exceeds fixed maximum") {
		t.Fatalf("got %v, want exit 1 with 552 5.3.4\n%s", err, out)
	}
}

func TestSendDeclaresSizeSoOversizeIsRefusedAtMail(t *testing.T) {
	s := startSinkMax(t, false, 50_000)
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example", "--to", "b@y.example", "--size", "60KB")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "MAIL FROM:<a@x.example>: 552 5.3.4") {
		t.Fatalf("got %v, want exit 1 with 552 5.3.4 at MAIL\n%s", err, out)
	}
	if strings.Contains(out, "-> DATA") {
		t.Errorf("DATA was sent after the refusal:\n%s", out)
	}
}

func TestSendAt421StopsWithoutQuit(t *testing.T) {
	s := startSendTestSink(t, false)
	s.rcptReply["b@y.example"] = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "too many connections"}
	out, err := runCLI(t, "", "send", "--server", s.addr, "--from", "a@x.example", "--to", "b@y.example", "--to", "c@y.example")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "421 4.3.2") {
		t.Fatalf("got %v, want exit 1 with 421 4.3.2\n%s", err, out)
	}
	if strings.Contains(out, "c@y.example") || strings.Contains(out, "-> QUIT") {
		t.Errorf("sent more after a 421:\n%s", out)
	}
}

func TestSendStartTLSAndAuthHideTheSecret(t *testing.T) {
	s := startSendTestSink(t, true)
	out, err := runCLI(t, "", "send", "--server", s.addr, "--starttls", "--insecure", "--auth", "app1:s3cret",
		"--from", "a@x.example", "--to", "b@y.example")
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	for _, want := range []string{"-> STARTTLS", "<- 220 ", "=== TLS started: TLS 1.3", "-> AUTH PLAIN ****", "<- 235 "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "220 TLS started") {
		t.Errorf("the made-up greeting after STARTTLS was printed:\n%s", out)
	}
	if n := strings.Count(out, "-> EHLO"); n != 2 {
		t.Errorf("EHLO sent %d times, want twice (before and after STARTTLS, RFC 3207 §4.2)\n%s", n, out)
	}
	if strings.Contains(out, "s3cret") || strings.Contains(out, "AHMzY3JldA") {
		t.Errorf("the password shows in the output:\n%s", out)
	}
	if msgs := s.messages(); len(msgs) != 1 || msgs[0].user != "app1" {
		t.Errorf("sink got %+v, want one message from app1", msgs)
	}
}

func TestSendStartTLSFailsWhenNotOffered(t *testing.T) {
	s := startSendTestSink(t, false)
	_, err := runCLI(t, "", "send", "--server", s.addr, "--starttls", "--from", "a@x.example", "--to", "b@y.example")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "does not offer STARTTLS") {
		t.Fatalf("got %v, want a STARTTLS error", err)
	}
	if len(s.messages()) != 0 {
		t.Error("a message went out in cleartext")
	}
}

func TestSendCountSendsManyOnOneConnection(t *testing.T) {
	s := startSendTestSink(t, false)
	out, err := runCLI(t, "", "send", "--server", s.addr, "--count", "3", "--from", "a@x.example", "--to", "b@y.example")
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	msgs := s.messages()
	s.mu.Lock()
	sessions := s.mu.sessions
	s.mu.Unlock()
	if len(msgs) != 3 || sessions != 1 {
		t.Fatalf("got %d messages in %d sessions, want 3 in 1", len(msgs), sessions)
	}
	ids := map[string]bool{}
	for _, m := range msgs {
		pm, err := mail.ReadMessage(bytes.NewReader(m.data))
		if err != nil {
			t.Fatal(err)
		}
		ids[pm.Header.Get("Message-ID")] = true
	}
	if len(ids) != 3 {
		t.Errorf("Message-IDs repeat: %v", ids)
	}
}

func TestSendSizeGeneratesBodyOfThatSize(t *testing.T) {
	s := startSendTestSink(t, false)
	if out, err := runCLI(t, "", "send", "--server", s.addr, "--size", "100KB", "--from", "a@x.example", "--to", "b@y.example"); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	msgs := s.messages()
	if len(msgs) != 1 {
		t.Fatalf("got %d messages", len(msgs))
	}
	_, body, _ := bytes.Cut(msgs[0].data, []byte("\r\n\r\n"))
	if len(body) != 100_000 {
		t.Errorf("body is %d bytes, want 100000", len(body))
	}
	for i, line := range bytes.Split(body, []byte("\r\n")) {
		if len(line) > 78 {
			t.Fatalf("line %d is %d characters long (RFC 5322 §2.1.1: at most 78)", i, len(line))
		}
	}
}

func TestSendBodyFromStdinGetsCRLF(t *testing.T) {
	s := startSendTestSink(t, false)
	if out, err := runCLI(t, "line one\nline two", "send", "--server", s.addr, "--body-file", "-", "--from", "", "--to", "b@y.example"); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	msgs := s.messages()
	if len(msgs) != 1 || msgs[0].from != "" {
		t.Fatalf("got %+v, want one message from the null sender", msgs)
	}
	if _, body, _ := bytes.Cut(msgs[0].data, []byte("\r\n\r\n")); string(body) != "line one\r\nline two\r\n" {
		t.Errorf("body = %q", body)
	}
}

func TestSendRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"body file and size", []string{"--body-file", "x", "--size", "1KB"}, "exclude each other"},
		{"bad size", []string{"--size", "lots"}, "--size"},
		{"bad header", []string{"--header", "no colon"}, "not a header line"},
		{"zero count", []string{"--count", "0"}, "--count"},
		{"auth without colon", []string{"--auth", "user"}, "user:password"},
		{"both tls modes", []string{"--tls", "--starttls"}, "exclude each other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"send", "--server", "127.0.0.1:1", "--from", "a@x.example", "--to", "b@y.example"}, tt.args...)
			_, err := runCLI(t, "", args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestVersionPrintsVersionAndGo(t *testing.T) {
	out, err := runCLI(t, "", "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "relayq dev\n") || !strings.Contains(out, "\ngo: go1.") {
		t.Errorf("version output:\n%s", out)
	}
}
