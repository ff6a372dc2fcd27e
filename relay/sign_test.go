package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// prefixSigner is a fake Signer: it reads the whole message and puts a
// field naming its length in front, or fails with err.
type prefixSigner struct {
	err    error
	closed int
}

func (p *prefixSigner) Sign(_ context.Context, msg io.Reader) (io.ReadCloser, string, error) {
	b, err := io.ReadAll(msg)
	if err != nil {
		return nil, "", fmt.Errorf("sign: %w", err)
	}
	if p.err != nil {
		return nil, "", p.err
	}
	return &closeCounter{Reader: io.MultiReader(strings.NewReader(fmt.Sprintf("X-Signed: %d\r\n", len(b))), strings.NewReader(string(b))), n: &p.closed}, "test", nil
}

type closeCounter struct {
	io.Reader
	n *int
}

func (c *closeCounter) Close() error { *c.n++; return nil }

func TestSignerOutputIsQueuedAfterTheReceivedField(t *testing.T) {
	cfg := testConfig()
	sg := &prefixSigner{}
	cfg.Signer = sg
	q := &memQueue{}
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<a@example.org>", 250)
	r.cmd("RCPT TO:<b@example.com>", 250)
	r.cmd("DATA", 354)
	r.cmd("From: a@example.org\r\n\r\nhi\r\n.", 250)
	body := string(q.only(t).body)
	rest, ok := strings.CutPrefix(body[strings.Index(body, "\r\nX-Signed: ")+2:], "X-Signed: 27\r\n")
	if !strings.HasPrefix(body, "Received: ") || !ok || rest != "From: a@example.org\r\n\r\nhi\r\n" {
		t.Errorf("queued:\n%q", body)
	}
	if sg.closed != 1 {
		t.Errorf("signed message closed %d times, want 1", sg.closed)
	}
}

func TestSignerFailureIs451_4_3_0AndBodyLimitsStillApply(t *testing.T) {
	cfg := testConfig()
	cfg.MaxMessageSize = 1000
	cfg.Signer = &prefixSigner{err: errors.New("key gone")}
	q := &memQueue{}
	_, addr := startServer(t, cfg, q)
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<a@example.org>", 250)
	r.cmd("RCPT TO:<b@example.com>", 250)
	r.cmd("DATA", 354)
	if msg := r.cmd("From: a@example.org\r\n\r\nhi\r\n.", 451); !strings.HasPrefix(msg, "4.3.0 ") {
		t.Errorf("signing failure: 451 %s, want 451 4.3.0", msg)
	}
	r.cmd("MAIL FROM:<a@example.org>", 250)
	r.cmd("RCPT TO:<b@example.com>", 250)
	r.cmd("DATA", 354)
	if msg := r.cmd(strings.Repeat("x", 2000)+"\r\n.", 552); !strings.HasPrefix(msg, "5.3.4 ") {
		t.Errorf("too big while signing: 552 %s, want 552 5.3.4", msg)
	}
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages queued", n)
	}
}
