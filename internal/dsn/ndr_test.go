package dsn

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"relayq/internal/explain"
)

// collapse joins wrapped lines: the human-readable part wraps long fields.
func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }

// TestNDRHumanPartExplainsEachRecipient: for each failed recipient the
// human-readable part holds the remote's reply, the summary line that
// `relayq explain` prints first, and the "what you can do" hint.
func TestNDRHumanPartExplainsEachRecipient(t *testing.T) {
	for name, d := range map[string]*Report{"failed": sampleNDR(t), "delayed": sampleDelayed(t), "expired": sampleExpired(t)} {
		t.Run(name, func(t *testing.T) {
			b, err := d.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			human := collapse(parseDSN(t, b).human)
			for _, r := range d.Recipients {
				for _, want := range []string{
					"<" + r.Final + ">",
					"Status: " + explain.Summary(r.Status),
					"Reply: " + r.Diagnostic,
					"What to do: " + explain.Hint(r.Status),
				} {
					if !strings.Contains(human, collapse(want)) {
						t.Errorf("human part lacks %q:\n%s", want, human)
					}
				}
			}
			if !strings.Contains(human, "Subject: Quarterly report") {
				t.Errorf("human part does not name the original's Subject:\n%s", human)
			}
		})
	}
}

func TestExpiredNDRSaysHowLongAndHowOften(t *testing.T) {
	b, err := sampleExpired(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if !strings.Contains(collapse(p.human), "Tried: 124 times over 4 days 23 hours") {
		t.Errorf("human part:\n%s", p.human)
	}
	if got := p.perMessage.Get("Original-Envelope-Id"); got != "QQ271828" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	r := p.perRcpt[0]
	for k, want := range map[string]string{
		"Action": "failed", "Status": "4.4.7",
		"Final-Recipient":    "rfc822;dave@busy.example",
		"Original-Recipient": "rfc822;Dave@Busy.example",
		"Diagnostic-Code":    "smtp; 452 4.3.1 Insufficient system resources",
		"Will-Retry-Until":   "",
	} {
		if got := r.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestRelayedDSNParsesBack(t *testing.T) {
	b, err := sampleRelayed(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if got := p.header.Get("Subject"); got != "Successful Mail Delivery Report" {
		t.Errorf("Subject = %q", got)
	}
	r := p.perRcpt[0]
	for k, want := range map[string]string{"Action": "relayed", "Status": "2.0.0",
		"Remote-Mta": "dns; smtp.isp.example", "Original-Recipient": "rfc822;bob@example.org"} {
		if got := r.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if strings.Contains(p.human, "What to do") || !strings.Contains(collapse(p.human), "does not send delivery notifications") {
		t.Errorf("human part:\n%s", p.human)
	}
}

func TestReturnFullAttachesTheWholeMessage(t *testing.T) {
	b, err := sampleReturnFull(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if want := "text/plain,message/delivery-status,message/rfc822"; strings.Join(p.parts, ",") != want {
		t.Fatalf("parts %v, want %s", p.parts, want)
	}
	if !bytes.Contains(b, []byte("\r\nThe body is not part of the report.\r\n")) {
		t.Error("the original's body is not in the report")
	}
	if !strings.Contains(p.human, "Your message is attached.") {
		t.Errorf("human part:\n%s", p.human)
	}
}

func TestReturnFullAboveTheCapSendsHeadersAndSaysSo(t *testing.T) {
	b, err := sampleReturnCut(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if p.parts[2] != "text/rfc822-headers" || strings.Contains(p.headers, "The body") {
		t.Errorf("parts %v, headers %q", p.parts, p.headers)
	}
	if !strings.Contains(collapse(p.human), "at 5242880 bytes it is larger than the 1048576 bytes returned; only its headers are attached") {
		t.Errorf("human part:\n%s", p.human)
	}
}

// TestNDRSafeAgainstTheOriginalsHeaders: nothing in the original message
// (encoded words that decode to CRLF, over-long or foreign Subjects, long
// lines, a delimiter line) can add a header to the NDR or break its MIME
// structure.
func TestNDRSafeAgainstTheOriginalsHeaders(t *testing.T) {
	tests := []struct {
		name    string
		headers string
		subject string // the Subject line of the human part, after unwrapping; "" = check only that it is bounded
	}{
		{"Q-encoded CRLF in the Subject", "Subject: =?utf-8?q?Hi=0D=0ABcc:_victim@example.net?=\r\n\r\n",
			"Hi Bcc: victim@example.net"},
		{"B-encoded CRLF and a blank line", "Subject: =?utf-8?b?SGkNCg0KWC1JbmplY3RlZDogeWVz?=\r\n\r\n",
			"Hi X-Injected: yes"},
		{"RFC 2047 Latin-1", "Subject: =?iso-8859-1?q?Gr=FC=DFe_aus_K=F6ln?=\r\n\r\n", "Grüße aus Köln"},
		{"folded Subject", "Subject: part one\r\n\tpart two\r\nFrom: a@b\r\n\r\n", "part one part two"},
		{"unknown charset stays encoded", "Subject: =?x-unknown?q?abc?=\r\n\r\n", "=?x-unknown?q?abc?="},
		{"raw UTF-8 Subject", "Subject: Übergröße\r\n\r\n", "Übergröße"},
		{"control characters", "Subject: a\x00b\x1b[31mc\x7f\r\n\r\n", "a b [31mc"},
		{"over-long Subject", "Subject: " + strings.Repeat("long ", 3000) + "\r\n\r\n", ""},
		{"over-long unbreakable header line", "X-Long: " + strings.Repeat("x", 5000) + "\r\nSubject: s\r\n\r\n", "s"},
		{"no Subject", "From: a@b\r\n\r\n", "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, full := range []bool{false, true} {
				d := sampleNDR(t)
				if full {
					d.Full = []byte(tt.headers + "body\r\n")
				} else {
					d.Headers = []byte(tt.headers)
				}
				b, err := d.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				p := parseDSN(t, b) // every line CRLF and <= 998 octets
				for _, k := range []string{"Bcc", "X-Injected", "X-Long"} {
					if _, ok := p.header[k]; ok {
						t.Errorf("full=%v: the NDR got a %s header", full, k)
					}
				}
				if len(p.parts) != 3 || len(p.perRcpt) != 2 {
					t.Fatalf("full=%v: parts %v, %d recipient blocks", full, p.parts, len(p.perRcpt))
				}
				subj := ""
				for _, l := range strings.Split(p.human, "\r\n") {
					if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Subject:"); ok {
						subj = strings.TrimSpace(v)
					}
				}
				switch tt.subject {
				case "":
					_, rest, _ := strings.Cut(collapse(p.human), "Subject: ")
					whole, _, _ := strings.Cut(rest, " Queue ID:")
					if len(whole) > maxSubject || !strings.HasSuffix(whole, "...") {
						t.Errorf("full=%v: Subject is %d bytes: %q", full, len(whole), whole)
					}
				case "-":
					if subj != "" {
						t.Errorf("full=%v: Subject line %q for a message without one", full, subj)
					}
				default:
					// Long values wrap onto continuation lines; the first
					// line must be a prefix of the whole.
					if !strings.HasPrefix(collapse(tt.subject), subj) || !strings.Contains(collapse(p.human), "Subject: "+tt.subject) {
						t.Errorf("full=%v: Subject shown as %q, want %q:\n%s", full, subj, tt.subject, p.human)
					}
				}
			}
		})
	}
}

// TestDSNXtextValuesAreSanitised: ENVID and ORCPT arrive xtext-decoded
// (go-smtp decodes them), so "+0D+0A" is a real CRLF by then.
func TestDSNXtextValuesAreSanitised(t *testing.T) {
	d := sampleNDR(t)
	d.EnvID = "env\r\nBcc: victim@example.net"
	d.Recipients[0].Original = "rfc822;bob@example.org\r\n\r\nX-Injected: yes"
	d.Recipients[1].Original = "utf-8;jörg@bücher.example"
	b, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if got := p.perMessage.Get("Original-Envelope-Id"); got != "env Bcc: victim@example.net" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if len(p.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks", len(p.perRcpt))
	}
	if got := p.perRcpt[0].Get("Original-Recipient"); got != "rfc822;bob@example.org X-Injected: yes" {
		t.Errorf("Original-Recipient = %q", got)
	}
	if got := p.perRcpt[1].Get("Original-Recipient"); got != `utf-8;j\x{F6}rg@b\x{FC}cher.example` {
		t.Errorf("Original-Recipient = %q", got)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		12 * time.Second:                "12 seconds",
		time.Second:                     "1 second",
		35 * time.Minute:                "35 minutes",
		2*time.Hour + 5*time.Minute:     "2 hours 5 minutes",
		time.Hour:                       "1 hour",
		119*time.Hour + 35*time.Minute:  "4 days 23 hours",
		120 * time.Hour:                 "5 days",
		24*time.Hour + 30*time.Second:   "1 day",
		59*time.Minute + 59*time.Second: "1 hour",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
	if got := tried(1, arrival, arrival.Add(time.Second)); got != "once" {
		t.Errorf("tried = %q", got)
	}
	if got := tried(0, arrival, arrival); got != "" {
		t.Errorf("tried(0) = %q", got)
	}
}
