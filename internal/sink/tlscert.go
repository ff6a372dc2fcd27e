package sink

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"relayq/internal/certs"
)

// SelfSigned makes a throwaway self-signed certificate for hosts (names or
// IP addresses), valid for a day, and returns a server TLS config that
// presents it and a pool that trusts it, for clients that verify. For tests
// and `relayq sink` only.
func SelfSigned(hosts ...string) (*tls.Config, *x509.CertPool, error) {
	p, err := certs.SelfSigned(hosts, 24*time.Hour)
	if err != nil {
		return nil, nil, fmt.Errorf("sink: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{p.TLS}, MinVersion: tls.VersionTLS12}
	return cfg, p.Pool(), nil
}
