package retry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// serve accepts one connection on loopback and hands it to handle.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		handle(c)
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readErr reads from c until an error (bounded by a 5 s deadline).
func readErr(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF // io.Copy hides a clean EOF
	}
	return err
}

// TestFromErrorRealNetworkErrors makes each failure happen on loopback and
// checks the local reply it becomes.
func TestFromErrorRealNetworkErrors(t *testing.T) {
	tests := []struct {
		name   string
		stage  Stage
		err    func(t *testing.T) error
		code   int
		status smtpreply.EnhancedCode
		text   string
	}{
		{"connection refused at connect is 4.4.1", StageConnect, func(t *testing.T) error {
			_, err := net.DialTimeout("tcp", closedPort(t), 5*time.Second)
			return err
		}, 451, smtpreply.CodeNoAnswer, "connection refused"},
		{"dial with expired context at connect is 4.4.1", StageConnect, func(t *testing.T) error {
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			var d net.Dialer
			_, err := d.DialContext(ctx, "tcp", closedPort(t))
			return err
		}, 451, smtpreply.CodeNoAnswer, "timed out"},
		{"greeting timeout at connect is 4.4.1", StageConnect, func(t *testing.T) error {
			c := dial(t, serve(t, func(c net.Conn) { io.Copy(io.Discard, c) }))
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			return err
		}, 451, smtpreply.CodeNoAnswer, "timed out"},
		{"server closing after accept is 4.4.2", StageConnect, func(t *testing.T) error {
			return readErr(dial(t, serve(t, func(c net.Conn) { c.Close() })))
		}, 451, smtpreply.CodeConnDropped, "closed"},
		{"EOF after the body is 4.4.2", StageBody, func(t *testing.T) error {
			return readErr(dial(t, serve(t, func(c net.Conn) { c.Close() })))
		}, 451, smtpreply.CodeConnDropped, "closed"},
		{"reset by peer is 4.4.2", StageRcpt, func(t *testing.T) error {
			c := dial(t, serve(t, func(c net.Conn) {
				c.Read(make([]byte, 1))       // the client is surely connected
				c.(*net.TCPConn).SetLinger(0) // close with RST
				c.Close()
			}))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			return readErr(c)
		}, 451, smtpreply.CodeConnDropped, "reset"},
		{"read timeout after the body is 4.4.2", StageBody, func(t *testing.T) error {
			c := dial(t, serve(t, func(c net.Conn) { io.Copy(io.Discard, c) }))
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			return err
		}, 451, smtpreply.CodeConnDropped, "timed out"},
		{"TLS to a plain SMTP server is 4.4.1 TLS", StageHello, func(t *testing.T) error {
			c := dial(t, serve(t, func(c net.Conn) { c.Write([]byte("220 plain.example ESMTP\r\n")); c.Close() }))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			return tls.Client(c, &tls.Config{ServerName: "plain.example"}).Handshake()
		}, 451, smtpreply.CodeNoAnswer, "TLS"},
		{"untrusted certificate is 4.4.1 TLS", StageHello, func(t *testing.T) error {
			srv := httptest.NewUnstartedServer(http.NotFoundHandler())
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake is the point
			srv.StartTLS()
			t.Cleanup(srv.Close)
			c := dial(t, srv.Listener.Addr().String())
			c.SetDeadline(time.Now().Add(5 * time.Second))
			return tls.Client(c, &tls.Config{ServerName: "example.com"}).Handshake()
		}, 451, smtpreply.CodeNoAnswer, "TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err(t)
			if err == nil {
				t.Fatal("no error happened")
			}
			r := FromError(tt.stage, fmt.Errorf("deliver: %w", err))
			if r.Code != tt.code || r.Enhanced != tt.status || !r.Local {
				t.Errorf("FromError(%v, %v) = %+v, want local %d %v", tt.stage, err, *r, tt.code, tt.status)
			}
			if !strings.Contains(r.Text, tt.text) {
				t.Errorf("text %q does not say %q", r.Text, tt.text)
			}
			if d := Classify(tt.stage, r); d.Action != Defer || !d.NextHost {
				t.Errorf("Classify = %+v, want Defer with NextHost", d)
			}
		})
	}
}

func TestFromError(t *testing.T) {
	remote := &smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeBadMailbox, Text: "no such user"}
	tests := []struct {
		name  string
		stage Stage
		err   error
		want  *smtpreply.Reply
	}{
		{"nil is nil", StageBody, nil, nil},
		{"wrapped Reply is returned as is", StageRcpt, fmt.Errorf("rcpt: %w", remote), remote},
		{"go-smtp error becomes a remote reply, lines joined", StageConnect,
			&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "too busy\nclosing"},
			&smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns, Text: "too busy; closing"}},
		{"go-smtp error without enhanced code", StageRcpt,
			fmt.Errorf("x: %w", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.NoEnhancedCode, Message: "nope"}),
			&smtpreply.Reply{Code: 550, Text: "nope"}},
		{"DNS not found is 5.1.2", StageConnect,
			&net.DNSError{Err: "no such host", Name: "nx.invalid", IsNotFound: true},
			&smtpreply.Reply{Code: 550, Enhanced: smtpreply.CodeBadDomain, Text: "domain not found: nx.invalid", Local: true}},
		{"DNS SERVFAIL is 4.4.3", StageConnect,
			&net.DNSError{Err: "server misbehaving", Name: "x.invalid", IsTemporary: true},
			&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeDNSTemp, Text: "DNS lookup failed: server misbehaving", Local: true}},
		{"DNS timeout is 4.4.3", StageConnect,
			&net.OpError{Op: "dial", Err: &net.DNSError{Err: "i/o timeout", Name: "x.invalid", IsTimeout: true}},
			&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeDNSTemp, Text: "DNS lookup failed: i/o timeout", Local: true}},
		{"cancelled after connect is 4.4.2", StageBody, context.Canceled,
			&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeConnDropped, Text: "delivery cancelled", Local: true}},
		{"deadline after connect is 4.4.2", StageMail, fmt.Errorf("mail: %w", context.DeadlineExceeded),
			&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeConnDropped, Text: "connection timed out", Local: true}},
		{"unknown error defers as 4.0.0", StageBody, errors.New("body read: checksum mismatch\nchunk 3"),
			&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeTempGeneric, Text: "body read: checksum mismatch; chunk 3", Local: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FromError(tt.stage, tt.err)
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Errorf("FromError(%v, %v) = %+v, want %+v", tt.stage, tt.err, got, tt.want)
			}
		})
	}
}

func TestFromErrorTextIsShortAndOneLine(t *testing.T) {
	r := FromError(StageBody, errors.New(strings.Repeat("x\r\n", 1000)))
	if len(r.Text) > maxLocalText || strings.ContainsAny(r.Text, "\r\n") {
		t.Errorf("local text of %d bytes, or with CR/LF: %q", len(r.Text), r.Text)
	}
	r = FromError(StageBody, &smtp.SMTPError{Code: 554, Message: strings.Repeat("long reply ", 500)})
	if len(r.Text) > smtpreply.MaxText {
		t.Errorf("remote text of %d bytes, want at most %d", len(r.Text), smtpreply.MaxText)
	}
}
