package main

import (
	"bytes"
	"context"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"relayq/config"
	"relayq/internal/dkimsign"
	"relayq/internal/sink"
)

// The Microsoft 365 recipe of the README, against a go-smtp server: mail
// of the LAN's scanner goes by its sender route, authenticated as the
// route's account, sent as that account (MAIL FROM and From:, the
// original From: in Reply-To:) and signed for the account's domain by
// the [[dkim]] key relayq was started with; other senders' mail goes to
// the default smart host as it is.
func TestSenderRouteRewritesAndSignsThroughRelayq(t *testing.T) {
	dir := t.TempDir()
	_, pemBytes, err := dkimsign.Generate(dkimsign.TypeEd25519)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "example.net.pem")
	pwFile := filepath.Join(dir, "pw")
	for name, data := range map[string][]byte{keyFile: pemBytes, pwFile: []byte("secret\n")} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	key, err := dkimsign.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	record, err := dkimsign.RecordValue(key)
	if err != nil {
		t.Fatal(err)
	}

	provider := startSink(t, sink.Options{Users: map[string]string{"relay@example.net": "secret"}})
	isp := startSink(t, sink.Options{})
	cfg := testConfig(t, isp.Addr())
	cfg.DKIM = []config.DKIM{{Domain: "example.net", Selector: "s1", KeyFile: keyFile}}
	cfg.Delivery.Routes = []config.Route{{
		Senders: []string{"scanner@lan.example"}, Via: config.ViaSmarthost, Hosts: []string{provider.Addr()}, TLS: config.TLSNone,
		Username: "relay@example.net", PasswordFile: pwFile,
		RewriteSender: "relay@example.net", RewriteFrom: config.RewriteFromReplyTo,
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	in := startRelayq(t, cfg)

	c := dialSMTP(t, in.Addrs()[0])
	defer c.Close()
	scan := "From: \"Scanner, 2nd floor\" <scanner@lan.example>\r\nTo: <bob@dest.example>\r\nSubject: scan\r\n" +
		"Message-ID: <scan@lan.example>\r\n\r\nPDF follows\r\n"
	if err := c.SendMail("scanner@lan.example", []string{"bob@dest.example"}, strings.NewReader(scan)); err != nil {
		t.Fatal(err)
	}
	submit(t, in.Addrs()[0], "someone@lan.example", "bob@dest.example", []string{"other"}, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := provider.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := isp.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}

	got := provider.Messages()[0]
	if got.From != "relay@example.net" || got.User != "relay@example.net" {
		t.Errorf("MAIL FROM %q as %q, want relay@example.net as relay@example.net", got.From, got.User)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(got.Data))
	if err != nil {
		t.Fatal(err)
	}
	if from := msg.Header.Get("From"); from != `"Scanner, 2nd floor" <relay@example.net>` {
		t.Errorf("From: %q", from)
	}
	if rt := msg.Header.Get("Reply-To"); rt != `"Scanner, 2nd floor" <scanner@lan.example>` {
		t.Errorf("Reply-To: %q", rt)
	}
	lookup := func(name string) ([]string, error) { // the record, as DNS would serve it
		if strings.TrimSuffix(name, ".") == "s1._domainkey.example.net" {
			return []string{record}, nil
		}
		return nil, os.ErrNotExist
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 1 || vs[0].Domain != "example.net" || vs[0].Err != nil {
		t.Fatalf("signatures %+v (%v), want one of example.net that verifies:\n%s", vs, err, got.Data)
	}

	other := isp.Messages()[0]
	if other.From != "someone@lan.example" || !bytes.Contains(other.Data, []byte("From: <someone@lan.example>")) {
		t.Errorf("other sender's mail changed: from %q\n%s", other.From, other.Data)
	}
}
