package relay

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// transcript records a dialogue as "C: " and "S: " lines.
type transcript struct {
	r *rawConn
	b strings.Builder
}

// cmd sends line and records it with the reply; it returns the code.
func (tr *transcript) cmd(line string) int {
	tr.r.t.Helper()
	if err := tr.r.tp.PrintfLine("%s", line); err != nil {
		tr.r.t.Fatal(err)
	}
	code, msg := tr.r.reply()
	fmt.Fprintf(&tr.b, "C: %s\nS: %d %s\n", strings.ReplaceAll(line, "\r\n", `\r\n`), code, strings.ReplaceAll(msg, "\n", "\nS: "))
	return code
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("dialogue differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// relayTricks are RCPT arguments that try to make a relay deliver
// somewhere other than where it looks, or to look local when it is not.
var relayTricks = []string{
	"<user@other.example>",             // plain relaying
	"<user%other.example@relay.test>",  // percent hack
	"<other.example!user@relay.test>",  // UUCP bang path
	"<@relay.test:user@other.example>", // source route (RFC 5321 §4.1.1.3)
	"<@a.example,@b.example:user@other.example>",
	`<"user@other.example"@relay.test>`, // quoted local part holding an address
	`<"user%other.example"@relay.test>`, // quoted percent hack
	"<x@y@other.example>",               // two @
	"<user@[127.0.0.1]>",                // address literal of the relay itself
	"<user@[IPv6:::1]>",                 // the same in IPv6
	"<USER@RELAY.TEST>",                 // case games with our own name
	"<user@localhost>",
	`<" "@other.example>`,            // quoted space
	"<user@relay.test> NOTIFY=NEVER", // with parameters
}

// TestRelayDeniedWhateverTheAddressTricks: a client outside the allowed
// networks that has not authenticated gets 550 5.7.1 for every recipient,
// however it is written, and cannot get a message queued.
func TestRelayDeniedWhateverTheAddressTricks(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q) // only 127.0.0.1 may relay
	r := greetRaw(t, dialFrom(t, addr, "127.0.0.2"))
	tr := &transcript{r: r}
	tr.cmd("EHLO client.test")
	tr.cmd("MAIL FROM:<s@example.org>")
	for _, rcpt := range relayTricks {
		line := "RCPT TO:" + rcpt
		if code := tr.cmd(line); code != 550 {
			t.Errorf("%s: got %d, want 550", line, code)
		}
	}
	// Unparseable paths never reach the policy; go-smtp refuses them.
	for _, line := range []string{"RCPT TO:<postmaster>", "RCPT TO:<other!user>", "RCPT TO:user@other.example"} {
		if code := tr.cmd(line); code/100 != 5 {
			t.Errorf("%s: got %d, want a 5xx", line, code)
		}
	}
	tr.cmd("DATA")             // no recipient was accepted
	tr.cmd("BDAT 3 LAST\r\nx") // the chunk is "x\r\n"
	tr.cmd("QUIT")
	golden(t, "relay-denied.golden", tr.b.String())
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages queued from a client that may not relay", n)
	}
}

// TestRoutingFormsRefusedFromPermittedClients: even a client that may
// relay cannot queue an address a next hop could read as a route; what is
// queued is exactly the mailbox that is delivered to.
func TestRoutingFormsRefusedFromPermittedClients(t *testing.T) {
	q := &memQueue{}
	_, addr := startServer(t, testConfig(), q)
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<s@example.org> SMTPUTF8", 250)
	for _, rcpt := range []string{
		"user%other.example@relay.test",
		"other.example!user@relay.test",
		`"user@other.example"@relay.test`,
		`"user%other.example"@relay.test`,
		"x@y@other.example",
		"user\uFF05other.example@relay.test", // full-width percent
		"user\uFF20other.example@relay.test", // full-width at
	} {
		if msg := r.cmd("RCPT TO:<"+rcpt+">", 501); !strings.HasPrefix(msg, "5.1.3 ") {
			t.Errorf("%s: 501 %s, want 501 5.1.3", rcpt, msg)
		}
	}
	// A source route is dropped (RFC 5321 §4.1.1.3): the mailbox is queued.
	r.cmd("RCPT TO:<@a.example,@b.example:user@c.example>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: x\r\n\r\nx\r\n.\r\n")
	r.expect(250)
	got := q.only(t).env.Recipients
	if len(got) != 1 || got[0].Addr != "user@c.example" {
		t.Errorf("queued recipients %+v, want exactly user@c.example", got)
	}
	// The same forms in MAIL FROM: an @ in the local part is malformed.
	r.cmd(`MAIL FROM:<"a@b"@example.org>`, 501)
	r.cmd("MAIL FROM:<x@y@example.org>", 501)
}
