package main

import (
	"errors"
	"net/mail"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The command lines programs really run sendmail with.
func TestParseSendmailArgsReadsWhatProgramsPass(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want sendmailOptions
	}{
		{"PHP mail()", []string{"-t", "-i"}, sendmailOptions{extract: true, ignoreDots: true}},
		{"grouped", []string{"-ti"}, sendmailOptions{extract: true, ignoreDots: true}},
		{"Debian cron", []string{"-i", "-FCronDaemon", "-B8BITMIME", "-oem", "root"},
			sendmailOptions{ignoreDots: true, fullName: "CronDaemon", rcpts: []string{"root"}}},
		{"-oi and -f apart", []string{"-oi", "-f", "app@example.org", "a@x", "b@y"},
			sendmailOptions{ignoreDots: true, from: "app@example.org", hasFrom: true, rcpts: []string{"a@x", "b@y"}}},
		{"-f glued, in brackets", []string{"-f<app@example.org>", "a@x"},
			sendmailOptions{from: "app@example.org", hasFrom: true, rcpts: []string{"a@x"}}},
		{"-r and the null sender", []string{"-r", "<>", "a@x"}, sendmailOptions{from: "", hasFrom: true, rcpts: []string{"a@x"}}},
		{"-F apart", []string{"-F", "Full Name", "a@x"}, sendmailOptions{fullName: "Full Name", rcpts: []string{"a@x"}}},
		{"ignored flags", []string{"-odi", "-odb", "-oee", "-v", "-N", "never", "-Rhdrs", "-V", "envid", "-m", "-bm", "a@x"},
			sendmailOptions{verbose: true, rcpts: []string{"a@x"}}},
		{"-bp", []string{"-bp"}, sendmailOptions{mode: modeList}},
		{"-q", []string{"-q"}, sendmailOptions{mode: modeFlush}},
		{"-q with an interval", []string{"-q1h"}, sendmailOptions{mode: modeFlush}},
		{"long options", []string{"--server=127.0.0.1:25", "--config", "/etc/r.toml", "a@x"},
			sendmailOptions{server: "127.0.0.1:25", config: "/etc/r.toml", rcpts: []string{"a@x"}}},
		{"-- ends the flags", []string{"-i", "--", "-odd@x"}, sendmailOptions{ignoreDots: true, rcpts: []string{"-odd@x"}}},
	} {
		got, err := parseSendmailArgs(tc.args)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !equalOptions(*got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, *got, tc.want)
		}
	}
}

func equalOptions(a, b sendmailOptions) bool {
	return reflect.DeepEqual(a, b)
}

func TestParseSendmailArgsRefusesWhatItDoesNotKnow(t *testing.T) {
	for _, args := range [][]string{
		{"-X"}, {"-tX"}, {"-bs"}, {"-bi"}, {"-f"}, {"-t", "-F"}, {"--verbose"}, {"--server"}, {"-C", "/etc/mail/sendmail.cf"},
	} {
		if _, err := parseSendmailArgs(args); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
}

func TestSendmailArgsDispatchesOnTheProgramName(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want []string
		ok   bool
	}{
		{[]string{"/usr/sbin/sendmail", "-t"}, []string{"-t"}, true},
		{[]string{"mailq"}, []string{"-bp"}, true},
		{[]string{"relayq", "sendmail", "-oi", "a@x"}, []string{"-oi", "a@x"}, true},
		{[]string{"relayq", "send", "--to", "a@x"}, nil, false},
		{[]string{"./bin/relayq"}, nil, false},
	} {
		got, ok := sendmailArgs(tc.argv)
		if ok != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %q %v, want %q %v", tc.argv, got, ok, tc.want, tc.ok)
		}
	}
}

func TestReadSendmailInputEndsAtALoneDotUnlessIgnoreDots(t *testing.T) {
	const in = "Subject: x\n\nline\r\n.\nafter\n"
	for _, tc := range []struct {
		ignoreDots bool
		want       string
	}{
		{false, "Subject: x\r\n\r\nline\r\n"},
		{true, "Subject: x\r\n\r\nline\r\n.\r\nafter\r\n"},
	} {
		got, err := readSendmailInput(strings.NewReader(in), tc.ignoreDots, 1000)
		if err != nil || string(got) != tc.want {
			t.Errorf("ignoreDots=%v: %q, %v; want %q", tc.ignoreDots, got, err, tc.want)
		}
	}
	got, err := readSendmailInput(strings.NewReader("a\rb\nno newline at the end"), false, 1000)
	if want := "a\r\nb\r\nno newline at the end\r\n"; err != nil || string(got) != want {
		t.Errorf("line endings: %q, %v; want %q", got, err, want)
	}
	if _, err := readSendmailInput(strings.NewReader(strings.Repeat("x\n", 600)), true, 1000); !errors.Is(err, errTooBig) {
		t.Errorf("1200 bytes with a limit of 1000: %v, want errTooBig", err)
	}
}

func TestComposeMessageAddsMissingFieldsAndRemovesBcc(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	in := "To: a@x, root\r\nCc: \"B\" <b@y>,\r\n c@y\r\nBcc: hidden@z\r\nSubject: s\r\n\r\nbody\r\n"
	msg, rcpts := composeMessage([]byte(in), composeOptions{from: "app@host", fullName: "Cron Daemon", host: "host", extract: true, now: now})
	if want := []string{"a@x", "root", "b@y", "c@y", "hidden@z"}; !slices.Equal(rcpts, want) {
		t.Errorf("recipients %q, want %q", rcpts, want)
	}
	m, err := mail.ReadMessage(strings.NewReader(string(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Bcc") != "" || strings.Contains(string(msg), "hidden@z") {
		t.Errorf("Bcc is still in the message:\n%s", msg)
	}
	if from, err := mail.ParseAddress(m.Header.Get("From")); err != nil || from.Name != "Cron Daemon" || from.Address != "app@host" {
		t.Errorf("From: %q (%v), want Cron Daemon <app@host>", m.Header.Get("From"), err)
	}
	if d, err := m.Header.Date(); err != nil || !d.Equal(now) {
		t.Errorf("Date: %v, %v", d, err)
	}
	if id := m.Header.Get("Message-ID"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@host>") {
		t.Errorf("Message-ID %q", id)
	}
	if m.Header.Get("Cc") != `"B" <b@y>, c@y` {
		t.Errorf("the folded Cc changed: %q", m.Header.Get("Cc"))
	}

	// A message with its own fields keeps them, and gets none twice.
	own := "From: me@x\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
	if msg, _ := composeMessage([]byte(own), composeOptions{from: "other@host", host: "host", now: now}); string(msg) != own {
		t.Errorf("a complete message changed:\n%s", msg)
	}
}

func TestComposeMessageWithoutAHeaderSection(t *testing.T) {
	msg, _ := composeMessage([]byte("From app Mon Mar  2 10:00:00 2026\r\njust a body\r\n"), composeOptions{from: "app@host", host: "host", now: time.Now()})
	m, err := mail.ReadMessage(strings.NewReader(string(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("From") != "<app@host>" {
		t.Errorf("From %q", m.Header.Get("From"))
	}
	if !strings.HasSuffix(string(msg), "\r\n\r\njust a body\r\n") || strings.Contains(string(msg), "From app") {
		t.Errorf("the body is not where it should be, or the mbox line stayed:\n%s", msg)
	}
}

// A list mixing bare local parts (which net/mail does not parse) with
// display names, comments and groups gives every address it holds: sendmail
// -t must not drop "Jane Doe <jane@x>" because "root" sits next to it.
func TestParseAddressArgKeepsEveryRecipientOfAMixedList(t *testing.T) {
	for in, want := range map[string][]string{
		`root, Jane Doe <jane@x.org>`:             {"root", "jane@x.org"},
		`"Doe, John" <j@x.org>, root`:             {"j@x.org", "root"},
		`root (Cron Daemon), a@x.org (Doe, John)`: {"root", "a@x.org"},
		`Team: a@x.org, "B, b" <b@y.org>;, root`:  {"a@x.org", "b@y.org", "root"},
		`undisclosed-recipients:;, root`:          {"root"},
		`undisclosed-recipients:;`:                nil,
		`root, <admin@[IPv6:2001:db8::1]>`:        {"root", "admin@[IPv6:2001:db8::1]"},
		`postmaster, John Smith`:                  {"postmaster", "John Smith"},
	} {
		if got := parseAddressArg(in); !slices.Equal(got, want) {
			t.Errorf("parseAddressArg(%q) = %q, want %q", in, got, want)
		}
	}
	// -t with a folded To mixing both kinds.
	in := "To: root,\r\n Jane Doe <jane@x.org>\r\nSubject: s\r\n\r\nBcc: body@x.org\r\n"
	msg, rcpts := composeMessage([]byte(in), composeOptions{from: "app@host", host: "host", extract: true, now: time.Now()})
	if want := []string{"root", "jane@x.org"}; !slices.Equal(rcpts, want) {
		t.Errorf("-t recipients %q, want %q", rcpts, want)
	}
	if !strings.HasSuffix(string(msg), "\r\n\r\nBcc: body@x.org\r\n") {
		t.Errorf("a body line starting with Bcc: was changed:\n%s", msg)
	}
}

// "Bcc :" (a blank before the colon, RFC 5322's obsolete syntax) is a
// field: it is removed and, with -t, its address taken, instead of ending
// the header section and showing the hidden recipient in the body.
func TestComposeMessageRemovesABccWithABlankBeforeTheColon(t *testing.T) {
	in := "To: a@x.org\r\nBcc : hidden@z.org\r\nSubject: s\r\n\r\nbody\r\n"
	msg, rcpts := composeMessage([]byte(in), composeOptions{from: "app@host", host: "host", extract: true, now: time.Now()})
	if strings.Contains(string(msg), "hidden@z.org") {
		t.Errorf("the Bcc address is in the message:\n%s", msg)
	}
	if want := []string{"a@x.org", "hidden@z.org"}; !slices.Equal(rcpts, want) {
		t.Errorf("-t recipients %q, want %q", rcpts, want)
	}
	if !strings.Contains(string(msg), "\r\nSubject: s\r\n") || !strings.HasSuffix(string(msg), "\r\n\r\nbody\r\n") {
		t.Errorf("the other fields or the body moved:\n%s", msg)
	}
}
