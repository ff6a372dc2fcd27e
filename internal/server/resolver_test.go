package server

import (
	"testing"

	"relayq/config"
)

func TestResolverForWithoutDNSServersIsTheSystemResolver(t *testing.T) {
	if r, err := resolverFor(config.Delivery{}); r != nil || err != nil {
		t.Fatalf("no dns_servers: %v, %v; want nil (the system resolver)", r, err)
	}
}
