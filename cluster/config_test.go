package cluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/config"
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
