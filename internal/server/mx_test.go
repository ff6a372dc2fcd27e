package server_test

import (
	"context"
	"io"
	"log"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/foxcpp/go-mockdns"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/server/servertest"
	"relayq/internal/sink"
)

// TestServeDeliversByMXThroughTheConfiguredDNSServers: with no smart host,
// relayq serve looks up MX records and the MX host's address through
// delivery.dns_servers only (an operator's "use these DNS servers") and
// delivers on delivery.mx_port.
// The names are .invalid: the system resolver could not have answered.
func TestServeDeliversByMXThroughTheConfiguredDNSServers(t *testing.T) {
	dst := servertest.Sink(t, sink.Options{Addr: "127.0.0.2:0"})
	_, port, err := net.SplitHostPort(dst.Addr())
	if err != nil {
		t.Fatal(err)
	}
	dns, err := mockdns.NewServerWithLogger(map[string]mockdns.Zone{
		"dst.invalid.":    {MX: []net.MX{{Host: "mx.dst.invalid.", Pref: 10}}},
		"mx.dst.invalid.": {A: []string{"127.0.0.2"}},
	}, log.New(io.Discard, "", 0), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })

	cfg := servertest.Config(t, "127.0.0.1:1")
	cfg.Delivery.Smarthost = config.Smarthost{TLS: config.TLSStartTLS}
	cfg.Delivery.DNSServers = []string{dns.LocalAddr().String()}
	if cfg.Delivery.MXPort, err = strconv.Atoi(port); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	in := servertest.Start(t, cfg, server.Options{})
	servertest.Submit(t, in.Addrs()[0], "a@src.invalid", "b@dst.invalid", []string{"mx-1"}, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := dst.Messages()[0].To; len(got) != 1 || got[0] != "b@dst.invalid" {
		t.Fatalf("the MX host got mail for %v", got)
	}
}
