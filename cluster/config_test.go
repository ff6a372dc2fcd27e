package cluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
	"relayq/internal/certs"
	"relayq/internal/redistest"
)

func TestOpenWithoutClusterIsNil(t *testing.T) {
	c, err := Open(context.Background(), config.Default().Cluster, zerolog.Nop())
	if c != nil || err != nil {
		t.Errorf("Open of the default config = %v, %v; want nil, nil", c, err)
	}
}

// A Redis that requires a password is reached with the one from
// password_file; a wrong one leaves the node degraded, not failing.
func TestOpenUsesPasswordFile(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	admin, err := New(ctx, Options{URL: srv.URL(), Node: "admin", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.rdb.ConfigSet(ctx, "requirepass", "s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	_ = admin.Close(ctx)
	file := filepath.Join(t.TempDir(), "pw")
	for _, tt := range []struct {
		pw       string
		degraded bool
	}{{"s3cret\n", false}, {"wrong\n", true}} {
		if err := os.WriteFile(file, []byte(tt.pw), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := config.Default().Cluster
		cfg.Redis, cfg.PasswordFile, cfg.Node = srv.URL(), file, "n1"
		c, err := Open(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)))
		if err != nil {
			t.Fatal(err)
		}
		if tt.degraded {
			if !c.Degraded() {
				t.Errorf("password %q: not degraded", tt.pw)
			}
		} else {
			waitFor(t, "shared with the right password", 5*time.Second, func() bool { return !c.Degraded() })
		}
		_ = c.Close(ctx)
	}
}

// rediss:// with a password from password_env: the server's certificate
// is verified against tls_ca_file; with the system's roots instead it is
// not trusted and the node stays degraded.
func TestOpenRedissVerifiesWithCAFile(t *testing.T) {
	dir := t.TempDir()
	pair, err := certs.SelfSigned([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string][]byte{certFile: pair.CertPEM, keyFile: pair.KeyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv := redistest.StartTLS(t, redistest.TLS{CertFile: certFile, KeyFile: keyFile})
	t.Setenv("RELAYQ_TEST_REDIS_PASSWORD", "tls-s3cret")
	ctx := context.Background()
	cfg := config.Default().Cluster
	cfg.Redis, cfg.TLSCAFile, cfg.Node = srv.URL(), certFile, "n1"
	admin, err := Open(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "shared over TLS", 5*time.Second, func() bool { return !admin.Degraded() })
	if err := admin.rdb.ConfigSet(ctx, "requirepass", "tls-s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	_ = admin.Close(ctx)

	cfg.PasswordEnv = "RELAYQ_TEST_REDIS_PASSWORD"
	c, err := Open(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "shared over TLS with the password", 5*time.Second, func() bool { return !c.Degraded() })
	// A first call on a new TLS connection may miss its 50 ms: the node
	// is then degraded for a moment, and its fallback has a grace.
	waitFor(t, "a lease granted over TLS", 5*time.Second, func() bool {
		l, err := c.Acquire(ctx, "d", 1)
		if err != nil {
			return false
		}
		shared := !c.Degraded()
		c.Release(ctx, l)
		return shared
	})
	_ = c.Close(ctx)

	cfg.TLSCAFile = ""
	untrusted, err := Open(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close(ctx)
	if !untrusted.Degraded() {
		t.Error("a self-signed server certificate was trusted without tls_ca_file")
	}
}
