package server

import (
	"fmt"
	"os"
	"path/filepath"

	"relayq/config"
	"relayq/internal/dkimsign"
	"relayq/relay"
)

// dkimSigner reads the keys of cfg's [[dkim]] entries; nil without any.
// A key that does not load is an error naming its entry and file, so that
// relayq does not start with it. Large messages are spooled under
// data_dir/spool while they are signed.
func dkimSigner(cfg *config.Config) (relay.Signer, error) {
	if len(cfg.DKIM) == 0 {
		return nil, nil
	}
	dir := filepath.Join(cfg.DataDir, "spool")
	s, err := dkimsign.New(cfg.DKIM, dkimsign.Options{SpoolDir: dir})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dkim spool: %w", err)
	}
	return s, nil
}
