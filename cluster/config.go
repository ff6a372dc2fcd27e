package cluster

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/rs/zerolog"

	"relayq/config"
)

// Open starts a Client for a [cluster] section: nil and no error when
// none is configured (cfg.Enabled() false), so that relayq runs with
// in-process limits only.
func Open(ctx context.Context, cfg config.Cluster, log zerolog.Logger) (*Client, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	pw, err := cfg.Password()
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	var roots *x509.CertPool
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster: tls_ca_file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster: tls_ca_file %s holds no PEM certificate", cfg.TLSCAFile)
		}
	}
	return New(ctx, Options{
		URL:           cfg.Redis,
		Password:      pw,
		RootCAs:       roots,
		Name:          cfg.Name,
		Node:          cfg.NodeName(),
		ExpectedNodes: cfg.ExpectedNodes,
		LeaseTTL:      cfg.LeaseTTL.Std(),
		Log:           log,
	})
}
