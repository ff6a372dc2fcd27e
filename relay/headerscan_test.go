package relay

import (
	"fmt"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// scanAll scans msg in pieces of n bytes (all of it at once for n <= 0).
func scanAll(msg string, n int) (mid, subject string) {
	var h headerScan
	if n <= 0 {
		n = len(msg) + 1
	}
	for i := 0; i < len(msg); i += n {
		h.scan([]byte(msg[i:min(i+n, len(msg))]))
	}
	return h.MessageID(), h.Subject()
}

func TestHeaderScanFindsMessageIDAndSubject(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name, msg, mid, subject string
	}{
		{"plain", "From: a@x\r\nMessage-ID: <1@app.example>\r\nSubject: Hello\r\n\r\nbody\r\n", "<1@app.example>", "Hello"},
		{"folded", "Subject: Monthly\r\n report\r\n\tfor March\r\nMessage-Id:\r\n  <2@app.example>\r\n\r\n", "<2@app.example>", "Monthly report for March"},
		{"bare LF and any case", "SUBJECT: lf\nmessage-id: <3@x>\n\nbody", "<3@x>", "lf"},
		{"WSP before the colon", "Subject \t: obsolete\r\nMessage-ID : <4@x>\r\n\r\n", "<4@x>", "obsolete"},
		{"first occurrence wins", "Subject: one\r\nSubject: two\r\nMessage-ID: <a@x>\r\nMessage-ID: <b@x>\r\n\r\n", "<a@x>", "one"},
		{"similar names", "X-Subject: no\r\nSubjects: no\r\nMessage-IDs: <no@x>\r\nResent-Message-ID: <no@x>\r\nSubject: yes\r\n\r\n", "", "yes"},
		{"only in the body", "From: a@x\r\n\r\nSubject: body\r\nMessage-ID: <body@x>\r\n", "", ""},
		{"no header section", "\r\nSubject: body\r\n", "", ""},
		{"empty", "", "", ""},
		{"last line unterminated", "Subject: end", "", "end"},
		{"continuation of another field", "To: a@x,\r\n Subject: no\r\nSubject: yes\r\n\r\n", "", "yes"},
		{"RFC 2047 UTF-8 B", "Subject: =?UTF-8?B?UmVjaG51bmcgZsO8ciBNw6Ryeg==?=\r\n\r\n", "", "Rechnung für März"},
		{"RFC 2047 folded words", "Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\n =?UTF-8?Q?_aus_K=C3=B6ln?=\r\n\r\n", "", "Grüße aus Köln"},
		{"RFC 2047 windows-1252", "Subject: =?windows-1252?Q?=80_5?=\r\n\r\n", "", "€ 5"},
		{"RFC 2047 unknown charset", "Subject: =?x-none?Q?abc?=\r\n\r\n", "", "=?x-none?Q?abc?="},
		{"control characters", "Subject: a\x00b\x1b[31mc\x7f\u202ed\u0085e\tf\r\n\r\n", "", "ab[31mcde f"},
		{"encoded control characters", "Subject: =?UTF-8?Q?a=07=0D=0Ab?=\r\n\r\n", "", "ab"},
		{"invalid UTF-8", "Subject: \xffok\r\n\r\n", "", "\uFFFDok"},
		{"cut to 200 bytes", "Subject: " + long + "\r\n\r\n", "", long[:MaxSubject]},
		{"cut at a character", "Subject: a" + strings.Repeat("é", 150) + "\r\n\r\n", "", "a" + strings.Repeat("é", 99)},
		{"Message-ID too long", "Message-ID: <" + strings.Repeat("m", maxMessageID) + "@x>\r\nSubject: s\r\n\r\n", "", "s"},
	} {
		for _, n := range []int{0, 1, 2, 7} {
			mid, subject := scanAll(tc.msg, n)
			if mid != tc.mid || subject != tc.subject {
				t.Errorf("%s, in pieces of %d: got %q, %q; want %q, %q", tc.name, n, mid, subject, tc.mid, tc.subject)
			}
		}
	}
}

func TestHeaderScanStopsAtItsLimit(t *testing.T) {
	filler := "X-Filler: " + strings.Repeat("f", 100) + "\r\n"
	pad := strings.Repeat(filler, headerScanMax/len(filler))
	if mid, subject := scanAll(pad+"Subject: seen\r\nMessage-ID: <late@x>\r\n\r\n", 4096); subject != "seen" || mid != "" {
		t.Fatalf("at the limit: got %q, %q; want the Subject that starts within it, no Message-ID", mid, subject)
	}
	if mid, _ := scanAll(pad+filler+"Message-ID: <late@x>\r\n\r\n", 0); mid != "" {
		t.Fatalf("a Message-ID past %d bytes was seen: %q", headerScanMax, mid)
	}
	// A Subject over the raw limit is cut, not lost.
	if _, subject := scanAll("Subject: "+strings.Repeat("s", 10*maxSubjectRaw)+"\r\n\r\n", 0); subject != strings.Repeat("s", MaxSubject) {
		t.Fatalf("long Subject: %q", subject)
	}
}

// FuzzHeaderScan checks that scanning never panics, does not depend on how
// the message is cut into pieces, and returns only what displayText
// allows.
func FuzzHeaderScan(f *testing.F) {
	f.Add("Subject: a\r\n b\r\nMessage-ID: <x@y>\r\n\r\nbody", 3)
	f.Add("Subject: =?UTF-8?B?w7w=?= =?ISO-8859-1?Q?=FC?=\n\n", 1)
	f.Add("message-id :\t<\x00>\r\n\r\n", 0)
	f.Fuzz(func(t *testing.T, msg string, n int) {
		mid, subject := scanAll(msg, 0)
		if m2, s2 := scanAll(msg, n%64); m2 != mid || s2 != subject {
			t.Fatalf("pieces of %d give %q, %q; whole gives %q, %q", n%64, m2, s2, mid, subject)
		}
		for _, v := range []string{mid, subject} {
			if !utf8.ValidString(v) || v != strings.TrimSpace(v) {
				t.Fatalf("%q is not valid trimmed UTF-8", v)
			}
			for _, r := range v {
				if unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Bidi_Control, r) {
					t.Fatalf("%q holds control character %U", v, r)
				}
			}
		}
		if len(subject) > MaxSubject || len(mid) > maxMessageID {
			t.Fatalf("too long: %d-byte Message-ID, %d-byte Subject", len(mid), len(subject))
		}
	})
}

// TestDataKeepsMessageIDAndSubject sends messages over SMTP, on both DATA
// paths (fastdata.go; the client pipelining its body is read by go-smtp):
// the envelope queued carries the Message-ID and the unfolded Subject, and
// the "received" log line names both. A message without a header section
// is queued as well, with neither.
func TestDataKeepsMessageIDAndSubject(t *testing.T) {
	const msg = "From: app@example.org\r\nSubject: Nightly\r\n =?UTF-8?Q?r=C3=A9port?=\r\nMessage-ID: <n.1@app.example.org>\r\n\r\nSubject: not this\r\n"
	for _, tc := range []struct {
		name, data, mid, subject string
		pipelined                bool
	}{
		{"fast path", msg, "<n.1@app.example.org>", "Nightly réport", false},
		{"go-smtp reader", msg, "<n.1@app.example.org>", "Nightly réport", true},
		{"no header section", "\r\njust a body\r\n", "", "", false},
		{"no header", "just a line\r\n", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := &memQueue{}
			var logBuf syncBuffer
			_, addr := startLogged(t, testConfig(), q, ListenerConfig{}, zerolog.New(&logBuf))
			r := dialRaw(t, addr, "")
			r.cmd("MAIL FROM:<s@example.org>", 250)
			r.cmd("RCPT TO:<x@example.com>", 250)
			if tc.pipelined {
				r.send("DATA\r\n" + tc.data + ".\r\n")
				r.expect(354)
			} else {
				r.cmd("DATA", 354)
				r.send(tc.data + ".\r\n")
			}
			r.expect(250)
			env := q.only(t).env
			if env.MessageID != tc.mid || env.Subject != tc.subject {
				t.Fatalf("queued with Message-ID %q, Subject %q; want %q, %q", env.MessageID, env.Subject, tc.mid, tc.subject)
			}
			var received []map[string]any
			for _, l := range logLines(t, logBuf.String()) {
				if l["message"] == "received" {
					received = append(received, l)
				}
			}
			if len(received) != 1 || received[0]["message_id"] != tc.mid || received[0]["subject"] != tc.subject {
				t.Fatalf("received lines %v", received)
			}
		})
	}
}

// BenchmarkHeaderScan measures the scan of a typical header section (26
// fields, 1.6 KB, a folded encoded Subject) followed by a body it stops
// before: the cost intake pays per message for Message-ID and Subject.
func BenchmarkHeaderScan(b *testing.B) {
	var hdr strings.Builder
	for i := range 24 {
		fmt.Fprintf(&hdr, "X-Field-%02d: %s\r\n", i, strings.Repeat("v", 50))
	}
	hdr.WriteString("Subject: =?UTF-8?Q?Rechnung_f=C3=BCr?=\r\n =?UTF-8?Q?_M=C3=A4rz?=\r\nMessage-ID: <20260302101749.4f2a@shop.example>\r\n\r\n")
	msg := []byte(hdr.String() + strings.Repeat("body line\r\n", 3000))
	b.SetBytes(int64(hdr.Len()))
	b.ReportAllocs()
	for b.Loop() {
		var h headerScan
		h.scan(msg)
		if h.MessageID() == "" || h.Subject() != "Rechnung für März" {
			b.Fatalf("got %q, %q", h.MessageID(), h.Subject())
		}
	}
}
