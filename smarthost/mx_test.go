package smarthost

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/foxcpp/go-mockdns"

	"relayq/config"
	"relayq/internal/sink"
	"relayq/queue"
)

// startDNS runs a real DNS server on loopback serving zones, and returns it
// with a resolver that asks only it.
func startDNS(t *testing.T, zones map[string]mockdns.Zone) (*mockdns.Server, *net.Resolver) {
	t.Helper()
	srv, err := mockdns.NewServerWithLogger(zones, log.New(io.Discard, "", 0), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, srv.NewResolver()
}

// startSinks starts a sink on each of ips, all on one port (MX delivery
// uses one port for every host), and returns the port and the sinks. An
// empty ip leaves that slot without a sink (nil): its address refuses
// connections. opts gives the options of sink i.
func startSinks(t *testing.T, ips []string, opts func(i int) sink.Options) (int, []*sink.Server) {
	t.Helper()
	for try := 0; try < 10; try++ {
		// Reserve a port on the first address, then take the same port on
		// the others; if one is taken there, start over on a new port.
		l, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		sinks := make([]*sink.Server, len(ips))
		ok := true
		for i, ip := range ips {
			if ip == "" {
				continue
			}
			o := sink.Options{}
			if opts != nil {
				o = opts(i)
			}
			o.Addr = net.JoinHostPort(ip, fmt.Sprint(port))
			if sinks[i], err = sink.Start(o); err != nil {
				ok = false
				break
			}
		}
		if ok {
			for _, s := range sinks {
				if s != nil {
					t.Cleanup(func() { s.Close() })
				}
			}
			return port, sinks
		}
		for _, s := range sinks {
			if s != nil {
				s.Close()
			}
		}
	}
	t.Fatal("no free port on all of the loopback addresses")
	return 0, nil
}

// mxHarness is a harness that routes by MX through the mock DNS server.
func mxHarness(t *testing.T, resolver *net.Resolver, port int, tune func(*Worker)) (*harness, *ConfigRouter) {
	t.Helper()
	d := config.Default().Delivery
	d.MXPort = port
	router := NewConfigRouter(d, resolver)
	router.Timeout = 5 * time.Second
	return startHarness(t, nil, router, tune), router
}

// waitCount waits until s holds n messages.
func waitCount(t *testing.T, s *sink.Server, n int, within time.Duration) []sink.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := s.Wait(ctx, n); err != nil {
		t.Fatalf("sink %s has %d messages, want %d: %v", s.Addr(), s.Count(), n, err)
	}
	return s.Messages()
}

// waitAttempts waits until recipient 0 of id was tried at least n times
// and returns the message.
func (h *harness) waitAttempts(id queue.ID, n int) *queue.Message {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := h.store.Get(id)
		if err != nil {
			h.t.Fatalf("message %s: %v", id, err)
		}
		if m.Recipients[0].Attempts >= n {
			return m
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("message %s tried %d times within 10 s, want %d: %+v", id, m.Recipients[0].Attempts, n, m.Recipients[0])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ndrFrom returns the NDR among msgs (from <>), parsed.
func ndrFrom(t *testing.T, msgs []sink.Message) ndrReport {
	t.Helper()
	for _, m := range msgs {
		if m.From == "" {
			return parseNDR(t, m.Data)
		}
	}
	t.Fatalf("no NDR among %d messages", len(msgs))
	return ndrReport{}
}

// senderZone routes src.invalid, the senders' domain, to a sink at ip, so
// that NDRs can be read.
func senderZone(zones map[string]mockdns.Zone, ip string) {
	zones["src.invalid."] = mockdns.Zone{MX: []net.MX{{Host: "mx.src.invalid.", Pref: 10}}}
	zones["mx.src.invalid."] = mockdns.Zone{A: []string{ip}}
}

func TestMXPreferredHostDownDeliversViaTheNext(t *testing.T) {
	// 127.0.0.2 (preference 10) has nothing listening; 127.0.0.3 (20) takes mail.
	port, sinks := startSinks(t, []string{"", "127.0.0.3"}, nil)
	_, res := startDNS(t, map[string]mockdns.Zone{
		"dst.invalid.":     {MX: []net.MX{{Host: "mx2.dst.invalid.", Pref: 20}, {Host: "mx1.dst.invalid.", Pref: 10}}},
		"mx1.dst.invalid.": {A: []string{"127.0.0.2"}},
		"mx2.dst.invalid.": {A: []string{"127.0.0.3"}},
	})
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("a@src.invalid", "b@dst.invalid")
	msgs := waitCount(t, sinks[1], 1, 10*time.Second)
	h.waitGone(id)
	if msgs[0].To[0] != "b@dst.invalid" {
		t.Errorf("delivered to %v", msgs[0].To)
	}
	ds := h.worker.Destinations()
	if len(ds) != 1 || ds[0].Name != "mx:mx1.dst.invalid,mx2.dst.invalid" {
		t.Errorf("destinations %+v, want the MX set mx:mx1.dst.invalid,mx2.dst.invalid", ds)
	}
	if hs := h.worker.Hosts(); len(hs) != 1 || hs[0].Addr != fmt.Sprintf("127.0.0.2:%d", port) {
		t.Errorf("hosts cooling down: %+v, want the preferred MX that refused", hs)
	}
}

func TestMXImplicitWhenTheDomainHasNoMXRecord(t *testing.T) {
	port, sinks := startSinks(t, []string{"127.0.0.4"}, nil)
	_, res := startDNS(t, map[string]mockdns.Zone{
		"plain.invalid.": {A: []string{"127.0.0.4"}}, // no MX: NODATA
	})
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("a@src.invalid", "b@plain.invalid")
	waitCount(t, sinks[0], 1, 10*time.Second)
	h.waitGone(id)
}

func TestMXNullMXBouncesAtOnceWith5110(t *testing.T) {
	port, sinks := startSinks(t, []string{"127.0.0.5"}, nil)
	zones := map[string]mockdns.Zone{
		"nomail.invalid.": {MX: []net.MX{{Host: ".", Pref: 0}}, A: []string{"127.0.0.5"}},
	}
	senderZone(zones, "127.0.0.5")
	_, res := startDNS(t, zones)
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("sender@src.invalid", "b@nomail.invalid")
	msgs := waitCount(t, sinks[0], 1, 10*time.Second)
	h.waitGone(id)
	r := ndrFrom(t, msgs).recipients[0]
	if r.Get("Action") != "failed" || r.Get("Status") != "5.1.10" {
		t.Errorf("NDR Action %q Status %q, want failed 5.1.10", r.Get("Action"), r.Get("Status"))
	}
	for _, m := range msgs {
		if len(m.To) > 0 && m.To[0] == "b@nomail.invalid" {
			t.Error("the message was delivered to the domain's A record despite its null MX")
		}
	}
}

func TestMXDomainThatDoesNotExistBouncesWith512(t *testing.T) {
	port, sinks := startSinks(t, []string{"127.0.0.6"}, nil)
	zones := map[string]mockdns.Zone{}
	senderZone(zones, "127.0.0.6")
	_, res := startDNS(t, zones)
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("sender@src.invalid", "b@nowhere.invalid")
	msgs := waitCount(t, sinks[0], 1, 10*time.Second)
	h.waitGone(id)
	r := ndrFrom(t, msgs).recipients[0]
	if r.Get("Action") != "failed" || r.Get("Status") != "5.1.2" {
		t.Errorf("NDR Action %q Status %q, want failed 5.1.2", r.Get("Action"), r.Get("Status"))
	}
}

func TestMXServfailDefers443ThenDelivers(t *testing.T) {
	port, sinks := startSinks(t, []string{"127.0.0.7"}, nil)
	srv, res := startDNS(t, map[string]mockdns.Zone{
		"flaky.invalid.": {Err: errors.New("zone not loaded")}, // SERVFAIL
	})
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("a@src.invalid", "b@flaky.invalid")
	m := h.waitAttempts(id, 1)
	r := m.Recipients[0]
	if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.4.3") {
		t.Fatalf("after a SERVFAIL: %s with %q, want pending with 451 4.4.3", r.State, r.LastReply)
	}
	if h.ndrs(id) != 0 {
		t.Fatal("a temporary DNS failure gave rise to an NDR")
	}
	// The zone is fixed: the next attempt delivers.
	srv.Reset()
	if err := srv.AppendRR("flaky.invalid.", mockdns.RRTypeMX, "10 mx.flaky.invalid."); err != nil {
		t.Fatal(err)
	}
	if err := srv.AppendRR("mx.flaky.invalid.", mockdns.RRTypeA, "127.0.0.7"); err != nil {
		t.Fatal(err)
	}
	waitCount(t, sinks[0], 1, 10*time.Second)
	h.waitGone(id)
}

func TestMXStartTLSHandshakeFailureNeverFallsBackToPlaintext(t *testing.T) {
	// The preferred MX offers STARTTLS but cannot complete a handshake.
	broken := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("no certificate")
	}}
	port, sinks := startSinks(t, []string{"127.0.0.8", "127.0.0.9"}, func(i int) sink.Options {
		if i == 0 {
			return sink.Options{TLS: broken}
		}
		return sink.Options{}
	})
	srv, res := startDNS(t, map[string]mockdns.Zone{
		"tls.invalid.":     {MX: []net.MX{{Host: "mx1.tls.invalid.", Pref: 10}, {Host: "mx2.tls.invalid.", Pref: 20}}},
		"mx1.tls.invalid.": {A: []string{"127.0.0.8"}},
		"mx2.tls.invalid.": {A: []string{"127.0.0.9"}},
	})
	h, _ := mxHarness(t, res, port, nil)
	id := h.put("a@src.invalid", "b@tls.invalid")
	waitCount(t, sinks[1], 1, 10*time.Second)
	h.waitGone(id)
	if n := sinks[0].Count(); n != 0 {
		t.Fatalf("the host whose TLS handshake failed got %d messages in plaintext", n)
	}

	// With that host alone, the message is deferred (4.4.1), not sent in clear.
	srv.Reset()
	if err := srv.AppendRR("tls.invalid.", mockdns.RRTypeMX, "10 mx1.tls.invalid."); err != nil {
		t.Fatal(err)
	}
	if err := srv.AppendRR("mx1.tls.invalid.", mockdns.RRTypeA, "127.0.0.8"); err != nil {
		t.Fatal(err)
	}
	id = h.put("a@src.invalid", "c@tls.invalid")
	r := h.waitAttempts(id, 1).Recipients[0]
	if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.4.1") || !strings.Contains(r.LastReply, "TLS") {
		t.Fatalf("%s with %q, want pending with a 451 4.4.1 TLS failure", r.State, r.LastReply)
	}
	if n := sinks[0].Count(); n != 0 {
		t.Fatalf("the host whose TLS handshake failed got %d messages in plaintext", n)
	}
}

func TestMXHostsByPreferenceRandomAmongEqual(t *testing.T) {
	_, res := startDNS(t, map[string]mockdns.Zone{
		"a.invalid.": {MX: []net.MX{
			{Host: "mxb.shared.invalid.", Pref: 10}, {Host: "mxa.shared.invalid.", Pref: 10},
			{Host: "backup.shared.invalid.", Pref: 30}, {Host: "first.shared.invalid.", Pref: 5},
			{Host: "noaddr.shared.invalid.", Pref: 40},
		}},
		// Same hosts, listed differently: the same destination.
		"b.invalid.": {MX: []net.MX{
			{Host: "first.shared.invalid.", Pref: 1}, {Host: "noaddr.shared.invalid.", Pref: 2},
			{Host: "backup.shared.invalid.", Pref: 3}, {Host: "mxa.shared.invalid.", Pref: 4},
			{Host: "mxb.shared.invalid.", Pref: 5},
		}},
		"first.shared.invalid.":  {A: []string{"192.0.2.1"}},
		"mxa.shared.invalid.":    {A: []string{"192.0.2.10", "192.0.2.11"}},
		"mxb.shared.invalid.":    {A: []string{"192.0.2.20"}},
		"backup.shared.invalid.": {A: []string{"192.0.2.30"}},
		"noaddr.shared.invalid.": {TXT: []string{"no address"}},
	})
	d := config.Default().Delivery
	d.MXPort = 2525
	hostsOf := func(r *Route) string {
		var s []string
		for _, t := range r.Targets {
			s = append(s, t.ServerName+"="+t.Addr)
		}
		return strings.Join(s, " ")
	}
	seen := map[string]bool{}
	for _, pick := range []func(int) int{func(int) int { return 0 }, func(n int) int { return n - 1 }} {
		router := NewConfigRouter(d, res)
		router.IntN = pick
		r, err := router.Route(context.Background(), "", "a.invalid")
		if err != nil {
			t.Fatal(err)
		}
		if r.Destination != "mx:backup.shared.invalid,first.shared.invalid,mxa.shared.invalid,mxb.shared.invalid,noaddr.shared.invalid" {
			t.Errorf("destination %q", r.Destination)
		}
		got := hostsOf(r)
		if !strings.HasPrefix(got, "first.shared.invalid=192.0.2.1:2525 ") ||
			!strings.HasSuffix(got, " backup.shared.invalid=192.0.2.30:2525") ||
			!strings.Contains(got, "mxa.shared.invalid=192.0.2.10:2525 mxa.shared.invalid=192.0.2.11:2525") {
			t.Errorf("targets %s: want first, then mxa and mxb in either order with each address in turn, then backup", got)
		}
		for _, tg := range r.Targets {
			if tg.TLS != TLSOpportunistic {
				t.Errorf("MX target %s has TLS %q, want opportunistic", tg.Addr, tg.TLS)
			}
		}
		seen[got] = true
		rb, err := router.Route(context.Background(), "", "b.invalid")
		if err != nil {
			t.Fatal(err)
		}
		if rb.Destination != r.Destination {
			t.Errorf("domains sharing MX hosts have destinations %q and %q: they must share a cap", rb.Destination, r.Destination)
		}
	}
	if len(seen) != 2 {
		t.Errorf("the injected random source did not change the order of equal-preference hosts: %v", seen)
	}
}
