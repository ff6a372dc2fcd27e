package smarthost

import (
	"bytes"
	"context"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"relayq/config"
	"relayq/internal/dkimsign"
	"relayq/internal/sink"
	"relayq/internal/smtptest"
	"relayq/queue"
	"relayq/retry"
)

// passwordFile writes pw to a file and returns its path.
func passwordFile(t *testing.T, pw string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// putMessage queues data from `from` to rcpts and returns its ID.
func (h *harness) putMessage(from, data string, rcpts ...string) queue.ID {
	h.t.Helper()
	env := &queue.Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id := h.store.NewID()
	if err := h.store.Put(context.Background(), id, env, strings.NewReader(data)); err != nil {
		h.t.Fatal(err)
	}
	return id
}

// Two departments' senders go through two accounts at the same provider:
// each message is sent after its own AUTH, and the two accounts are two
// destinations (caps, cool-downs, connections).
func TestSenderRoutesTwoAccountsAtOneHostAreTwoDestinations(t *testing.T) {
	dst, err := sink.Start(sink.Options{Users: map[string]string{"sales": "pw-sales", "app": "pw-app"}})
	if err != nil {
		t.Fatal(err)
	}
	h := startHarness(t, dst, accountRouter(t, dst.Addr(), "pw-sales"), nil)
	h.put("Bob@Sales.example", "x@dst.example")
	h.put("APP@example.net", "y@dst.example")
	msgs := h.waitSink(2)
	users := map[string]string{}
	for _, m := range msgs {
		users[m.From] = m.User
	}
	want := map[string]string{"Bob@Sales.example": "sales", "APP@example.net": "app"}
	if !equalMaps(users, want) {
		t.Fatalf("AUTH user by sender %v, want %v", users, want)
	}
	var names []string
	for _, d := range h.worker.Destinations() {
		names = append(names, d.Name)
	}
	for _, w := range []string{"smarthost:" + dst.Addr() + ";user=sales", "smarthost:" + dst.Addr() + ";user=app"} {
		if !slices.Contains(names, w) {
			t.Errorf("destinations %q, want %q among them", names, w)
		}
	}
}

// accountRouter routes the mail of *@sales.example to addr as the user
// "sales" with the password salesPW, and that of app@example.net to addr
// as "app" (password "pw-app").
func accountRouter(t *testing.T, addr, salesPW string) *ConfigRouter {
	return smarthostRouter(nil,
		config.Route{Senders: []string{"*@sales.example"}, Via: config.ViaSmarthost, Hosts: []string{addr}, TLS: config.TLSNone,
			Username: "sales", PasswordFile: passwordFile(t, salesPW)},
		config.Route{Senders: []string{"app@example.net"}, Via: config.ViaSmarthost, Hosts: []string{addr}, TLS: config.TLSNone,
			Username: "app", PasswordFile: passwordFile(t, "pw-app")},
	)
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// One message whose recipients fall to three routes is three
// transactions: two accounts (two destinations), and on one account a
// route that rewrites the sender and one that does not.
func TestRecipientsOfDifferentSenderRoutesGoAsSeparateTransactions(t *testing.T) {
	dst, err := sink.Start(sink.Options{Users: map[string]string{"sales": "pw-sales", "app": "pw-app"}})
	if err != nil {
		t.Fatal(err)
	}
	sales := config.Route{Senders: []string{"*@sales.example"}, Via: config.ViaSmarthost, Hosts: []string{dst.Addr()}, TLS: config.TLSNone,
		Username: "sales", PasswordFile: passwordFile(t, "pw-sales")}
	partner, rewritten, other := sales, sales, sales
	partner.Domains = []string{"partner.example"}
	rewritten.Domains, rewritten.RewriteSender = []string{"rewritten.example"}, "relay@sales.example"
	other.Domains, other.Username, other.PasswordFile = []string{"other.example"}, "app", passwordFile(t, "pw-app")
	h := startHarness(t, dst, smarthostRouter(nil, partner, rewritten, other), nil)
	h.put("bob@sales.example", "a@partner.example", "b@rewritten.example", "c@other.example", "d@partner.example")
	msgs := h.waitSink(3)
	type txn struct{ from, user, to string }
	var got []txn
	for _, m := range msgs {
		got = append(got, txn{m.From, m.User, strings.Join(m.To, ",")})
	}
	want := []txn{
		{"bob@sales.example", "sales", "a@partner.example,d@partner.example"},
		{"relay@sales.example", "sales", "b@rewritten.example"},
		{"bob@sales.example", "app", "c@other.example"},
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("transactions %+v, want %+v among them", got, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d transactions, want %d: %+v", len(got), len(want), got)
	}
}

// rewrite_sender changes MAIL FROM, but the queue keeps the original
// sender: the NDR of a refused recipient goes to it. The null sender is
// never rewritten, nor its header.
func TestRewriteSenderChangesMailFromButNDRGoesToTheOriginalSender(t *testing.T) {
	var mu sync.Mutex
	var mailFrom []string
	dst, err := sink.Start(sink.Options{
		OnMail: func(from string) error {
			mu.Lock()
			mailFrom = append(mailFrom, from)
			mu.Unlock()
			return nil
		},
		OnRcpt: func(to string) error {
			if strings.HasPrefix(to, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	router := smarthostRouter([]string{dst.Addr()}, config.Route{Domains: []string{"dst.example"}, Via: config.ViaSmarthost,
		Hosts: []string{dst.Addr()}, TLS: config.TLSNone, RewriteSender: "relay@example.net", RewriteFrom: config.RewriteFromReplace})
	h := startHarness(t, dst, router, nil)
	id := h.put("alice@src.example", "nobody@dst.example")
	h.waitGone(id)
	msgs := h.waitSink(1)
	if m := msgs[0]; m.From != "" || !slices.Equal(m.To, []string{"alice@src.example"}) {
		t.Fatalf("NDR from %q to %v, want from <> to the original sender", m.From, m.To)
	}
	mu.Lock()
	first := mailFrom[0]
	mu.Unlock()
	if first != "relay@example.net" {
		t.Fatalf("MAIL FROM %q, want the rewritten sender", first)
	}

	bounce := "From: Mail Delivery System <MAILER-DAEMON@relay.example>\r\nSubject: failed\r\n\r\nbody\r\n"
	h.putMessage("", bounce, "bob@dst.example")
	msgs = h.waitSink(2)
	m := msgs[1]
	if m.From != "" || !strings.HasSuffix(string(m.Data), bounce) {
		t.Fatalf("a report was rewritten: from %q\n%s", m.From, m.Data)
	}
}

// rewrite_from: replace and reply-to put the rewritten address in From:
// with the original display name; reply-to also moves the original From:
// to Reply-To:, unless there is one. relayq's intake signature, which the
// rewrite breaks, is gone, and the message is signed for the rewritten
// domain. keep sends the message and its intake signature as queued.
func TestRewriteFromKeepsTheNameAndSignsForTheRewrittenDomain(t *testing.T) {
	dir := t.TempDir()
	key := func(domain string) (config.DKIM, string) {
		_, pemBytes, err := dkimsign.Generate(dkimsign.TypeEd25519)
		if err != nil {
			t.Fatal(err)
		}
		k, err := dkimsign.LoadKey(writeFile(t, dir, domain+".pem", pemBytes))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := dkimsign.RecordValue(k)
		if err != nil {
			t.Fatal(err)
		}
		return config.DKIM{Domain: domain, Selector: "s1", KeyFile: filepath.Join(dir, domain+".pem")}, rec
	}
	salesKey, salesRec := key("sales.example")
	relayKey, relayRec := key("example.net")
	signer, err := dkimsign.New([]config.DKIM{salesKey, relayKey}, dkimsign.Options{SpoolDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]string{"s1._domainkey.sales.example": salesRec, "s1._domainkey.example.net": relayRec}
	lookup := func(name string) ([]string, error) { // the records, as DNS would serve them
		if v, ok := records[strings.TrimSuffix(name, ".")]; ok {
			return []string{v}, nil
		}
		return nil, &dnsNotFound{name}
	}

	tests := []struct {
		mode, from, replyTo  string
		wantName, wantReply  string // the display name From: keeps; Reply-To: as it should read
		wantFrom, wantSigner string // From:'s address; the one signature's domain
	}{
		{config.RewriteFromReplyTo, `"Alice Example" <alice@sales.example>`, "", "Alice Example", `"Alice Example" <alice@sales.example>`,
			"relay@example.net", "example.net"},
		{config.RewriteFromReplyTo, "alice@sales.example", "team@sales.example", "", "team@sales.example", "relay@example.net", "example.net"},
		{config.RewriteFromReplace, "=?utf-8?q?Zo=C3=AB?= <zoe@sales.example>", "", "Zoë", "", "relay@example.net", "example.net"},
		{config.RewriteFromKeep, `"Alice Example" <alice@sales.example>`, "", "Alice Example", "", "alice@sales.example", "sales.example"},
	}
	for _, tt := range tests {
		t.Run(tt.mode+" "+tt.from, func(t *testing.T) {
			dst, err := sink.Start(sink.Options{})
			if err != nil {
				t.Fatal(err)
			}
			router := smarthostRouter(nil, config.Route{Senders: []string{"*@sales.example"}, Via: config.ViaSmarthost,
				Hosts: []string{dst.Addr()}, TLS: config.TLSNone, RewriteSender: "relay@example.net", RewriteFrom: tt.mode})
			h := startHarness(t, dst, router, func(w *Worker) { w.Signer = signer })
			orig := "From: " + tt.from + "\r\nTo: <x@dst.example>\r\nSubject: quote\r\n"
			if tt.replyTo != "" {
				orig += "Reply-To: " + tt.replyTo + "\r\n"
			}
			orig += "\r\nbody\r\n"
			// As intake queues it: signed for the original From: domain.
			signed, by, err := signer.Sign(context.Background(), strings.NewReader(orig))
			if err != nil || by == "" {
				t.Fatalf("intake signing: %q, %v", by, err)
			}
			data, _ := io.ReadAll(signed)
			signed.Close()
			h.putMessage("alice@sales.example", "Received: by relay.test.invalid; Sat, 5 Dec 2026 10:00:00 +0000\r\n"+string(data), "x@dst.example")

			got := h.waitSink(1)[0].Data
			msg, err := mail.ReadMessage(bytes.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			from, err := msg.Header.AddressList("From")
			if err != nil || len(from) != 1 || from[0].Address != tt.wantFrom || from[0].Name != tt.wantName {
				t.Errorf("From: %v (%v), want %q <%s>", from, err, tt.wantName, tt.wantFrom)
			}
			if r := msg.Header["Reply-To"]; tt.wantReply == "" && len(r) != 0 || tt.wantReply != "" && !slices.Equal(r, []string{tt.wantReply}) {
				t.Errorf("Reply-To: %q, want %q", r, tt.wantReply)
			}
			vs, err := dkim.VerifyWithOptions(bytes.NewReader(got), &dkim.VerifyOptions{LookupTXT: lookup})
			if err != nil {
				t.Fatal(err)
			}
			if len(vs) != 1 || vs[0].Domain != tt.wantSigner || vs[0].Err != nil {
				for _, v := range vs {
					t.Errorf("signature of %s: %v", v.Domain, v.Err)
				}
				t.Fatalf("%d signatures, want one by %s that verifies:\n%s", len(vs), tt.wantSigner, got)
			}
			if m := h.sink.Messages()[0]; m.From != "relay@example.net" {
				t.Errorf("MAIL FROM %q, want the rewritten sender", m.From)
			}
			if !bytes.HasSuffix(got, []byte("\r\n\r\nbody\r\n")) || !bytes.Contains(got, []byte("Received: by relay.test.invalid;")) {
				t.Errorf("body or trace field not passed on:\n%s", got)
			}
		})
	}
}

type dnsNotFound struct{ name string }

func (e *dnsNotFound) Error() string { return "no TXT record for " + e.name }

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The rewritten message is exactly the size outgoing reports (SIZE=),
// and a stored body longer than its stored size still fails the read
// after the rewritten header section: it is never sent as the message.
func TestRewrittenMessageSizeAndStoredSizeCheck(t *testing.T) {
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Never started: a running worker would deliver (and delete) the
	// messages this test reads.
	h := pausedHarness(t, dst, &Static{Destination: "sink", Targets: []Target{{Addr: dst.Addr(), TLS: TLSNone}}}, nil)
	h.worker.init()
	data := "From: Alice <alice@sales.example>\r\nDKIM-Signature: v=1; d=sales.example; h=from\r\nSubject: s\r\n\r\nbody\r\n"
	id := h.putMessage("alice@sales.example", data, "x@dst.example")
	m, err := h.store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	rw := Rewrite{Sender: "relay@example.net", From: config.RewriteFromReplyTo}
	r, size, err := h.worker.outgoing(context.Background(), m, rw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	want := "From: \"Alice\" <relay@example.net>\r\nReply-To: Alice <alice@sales.example>\r\nSubject: s\r\n\r\nbody\r\n"
	if err != nil || string(got) != want || int64(len(got)) != size {
		t.Fatalf("read %q (%v), size %d; want %q of that size", got, err, size, want)
	}

	// As if the stored body were a byte longer than recorded: found while
	// the header section is read (a small message) or while the rest
	// streams (a large one); never a message that reads to its end.
	m.Size--
	if _, _, err := h.worker.outgoing(context.Background(), m, rw); err == nil || !strings.Contains(err.Error(), "longer than its stored size") {
		t.Fatalf("opening a small body longer than its stored size: %v", err)
	}
	large := h.putMessage("alice@sales.example", data+strings.Repeat("x", 100<<10)+"\r\n", "x@dst.example")
	if m, err = h.store.Get(large); err != nil {
		t.Fatal(err)
	}
	m.Size--
	r, _, err = h.worker.outgoing(context.Background(), m, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err == nil || !strings.Contains(err.Error(), "longer than its stored size") {
		t.Fatalf("reading a large body longer than its stored size: %v", err)
	}
}

// A refused AUTH cools down that account at the host, not the host: mail
// of another account there goes out at once.
func TestRefusedAuthCoolsDownTheAccountNotTheHost(t *testing.T) {
	dst, err := sink.Start(sink.Options{Users: map[string]string{"sales": "pw-sales", "app": "pw-app"}})
	if err != nil {
		t.Fatal(err)
	}
	h := startHarness(t, dst, accountRouter(t, dst.Addr(), "wrong"), func(w *Worker) { w.CoolDown, w.MaxCoolDown = time.Hour, time.Hour })
	refused := h.put("bob@sales.example", "x@dst.example")
	if m := h.waitAttempted(refused); !strings.HasPrefix(m.Recipients[0].LastReply, "535") {
		t.Fatalf("first attempt: %q, want the 535 of a wrong password", m.Recipients[0].LastReply)
	}
	h.put("app@example.net", "y@dst.example")
	if m := h.waitSink(1)[0]; m.User != "app" {
		t.Fatalf("delivered as %q, want app", m.User)
	}
}

// Plan keys what it remembers of cooling destinations by the class of
// the sender too: while the route of one department's senders cools down,
// new mail of another's for the same domain is not put off with it.
func TestPlanPutsOffOnlyTheSendersWhoseRouteCoolsDown(t *testing.T) {
	dead := smtptest.ClosedAddr(t)
	dst, err := sink.Start(sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	router := smarthostRouter([]string{dst.Addr()},
		config.Route{Senders: []string{"*@sales.example"}, Via: config.ViaSmarthost, Hosts: []string{dead}, TLS: config.TLSNone})
	h := startHarness(t, dst, router, func(w *Worker) {
		w.CoolDown, w.Backoff = time.Hour, retry.Backoff{Min: time.Hour, Max: 2 * time.Hour}
	})
	h.waitAttempts(h.put("bob@sales.example", "x@dst.example"), 1)
	second := h.put("ann@sales.example", "y@dst.example") // finds the host cooling: noted for Plan
	h.waitAttempted(second)

	env := func(from string) *queue.Envelope {
		return &queue.Envelope{From: from, Recipients: []queue.Recipient{{Addr: "z@dst.example"}}}
	}
	if dest, f := h.worker.Plan(env("carl@sales.example")); f == nil || dest != "smarthost:"+dead {
		t.Fatalf("Plan for another sales sender: dest %q; want it put off for %s", dest, dead)
	}
	if dest, f := h.worker.Plan(env("app@example.net")); f != nil {
		t.Fatalf("Plan put off mail of a sender routed to the smart host, for %q", dest)
	}
}

// Rewriting happens at each attempt, never in the queue: mail deferred
// through a route that did not rewrite goes, once a reload adds
// rewrite_sender and rewrite_from to the route, as the account (MAIL FROM
// and From:), and its queue record keeps the original sender meanwhile.
func TestRewriteAppliesToMailQueuedBeforeTheRouteChanged(t *testing.T) {
	dst, err := sink.Start(sink.Options{OnMail: func(from string) error {
		if from != "relay@example.net" { // as a provider that relays only its account's mail
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "send as relay@example.net"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	route := config.Route{Senders: []string{"*@sales.example"}, Via: config.ViaSmarthost, Hosts: []string{dst.Addr()}, TLS: config.TLSNone}
	router := smarthostRouter(nil, route)
	h := startHarness(t, dst, router, nil)
	id := h.putMessage("alice@sales.example", "From: Alice <alice@sales.example>\r\nSubject: s\r\n\r\nbody\r\n", "x@dst.example")
	m := h.waitAttempts(id, 1)
	if r := m.Recipients[0]; m.From != "alice@sales.example" || r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "451 4.7.1") {
		t.Fatalf("before the change: from %q, %s with %q; want alice's mail pending with the 451", m.From, r.State, r.LastReply)
	}

	route.RewriteSender, route.RewriteFrom = "relay@example.net", config.RewriteFromReplace
	d := config.Default().Delivery
	d.Routes = []config.Route{route}
	router.Set(d)
	got := h.waitSink(1)[0]
	if got.From != "relay@example.net" || !bytes.HasPrefix(got.Data, []byte("From: \"Alice\" <relay@example.net>\r\n")) {
		t.Fatalf("after the change: MAIL FROM %q, message\n%s\nwant both rewritten", got.From, got.Data)
	}
	h.waitGone(id)
}
