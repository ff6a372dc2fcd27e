package certs

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// writePair writes a fresh self-signed pair for host to certPath and
// keyPath and returns it.
func writePair(t *testing.T, host, certPath, keyPath string) Pair {
	t.Helper()
	p, err := SelfSigned([]string{host}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, p.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, p.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// servedName makes a TLS handshake with a server that uses f and returns
// the common name of the certificate it presented.
func servedName(t *testing.T, f *File) string {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		srv := tls.Server(c2, f.ServerConfig())
		_ = srv.Handshake()
	}()
	cli := tls.Client(c1, &tls.Config{InsecureSkipVerify: true})
	if err := cli.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	return cli.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func TestReloadServesTheNewPairAndKeepsTheOldOneWhenTheNewIsBroken(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePair(t, "a.test", certPath, keyPath)
	f, err := Load(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, f); got != "a.test" {
		t.Fatalf("served %q, want a.test", got)
	}
	writePair(t, "b.test", certPath, keyPath)
	if got := servedName(t, f); got != "a.test" {
		t.Fatalf("before Reload: served %q, want a.test still", got)
	}
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, f); got != "b.test" {
		t.Fatalf("after Reload: served %q, want b.test", got)
	}
	// A key that is not the certificate's: refused, b stays.
	other := writePair(t, "c.test", filepath.Join(dir, "c.pem"), filepath.Join(dir, "c.key"))
	if err := os.WriteFile(keyPath, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil {
		t.Fatal("Reload of a mismatched pair succeeded")
	}
	if got := servedName(t, f); got != "b.test" {
		t.Fatalf("after a failed Reload: served %q, want b.test", got)
	}
}

func TestLoadNamesTheFilesOfABadPair(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(certPath, keyPath)
	if err == nil || !strings.Contains(err.Error(), certPath) {
		t.Fatalf("Load = %v, want an error naming %s", err, certPath)
	}
}

func TestWatchReloadsAChangedPairWithinAPoll(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePair(t, "a.test", certPath, keyPath)
	f, err := Load(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Watch(ctx, 10*time.Millisecond, zerolog.Nop())

	// A renewal written as certbot does it: new files renamed into place.
	p, err := SelfSigned([]string{"renewed.test"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{certPath: p.CertPEM, keyPath: p.KeyPEM} {
		if err := os.WriteFile(path+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for servedName(t, f) != "renewed.test" {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not served within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
