package cluster

import (
	"context"
	"fmt"

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
	return New(ctx, Options{
		URL:           cfg.Redis,
		Password:      pw,
		Name:          cfg.Name,
		Node:          cfg.NodeName(),
		ExpectedNodes: cfg.ExpectedNodes,
		Log:           log,
	})
}
