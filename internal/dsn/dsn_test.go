package dsn

import (
	"bufio"
	"bytes"
	"flag"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"relayq/internal/explain"
	"relayq/internal/smtpreply"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const original = "Received: from app1.lan.example ([10.1.1.7])\r\n" +
	"\tby relay.example.net (relayq) with ESMTP id 0123456789abcdef01234567;\r\n" +
	"\tSun, 01 Mar 2026 12:00:00 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.org, carol@nx.invalid\r\n" +
	"Subject: Quarterly report\r\n" +
	"Message-ID: <orig-1@example.com>\r\n" +
	"\r\n" +
	"The body is not part of the report.\r\n"

var (
	arrival = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	attempt = time.Date(2026, 3, 1, 12, 0, 5, 0, time.UTC)
)

func sampleHeaders(t testing.TB) []byte {
	t.Helper()
	h, err := OriginalHeaders(strings.NewReader(original), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func sampleNDR(t testing.TB) *Report {
	return &Report{
		ReportingMTA: "relay.example.net",
		From:         "MAILER-DAEMON@relay.example.net",
		To:           "alice@example.com",
		MessageID:    "ndr-0123456789abcdef01234567@relay.example.net",
		Date:         attempt.Add(time.Second),
		QueueID:      "0123456789abcdef01234567",
		EnvID:        "QQ314159",
		Arrival:      arrival,
		Size:         int64(len(original)),
		Recipients: []Recipient{
			{
				Final: "bob@example.org", Original: "rfc822;Bob@Example.org",
				Action: ActionFailed, Status: smtpreply.CodeBadMailbox,
				RemoteMTA: "mx1.example.org", Diagnostic: "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
				LastAttempt: attempt, Attempts: 1,
			},
			{
				Final:  "carol@nx.invalid",
				Action: ActionFailed, Status: smtpreply.CodeBadDomain,
				Diagnostic:  "550 5.1.2 domain not found: nx.invalid",
				LastAttempt: attempt, Attempts: 1,
			},
		},
		Headers: sampleHeaders(t),
	}
}

func sampleDelayed(t testing.TB) *Report {
	return &Report{
		ReportingMTA: "relay.example.net",
		From:         "MAILER-DAEMON@relay.example.net",
		To:           "alice@example.com",
		MessageID:    "delay-0123456789abcdef01234567@relay.example.net",
		Date:         arrival.Add(4 * time.Hour),
		QueueID:      "0123456789abcdef01234567",
		Arrival:      arrival,
		Recipients: []Recipient{{
			Final:  "dave@busy.example",
			Action: ActionDelayed, Status: smtpreply.CodeTempResources,
			RemoteMTA: "mx.busy.example", Diagnostic: "452 4.3.1 Insufficient system resources",
			LastAttempt:    arrival.Add(4 * time.Hour).Add(-time.Minute),
			WillRetryUntil: arrival.Add(120 * time.Hour),
			Attempts:       9,
		}},
		Headers: sampleHeaders(t),
	}
}

// sampleExpired is the NDR of a message that outlived the queue lifetime:
// Status 4.4.7, Action failed, how often and how long it was tried, and the
// last reply.
func sampleExpired(t testing.TB) *Report {
	d := sampleDelayed(t)
	d.MessageID = "ndr-expired@relay.example.net"
	d.Date = arrival.Add(120*time.Hour + time.Second)
	d.EnvID = "QQ271828"
	r := &d.Recipients[0]
	r.Action, r.Status, r.WillRetryUntil = ActionFailed, smtpreply.CodeExpired, time.Time{}
	r.LastAttempt = arrival.Add(119*time.Hour + 35*time.Minute)
	r.Attempts = 124
	r.Original = "rfc822;Dave@Busy.example"
	return d
}

// sampleRelayed is the RFC 3461 §5.2.2 "relayed" Report for a recipient that
// asked NOTIFY=SUCCESS and was passed to a next hop without DSN.
func sampleRelayed(t *testing.T) *Report {
	d := sampleNDR(t)
	d.MessageID = "dsn-relayed@relay.example.net"
	d.Recipients = []Recipient{{
		Final: "bob@example.org", Original: "rfc822;bob@example.org",
		Action: ActionRelayed, Status: smtpreply.CodeOK,
		RemoteMTA: "smtp.isp.example", Diagnostic: "250 2.0.0 Ok: queued as 4Q7x2",
		LastAttempt: attempt, Attempts: 1,
	}}
	return d
}

// sampleReturnFull returns the whole original (RET=FULL within the cap).
func sampleReturnFull(t testing.TB) *Report {
	d := sampleNDR(t)
	d.MessageID = "ndr-full@relay.example.net"
	d.Recipients = d.Recipients[:1]
	d.Full = []byte(original)
	return d
}

// sampleReturnCut asked RET=FULL for a message above the cap.
func sampleReturnCut(t *testing.T) *Report {
	d := sampleNDR(t)
	d.MessageID = "ndr-cut@relay.example.net"
	d.Recipients = d.Recipients[:1]
	d.Size, d.ReturnLimit = 5<<20, 1<<20
	return d
}

func TestDSNGolden(t *testing.T) {
	for name, d := range map[string]*Report{
		"ndr_failed.golden":      sampleNDR(t),
		"dsn_delayed.golden":     sampleDelayed(t),
		"ndr_expired.golden":     sampleExpired(t),
		"dsn_relayed.golden":     sampleRelayed(t),
		"ndr_return_full.golden": sampleReturnFull(t),
		"ndr_return_cut.golden":  sampleReturnCut(t),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := d.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Bytes() differs from %s (go test -update rewrites it):\n%s", path, got)
			}
		})
	}
}

// parsedDSN is a report taken apart with the standard library only.
type parsedDSN struct {
	header     mail.Header
	params     map[string]string
	parts      []string // Content-Type of each part
	human      string
	perMessage textproto.MIMEHeader
	perRcpt    []textproto.MIMEHeader
	headers    string
}

func parseDSN(t *testing.T, b []byte) parsedDSN {
	t.Helper()
	for i, line := range strings.SplitAfter(string(b), "\n") {
		if len(line) > 0 && !strings.HasSuffix(line, "\r\n") {
			t.Fatalf("line %d does not end in CRLF: %q", i+1, line)
		}
		if len(strings.TrimSuffix(line, "\r\n")) > maxLine {
			t.Fatalf("line %d is %d octets long", i+1, len(line)-2)
		}
	}
	msg, err := mail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var p parsedDSN
	p.header = msg.Header
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	p.params = params
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for range 10 {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		p.parts = append(p.parts, ct)
		switch ct {
		case "text/plain":
			body, _ := io.ReadAll(part)
			p.human = string(body)
		case "message/delivery-status":
			tr := textproto.NewReader(bufio.NewReader(part))
			if p.perMessage, err = tr.ReadMIMEHeader(); err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			for range 100 {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					p.perRcpt = append(p.perRcpt, h)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("per-recipient fields: %v", err)
				}
			}
		case "text/rfc822-headers":
			body, _ := io.ReadAll(part)
			p.headers = string(body)
		}
	}
	return p
}

func TestDSNParsesBack(t *testing.T) {
	b, err := sampleNDR(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)

	for k, want := range map[string]string{
		"Subject":           "Undelivered Mail Returned to Sender",
		"To":                "<alice@example.com>",
		"Auto-Submitted":    "auto-replied",
		"MIME-Version":      "1.0",
		"Message-Id":        "<ndr-0123456789abcdef01234567@relay.example.net>",
		"X-Relayq-Queue-Id": "0123456789abcdef01234567",
	} {
		if got := p.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if from, err := p.header.AddressList("From"); err != nil || from[0].Address != "MAILER-DAEMON@relay.example.net" {
		t.Errorf("From = %v, %v", from, err)
	}
	if date, err := p.header.Date(); err != nil || !date.Equal(attempt.Add(time.Second)) {
		t.Errorf("Date = %v, %v", date, err)
	}
	if p.params["report-type"] != "delivery-status" || p.params["boundary"] == "" {
		t.Errorf("Content-Type params = %v", p.params)
	}
	if want := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}; strings.Join(p.parts, ",") != strings.Join(want, ",") {
		t.Errorf("parts = %v, want %v", p.parts, want)
	}

	for k, want := range map[string]string{
		"Reporting-Mta":        "dns; relay.example.net",
		"Original-Envelope-Id": "QQ314159",
		"Arrival-Date":         "Sun, 01 Mar 2026 12:00:00 +0000",
	} {
		if got := p.perMessage.Get(k); got != want {
			t.Errorf("per-message %s = %q, want %q", k, got, want)
		}
	}
	wantRcpt := []map[string]string{{
		"Original-Recipient": "rfc822;Bob@Example.org",
		"Final-Recipient":    "rfc822;bob@example.org",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx1.example.org",
		"Diagnostic-Code":    "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
		"Last-Attempt-Date":  "Sun, 01 Mar 2026 12:00:05 +0000",
	}, {
		"Original-Recipient": "",
		"Final-Recipient":    "rfc822;carol@nx.invalid",
		"Action":             "failed",
		"Status":             "5.1.2",
		"Remote-Mta":         "",
		"Diagnostic-Code":    "smtp; 550 5.1.2 domain not found: nx.invalid",
		"Will-Retry-Until":   "",
	}}
	if len(p.perRcpt) != len(wantRcpt) {
		t.Fatalf("%d recipient blocks, want %d", len(p.perRcpt), len(wantRcpt))
	}
	for i, want := range wantRcpt {
		for k, v := range want {
			if got := p.perRcpt[i].Get(k); got != v {
				t.Errorf("recipient %d: %s = %q, want %q", i, k, got, v)
			}
		}
	}

	if !strings.HasPrefix(p.headers, "Received: from app1.lan.example") || !strings.Contains(p.headers, "Subject: Quarterly report\r\n") ||
		strings.Contains(p.headers, "The body") {
		t.Errorf("original headers part:\n%s", p.headers)
	}
	for _, s := range []string{"<bob@example.org>: delivery failed", "mx1.example.org", "Recipient address rejected",
		"0123456789abcdef01234567", explain.Hint(smtpreply.CodeBadMailbox)[:30], explain.Hint(smtpreply.CodeBadDomain)[:30]} {
		if !strings.Contains(p.human, s) {
			t.Errorf("human-readable part lacks %q:\n%s", s, p.human)
		}
	}
}

func TestDelayedDSNParsesBack(t *testing.T) {
	b, err := sampleDelayed(t).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if got := p.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
		t.Errorf("Subject = %q", got)
	}
	if got := p.perMessage.Get("Original-Envelope-Id"); got != "" {
		t.Errorf("Original-Envelope-Id = %q without an ENVID", got)
	}
	if len(p.perRcpt) != 1 {
		t.Fatalf("%d recipient blocks", len(p.perRcpt))
	}
	r := p.perRcpt[0]
	for k, want := range map[string]string{"Action": "delayed", "Status": "4.3.1",
		"Final-Recipient": "rfc822;dave@busy.example", "Will-Retry-Until": "Fri, 06 Mar 2026 12:00:00 +0000"} {
		if got := r.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestDSNSubjectAndDefaultStatusByKind(t *testing.T) {
	tests := []struct {
		name    string
		actions []Action
		subject string
		status  string // of the first recipient, left zero
	}{
		{"failed", []Action{ActionFailed}, "Undelivered Mail Returned to Sender", "5.0.0"},
		{"failed beats delayed", []Action{ActionDelayed, ActionFailed}, "Undelivered Mail Returned to Sender", "4.0.0"},
		{"delayed", []Action{ActionDelayed}, "Delayed Mail (still being retried)", "4.0.0"},
		{"delivered", []Action{ActionDelivered}, "Successful Mail Delivery Report", "2.0.0"},
		{"relayed", []Action{ActionRelayed, ActionDelivered}, "Successful Mail Delivery Report", "2.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := sampleDelayed(t)
			d.Recipients = nil
			for _, a := range tt.actions {
				d.Recipients = append(d.Recipients, Recipient{Final: "x@example.org", Action: a})
			}
			b, err := d.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			p := parseDSN(t, b)
			if got := p.header.Get("Subject"); got != tt.subject {
				t.Errorf("Subject = %q, want %q", got, tt.subject)
			}
			if got := p.perRcpt[0].Get("Status"); got != tt.status {
				t.Errorf("Status = %q, want %q", got, tt.status)
			}
		})
	}
}

// TestDSNInjection: CR, LF and other control characters from any input
// never start a header line of their own.
func TestDSNInjection(t *testing.T) {
	d := sampleNDR(t)
	d.To = "alice@example.com\r\nBcc: victim@example.net"
	d.EnvID = "QQ1\r\nBcc: victim@example.net"
	d.QueueID = "q1\nBcc: victim@example.net"
	d.MessageID = "id@x\rBcc: victim@example.net"
	d.ReportingMTA = "relay.example.net\r\nX-Injected: yes"
	d.Recipients[0].Final = "bob@example.org\r\nX-Injected: yes"
	d.Recipients[0].Original = "rfc822;bob@example.org\nX-Injected: yes"
	d.Recipients[0].RemoteMTA = "mx1\r\n\r\nX-Injected: yes"
	d.Recipients[0].Diagnostic = "550 bad\r\nX-Injected: yes\x00\x1b[31m"
	b, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if _, ok := p.header["Bcc"]; ok {
		t.Errorf("a Bcc header got in: %v", p.header)
	}
	if _, ok := p.perMessage["X-Injected"]; ok {
		t.Errorf("per-message fields got X-Injected: %v", p.perMessage)
	}
	if len(p.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2 (a blank line got in)", len(p.perRcpt))
	}
	for i, h := range p.perRcpt {
		if _, ok := h["X-Injected"]; ok {
			t.Errorf("recipient %d got X-Injected: %v", i, h)
		}
	}
	if got := p.perRcpt[0].Get("Diagnostic-Code"); got != "smtp; 550 bad X-Injected: yes [31m" {
		t.Errorf("Diagnostic-Code = %q", got)
	}
	if got := p.perMessage.Get("Original-Envelope-Id"); got != "QQ1 Bcc: victim@example.net" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if bytes.ContainsAny(b, "\x00\x1b") {
		t.Error("control characters reached the report")
	}
}

func TestDSNLongAndForeignValues(t *testing.T) {
	words := strings.Repeat("word ", 190) // 950 bytes of foldable text
	tests := []struct {
		name string
		diag string
		want string // Diagnostic-Code after unfolding
	}{
		{"long text folds and unfolds unchanged", "550 5.7.1 " + words, "smtp; 550 5.7.1 " + strings.TrimSpace(words)},
		{"over 1 KiB is cut to 1 KiB", strings.Repeat("x ", 2000), "smtp; " + strings.TrimSpace(strings.Repeat("x ", 512))},
		{"one unbreakable word keeps lines under 998", strings.Repeat("y", 1500), ""},
		{"non-ASCII is escaped (RFC 6533)", "550 5.1.1 Empfänger unbekannt", `smtp; 550 5.1.1 Empf\x{E4}nger unbekannt`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := sampleNDR(t)
			d.Recipients[0].Diagnostic = tt.diag
			b, err := d.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			p := parseDSN(t, b) // checks every line <= 998 and CRLF
			got := p.perRcpt[0].Get("Diagnostic-Code")
			if tt.want != "" && got != tt.want {
				t.Errorf("Diagnostic-Code = %q, want %q", got, tt.want)
			}
			if len(got) > len("smtp; ")+maxDiagnostic+2 {
				t.Errorf("Diagnostic-Code is %d bytes", len(got))
			}
		})
	}

	d := sampleNDR(t)
	d.Recipients[0].Final = "jörg@bücher.example"
	b, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if got, want := p.perRcpt[0].Get("Final-Recipient"), `utf-8;j\x{F6}rg@b\x{FC}cher.example`; got != want {
		t.Errorf("Final-Recipient = %q, want %q", got, want)
	}
	if !strings.Contains(p.human, "<jörg@bücher.example>") {
		t.Errorf("human part lacks the UTF-8 address:\n%s", p.human)
	}
}

func TestDSNBoundary(t *testing.T) {
	d := sampleNDR(t)
	b1, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	derived := parseDSN(t, b1).params["boundary"]

	// The original's headers contain the derived delimiter: another is used.
	d.Headers = append([]byte("--"+derived+"\r\n"), d.Headers...)
	b2, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b2)
	if p.params["boundary"] == derived || len(p.parts) != 3 || !strings.HasPrefix(p.headers, "--"+derived) {
		t.Errorf("boundary %q (derived %q), parts %v", p.params["boundary"], derived, p.parts)
	}

	d.Boundary = "given-boundary"
	b3, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if got := parseDSN(t, b3).params["boundary"]; got != "given-boundary" {
		t.Errorf("boundary = %q, want the given one", got)
	}
}

func TestDSNBytesRejects(t *testing.T) {
	tests := []struct {
		name   string
		change func(d *Report)
	}{
		{"null sender: never bounce a bounce", func(d *Report) { d.To = "" }},
		{"null sender in brackets", func(d *Report) { d.To = "<>" }},
		{"no reporting MTA", func(d *Report) { d.ReportingMTA = " " }},
		{"no From", func(d *Report) { d.From = "" }},
		{"no Message-ID", func(d *Report) { d.MessageID = "<>" }},
		{"no Date", func(d *Report) { d.Date = time.Time{} }},
		{"no recipients", func(d *Report) { d.Recipients = nil }},
		{"recipient without address", func(d *Report) { d.Recipients[1].Final = "\r\n" }},
		{"unknown action", func(d *Report) { d.Recipients[0].Action = "expanded" }},
		{"boundary with a bad character", func(d *Report) { d.Boundary = "a\"b" }},
		{"boundary too long", func(d *Report) { d.Boundary = strings.Repeat("b", 71) }},
		{"boundary ending in space", func(d *Report) { d.Boundary = "b " }},
		{"given boundary occurs in the headers", func(d *Report) {
			d.Boundary = "clash"
			d.Headers = append(d.Headers, "--clash\r\n"...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := sampleNDR(t)
			tt.change(d)
			if b, err := d.Bytes(); err == nil {
				t.Errorf("Bytes() succeeded:\n%s", b)
			}
		})
	}
}

func TestDSNWithoutHeadersHasTwoParts(t *testing.T) {
	d := sampleNDR(t)
	d.Headers = nil
	b, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if len(p.parts) != 2 || strings.Contains(p.human, "attached") {
		t.Errorf("parts %v; human part:\n%s", p.parts, p.human)
	}
}

func TestOriginalHeaders(t *testing.T) {
	tests := []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"CRLF message stops after the blank line", "A: 1\r\nB: 2\r\n\r\nbody\r\n", 1000, "A: 1\r\nB: 2\r\n\r\n"},
		{"LF message is normalised to CRLF", "A: 1\n B: folded\n\nbody\n", 1000, "A: 1\r\n B: folded\r\n\r\n"},
		{"bare CR inside a line is dropped", "A: 1\r2\r\n\r\n", 1000, "A: 12\r\n\r\n"},
		{"headers only, last line without newline", "A: 1\r\nB: 2", 1000, "A: 1\r\nB: 2\r\n"},
		{"max cuts at a line boundary", "A: 1\r\nB: 22222\r\n\r\n", 10, "A: 1\r\n"},
		{"max exactly fits", "A: 1\r\n\r\nbody", 8, "A: 1\r\n\r\n"},
		{"max one short of the blank line", "A: 1\r\n\r\nbody", 7, "A: 1\r\n"},
		{"first line longer than max gives nothing", "Subject: long\r\n\r\n", 5, ""},
		{"max cutting a line without newline at EOF", "A: 1\r\nB: 2", 8, "A: 1\r\n"},
		{"zero max gives nothing", "A: 1\r\n\r\n", 0, ""},
		{"empty input", "", 100, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := OriginalHeaders(iotest.OneByteReader(strings.NewReader(tt.in)), tt.max)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("OriginalHeaders(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
			}
		})
	}
}

// countingReader counts the bytes handed out.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestOriginalHeadersReadsBoundedly(t *testing.T) {
	cr := &countingReader{r: strings.NewReader("X: " + strings.Repeat("a", 1<<20) + "\r\n\r\n")}
	got, err := OriginalHeaders(cr, 4096)
	if err != nil || len(got) != 0 {
		t.Errorf("got %d bytes, %v", len(got), err)
	}
	if cr.n > 4097 {
		t.Errorf("read %d bytes for max 4096", cr.n)
	}

	if _, err := OriginalHeaders(iotest.ErrReader(io.ErrClosedPipe), 100); err != io.ErrClosedPipe {
		t.Errorf("read error = %v, want it passed on", err)
	}
}
