package main

import (
	"crypto/tls"
	"net/textproto"
	"path/filepath"
	"testing"
	"time"

	"relayq/config"
	"relayq/internal/sink"
)

// starttls opens a connection to addr, says STARTTLS and returns the TLS
// dialogue and the common name of the certificate the server presented.
func starttls(t *testing.T, addr string) (*textproto.Conn, string) {
	t.Helper()
	d := dial(t, addr)
	d.cmd("STARTTLS", 220)
	tc := tls.Client(d.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return textproto.NewConn(tc), tc.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestListenerCertificateReloadsWithoutDroppingConnections swaps the
// certificate files and reloads (what SIGHUP does): a new STARTTLS sees
// the new certificate, a session opened before goes on, and a broken pair
// leaves the last good one serving.
func TestListenerCertificateReloadsWithoutDroppingConnections(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeSelfSigned([]string{"old.test.invalid"}, certFile, keyFile, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	dst := startSink(t, sink.Options{})
	cfg := testConfig(t, dst.Addr())
	cfg.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile}
	in := startRelayq(t, cfg)
	in.SetLoader(func() (*config.Config, error) { return cfg, nil })
	addr := in.Addrs()[0]

	before, name := starttls(t, addr)
	if name != "old.test.invalid" {
		t.Fatalf("first certificate: %q", name)
	}
	if err := writeSelfSigned([]string{"new.test.invalid"}, certFile, keyFile, time.Hour, true); err != nil {
		t.Fatal(err)
	}
	if err := in.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, name := starttls(t, addr); name != "new.test.invalid" {
		t.Fatalf("after the reload: %q, want new.test.invalid", name)
	}
	// The session that shook hands with the old certificate goes on.
	if err := before.PrintfLine("EHLO client.test.invalid"); err != nil {
		t.Fatal(err)
	}
	if code, msg, err := before.ReadResponse(250); err != nil {
		t.Fatalf("EHLO on the connection opened before the reload: %d %s %v", code, msg, err)
	}

	// A half-written renewal: a key that is not the certificate's.
	if err := writeFile(keyFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if err := in.Reload(); err != nil {
		t.Fatal(err) // the configuration itself is fine; the certificate's failure is logged
	}
	if _, name := starttls(t, addr); name != "new.test.invalid" {
		t.Fatalf("after a broken pair: %q, want new.test.invalid still", name)
	}
}
