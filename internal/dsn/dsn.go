package dsn

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"

	"relayq/internal/explain"
	"relayq/internal/smtpreply"
)

// Action is the Action field of a per-recipient block (RFC 3464 §2.3.3).
type Action string

const (
	ActionFailed    Action = "failed"
	ActionDelayed   Action = "delayed"
	ActionDelivered Action = "delivered"
	ActionRelayed   Action = "relayed"
)

// describe says what happened, for the human-readable part.
func (a Action) describe() string {
	switch a {
	case ActionFailed:
		return "delivery failed"
	case ActionDelayed:
		return "delivery delayed, still trying"
	case ActionRelayed:
		return "relayed to a system that sends no delivery notifications"
	}
	return "delivered"
}

// Recipient is what the report says about one recipient.
type Recipient struct {
	Final          string // final recipient address (we write "rfc822;" + addr)
	Original       string // ORCPT as received ("rfc822;user@x"), xtext-decoded, or ""
	Action         Action // failed, delayed, delivered or relayed
	Status         smtpreply.EnhancedCode
	RemoteMTA      string    // host that gave the reply, "" for local verdicts
	Diagnostic     string    // the reply line, remote or local; sanitised (no CR/LF/control chars, at most 1 KiB)
	LastAttempt    time.Time // zero: no Last-Attempt-Date
	WillRetryUntil time.Time // for delayed, zero otherwise
	// Attempts is how often delivery was tried; with Arrival and
	// LastAttempt the human-readable part says how often and how long.
	Attempts int
}

// Report is a delivery status notification (RFC 3464) about one message: an NDR
// when a recipient failed, a delay warning, or a success report.
type Report struct {
	ReportingMTA string    // our hostname
	From         string    // header From, e.g. "MAILER-DAEMON@relay.example.net"
	To           string    // the original envelope sender (the report goes to it, envelope sender <>)
	MessageID    string    // Message-ID of the report without angle brackets
	Date         time.Time // Date of the report
	QueueID      string    // our queue ID of the original (in the human-readable part and an X-Relayq-Queue-ID header)
	EnvID        string    // ENVID of the original, xtext-decoded, "" if none (Original-Envelope-Id)
	Arrival      time.Time // Arrival-Date; zero leaves it out
	Size         int64     // size of the original in bytes, 0 if unknown (shown in the human-readable part)
	Recipients   []Recipient
	Headers      []byte // the original message's header section (already bounded by the caller)
	// Full is the whole original message, returned as a message/rfc822
	// part instead of Headers when the sender asked RET=FULL (RFC 3461
	// §4.3) and it is no larger than the caller's cap.
	Full []byte
	// ReturnLimit, when non-zero, is that cap: the sender asked RET=FULL
	// but the original (Size bytes) was larger, so only Headers are
	// attached and the human-readable part says so.
	ReturnLimit int64
	Boundary    string // MIME boundary; "" derives a deterministic one from MessageID
}

const (
	maxDiagnostic = smtpreply.MaxText // bytes of a diagnostic kept (Recipient.Diagnostic)
	foldAt        = 78                // RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
	maxLine       = 998               // RFC 5322 §2.1.1: lines MUST be at most 998 characters
)

// Bytes composes the whole report message, headers and body with CRLF line
// endings: a multipart/report (RFC 6522) of a text/plain part for people, a
// message/delivery-status part (RFC 3464) and, when Full is set, a
// message/rfc822 part with the whole original, else, when Headers is set, a
// text/rfc822-headers part with its header section. Values from
// outside are stripped of control characters, so none can add a header line;
// no line is longer than 998 octets. It fails when a required field is
// missing, when To is empty (a report to the null sender would bounce a
// bounce) or when the given Boundary is unusable.
func (d *Report) Bytes() ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	human := d.humanPart()
	status := d.statusPart()
	headers, returned := normalizeLines(d.Headers), "text/rfc822-headers"
	if len(d.Full) > 0 {
		headers, returned = normalizeLines(d.Full), "message/rfc822"
	}
	boundary, err := d.boundary(human, status, string(headers))
	if err != nil {
		return nil, err
	}

	var b bytes.Buffer
	h := func(name, value string) { b.WriteString(foldHeader(name, value)) }
	h("From", "Mail Delivery System <"+address(d.From)+">")
	h("To", "<"+address(d.To)+">")
	h("Subject", d.subject())
	h("Date", d.Date.Format(time.RFC1123Z))
	h("Message-ID", "<"+strings.Trim(smtpreply.Sanitize(d.MessageID), "<>")+">")
	// RFC 3834 §5: an automatic response, so that auto-responders keep quiet.
	h("Auto-Submitted", "auto-replied")
	if q := smtpreply.Sanitize(d.QueueID); q != "" {
		h("X-Relayq-Queue-ID", q)
	}
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`)
	if !isASCII(human) || !isASCII(string(headers)) {
		// RFC 2045 §6.4: a multipart's encoding is that of its widest part.
		h("Content-Transfer-Encoding", "8bit")
	}
	// The preamble, then the parts: multipart.Writer writes each delimiter
	// line, each part's header section and the closing delimiter.
	b.WriteString("\r\nThis is a MIME-encapsulated delivery status notification (RFC 3464).\r\n\r\n")
	mw := multipart.NewWriter(&b)
	if err := mw.SetBoundary(boundary); err != nil {
		return nil, fmt.Errorf("dsn: MIME boundary %q: %w", boundary, err)
	}
	part := func(desc, ctype, body string) {
		hdr := textproto.MIMEHeader{"Content-Description": {desc}, "Content-Type": {ctype}}
		if !isASCII(body) {
			hdr.Set("Content-Transfer-Encoding", "8bit")
		}
		w, _ := mw.CreatePart(hdr)                          // a bytes.Buffer does not fail
		io.WriteString(w, strings.TrimSuffix(body, "\r\n")) // the delimiter's CRLF ends the last line
	}
	part("Notification", "text/plain; charset=utf-8", human)
	part("Delivery report", "message/delivery-status", status)
	switch {
	case len(headers) > 0 && len(d.Full) > 0:
		part("The original message", returned, string(headers))
	case len(headers) > 0:
		part("Headers of the original message", returned, string(headers))
	}
	mw.Close()
	return b.Bytes(), nil
}

func (d *Report) check() error {
	switch {
	case smtpreply.Sanitize(d.ReportingMTA) == "":
		return errors.New("dsn: no ReportingMTA")
	case address(d.From) == "":
		return errors.New("dsn: no From")
	case address(d.To) == "":
		return errors.New("dsn: no To: never send a report to the null sender")
	case strings.Trim(smtpreply.Sanitize(d.MessageID), "<>") == "":
		return errors.New("dsn: no MessageID")
	case d.Date.IsZero():
		return errors.New("dsn: no Date")
	case len(d.Recipients) == 0:
		return errors.New("dsn: no recipients")
	}
	for i, r := range d.Recipients {
		if address(r.Final) == "" {
			return fmt.Errorf("dsn: recipient %d: no final address", i)
		}
		switch r.Action {
		case ActionFailed, ActionDelayed, ActionDelivered, ActionRelayed:
		default:
			return fmt.Errorf("dsn: recipient %d: bad action %q", i, r.Action)
		}
	}
	return nil
}

// kind is the Action that names the report: failed beats delayed beats
// success, so that a report that bounces anything says so in its Subject.
func (d *Report) kind() Action {
	k := ActionRelayed
	for _, r := range d.Recipients {
		switch r.Action {
		case ActionFailed:
			return ActionFailed
		case ActionDelayed:
			k = ActionDelayed
		case ActionDelivered:
			if k == ActionRelayed {
				k = ActionDelivered
			}
		}
	}
	return k
}

func (d *Report) subject() string {
	switch d.kind() {
	case ActionFailed:
		return "Undelivered Mail Returned to Sender"
	case ActionDelayed:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

// status returns the recipient's status, or the generic one of its action
// when the caller left it zero.
func (r *Recipient) status() smtpreply.EnhancedCode {
	if !r.Status.IsZero() {
		return r.Status
	}
	switch r.Action {
	case ActionFailed:
		return smtpreply.CodePermGeneric
	case ActionDelayed:
		return smtpreply.CodeTempGeneric
	}
	return smtpreply.CodeOK
}

func (d *Report) humanPart() string {
	var b strings.Builder
	para := func(s string) {
		for _, l := range wrap(s, foldAt-2) {
			b.WriteString(l + "\r\n")
		}
	}
	field := func(label, value string) {
		if value == "" {
			return
		}
		const indent = "    "
		prefix := fmt.Sprintf("%s%-13s", indent, label+":")
		for i, l := range wrap(value, foldAt-2-len(prefix)) {
			if i > 0 {
				prefix = strings.Repeat(" ", len(prefix))
			}
			b.WriteString(prefix + l + "\r\n")
		}
	}

	para("This is the mail system at " + smtpreply.Sanitize(d.ReportingMTA) + ".")
	b.WriteString("\r\n")
	intro := map[Action]string{
		ActionFailed: "Your message could not be delivered to one or more recipients. " +
			"This is a permanent error; it will not be retried.",
		ActionDelayed: "Your message has not been delivered yet to one or more recipients. " +
			"It stays in the queue and delivery is retried; you do not need to send it again.",
		ActionDelivered: "Your message was delivered to the recipients below, as you asked to be told.",
		ActionRelayed: "Your message was passed on to the recipients' mail system below. " +
			"That system does not send delivery notifications, so this is the last report you will get for them.",
	}[d.kind()]
	switch {
	case len(d.Full) > 0:
		intro += " Your message is attached."
	case d.ReturnLimit > 0 && len(d.Headers) > 0:
		intro += fmt.Sprintf(" You asked for your message to be returned in full, but at %d bytes it is larger "+
			"than the %d bytes returned; only its headers are attached.", d.Size, d.ReturnLimit)
	case len(d.Headers) > 0:
		intro += " The headers of your message are attached."
	}
	para(intro)
	b.WriteString("\r\n")
	orig := d.Headers
	if len(d.Full) > 0 {
		orig = d.Full
	}
	field("Subject", originalSubject(orig))
	field("Queue ID", smtpreply.Sanitize(d.QueueID))
	if !d.Arrival.IsZero() {
		field("Received", d.Arrival.Format(time.RFC1123Z))
	}
	if d.Size > 0 {
		field("Size", fmt.Sprintf("%d bytes", d.Size))
	}
	for _, r := range d.Recipients {
		b.WriteString("\r\n")
		para("<" + address(r.Final) + ">: " + r.Action.describe())
		st := r.status()
		failing := r.Action == ActionFailed || r.Action == ActionDelayed
		if failing {
			// The line `relayq explain` prints first.
			field("Status", explain.Summary(st))
		} else {
			field("Status", st.String())
		}
		field("Remote host", smtpreply.Sanitize(r.RemoteMTA))
		field("Reply", diagnostic(r.Diagnostic))
		if failing {
			field("Tried", tried(r.Attempts, d.Arrival, r.LastAttempt))
		}
		if r.Action == ActionDelayed && !r.WillRetryUntil.IsZero() {
			field("Retry until", r.WillRetryUntil.Format(time.RFC1123Z))
		}
		if failing {
			field("What to do", explain.Hint(st))
		}
	}
	return b.String()
}

// tried says how often and over how long delivery was tried: "once",
// "12 times over 4 days 23 hours".
func tried(attempts int, arrival, last time.Time) string {
	var s string
	switch {
	case attempts <= 0:
		return ""
	case attempts == 1:
		s = "once"
	default:
		s = fmt.Sprintf("%d times", attempts)
	}
	if !arrival.IsZero() && !last.IsZero() && last.Sub(arrival) >= time.Minute {
		s += " over " + humanDuration(last.Sub(arrival))
	}
	return s
}

// humanDuration writes d with its two largest units: "4 days 23 hours",
// "2 hours 5 minutes", "35 minutes", "12 seconds".
func humanDuration(d time.Duration) string {
	if d < time.Minute {
		return plural(int64(d.Round(time.Second)/time.Second), "second")
	}
	m := int64(d.Round(time.Minute) / time.Minute)
	days, hours, mins := m/(24*60), m/60%24, m%60
	var parts []string
	add := func(n int64, unit string) {
		if n > 0 {
			parts = append(parts, plural(n, unit))
		}
	}
	switch {
	case days > 0:
		add(days, "day")
		add(hours, "hour")
	case hours > 0:
		add(hours, "hour")
		add(mins, "minute")
	default:
		add(mins, "minute")
	}
	return strings.Join(parts, " ")
}

func plural(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// maxSubject bounds the original Subject shown in a report.
const maxSubject = 200

// originalSubject returns the Subject of a header section, RFC 2047 encoded
// words decoded, sanitised (an encoded CR or LF becomes a space) and cut to
// maxSubject bytes; "" if there is none.
func originalSubject(h []byte) string {
	var raw string
	found := false
	for line := range bytes.Lines(h) {
		l := strings.TrimRight(string(line), "\r\n")
		switch {
		case l == "":
			return finishSubject(raw, found)
		case found && (l[0] == ' ' || l[0] == '\t'):
			raw += l // RFC 5322 §2.2.3: unfolding removes only the CRLF
		case found:
			return finishSubject(raw, found)
		case len(l) > 8 && strings.EqualFold(l[:8], "subject:"):
			raw, found = l[8:], true
		}
	}
	return finishSubject(raw, found)
}

func finishSubject(raw string, found bool) string {
	if !found {
		return ""
	}
	dec := new(mime.WordDecoder)
	if s, err := dec.DecodeHeader(raw); err == nil {
		raw = s
	}
	s := smtpreply.Sanitize(raw)
	if len(s) > maxSubject {
		s = smtpreply.Truncate(s, maxSubject-3) + "..."
	}
	return s
}

func (d *Report) statusPart() string {
	var b strings.Builder
	h := func(name, value string) { b.WriteString(foldHeader(name, value)) }
	// RFC 3464 §2.2: per-message fields.
	h("Reporting-MTA", "dns; "+asciiOnly(smtpreply.Sanitize(d.ReportingMTA)))
	if e := smtpreply.Sanitize(d.EnvID); e != "" {
		h("Original-Envelope-Id", asciiOnly(e))
	}
	if !d.Arrival.IsZero() {
		h("Arrival-Date", d.Arrival.Format(time.RFC1123Z))
	}
	// RFC 3464 §2.3: one block per recipient, each after a blank line.
	for _, r := range d.Recipients {
		b.WriteString("\r\n")
		if o := smtpreply.Sanitize(r.Original); o != "" {
			if !strings.Contains(o, ";") {
				o = "rfc822;" + o
			}
			h("Original-Recipient", asciiOnly(o))
		}
		h("Final-Recipient", typedAddress(address(r.Final)))
		h("Action", string(r.Action))
		h("Status", r.status().String())
		if m := smtpreply.Sanitize(r.RemoteMTA); m != "" {
			h("Remote-MTA", "dns; "+asciiOnly(m))
		}
		if diag := diagnostic(r.Diagnostic); diag != "" {
			h("Diagnostic-Code", "smtp; "+asciiOnly(diag))
		}
		if !r.LastAttempt.IsZero() {
			h("Last-Attempt-Date", r.LastAttempt.Format(time.RFC1123Z))
		}
		if r.Action == ActionDelayed && !r.WillRetryUntil.IsZero() {
			h("Will-Retry-Until", r.WillRetryUntil.Format(time.RFC1123Z))
		}
	}
	return b.String()
}

// boundary returns d.Boundary or one derived from MessageID, checked against
// every part: a delimiter line inside a part would cut the report short.
func (d *Report) boundary(parts ...string) (string, error) {
	clashes := func(bd string) bool {
		for _, s := range parts {
			if strings.HasPrefix(s, "--"+bd) || strings.Contains(s, "\n--"+bd) {
				return true
			}
		}
		return false
	}
	if d.Boundary != "" {
		// SetBoundary checks RFC 2046 §5.1.1: 1-70 bchars, no final space.
		if err := multipart.NewWriter(io.Discard).SetBoundary(d.Boundary); err != nil {
			return "", fmt.Errorf("dsn: invalid MIME boundary %q", d.Boundary)
		}
		if clashes(d.Boundary) {
			return "", fmt.Errorf("dsn: MIME boundary %q occurs in the content", d.Boundary)
		}
		return d.Boundary, nil
	}
	for i := range 8 {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d", d.MessageID, i))
		bd := fmt.Sprintf("=_relayq_%x", sum[:12])
		if !clashes(bd) {
			return bd, nil
		}
	}
	return "", errors.New("dsn: no MIME boundary free of the content")
}

// OriginalHeaders reads the header section of a message (up to and including
// the blank line, or max bytes, whichever comes first, cut at a line
// boundary) from r; it normalises line endings to CRLF. It reads at most
// max+1 bytes from r.
func OriginalHeaders(r io.Reader, max int) ([]byte, error) {
	if max <= 0 {
		return nil, nil
	}
	lr := &io.LimitedReader{R: r, N: int64(max) + 1}
	br := bufio.NewReader(lr)
	var out []byte
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, err
		}
		// A last line without LF is whole only if r itself ended there,
		// not the limit.
		whole := bytes.HasSuffix(line, []byte("\n")) || (err == io.EOF && lr.N > 0)
		if len(line) == 0 || !whole {
			return out, nil
		}
		text := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		text = bytes.ReplaceAll(text, []byte("\r"), nil) // a bare CR ends no line
		if len(out)+len(text)+2 > max {
			return out, nil
		}
		out = append(append(out, text...), '\r', '\n')
		if len(text) == 0 || err == io.EOF {
			return out, nil
		}
	}
}

// normalizeLines makes every line end in CRLF, drops bare CRs and NULs, and
// breaks lines longer than maxLine (as a header fold, a space after CRLF).
func normalizeLines(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	var out []byte
	for line := range bytes.Lines(b) {
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		line = bytes.ReplaceAll(bytes.ReplaceAll(line, []byte("\r"), nil), []byte{0}, nil)
		for len(line) > maxLine {
			cut := runeCut(string(line), maxLine)
			out = append(append(out, line[:cut]...), '\r', '\n')
			line = append([]byte(" "), line[cut:]...)
		}
		out = append(append(out, line...), '\r', '\n')
	}
	return out
}

// foldHeader formats "Name: value\r\n", folding before a space when a line
// would pass 78 characters (RFC 5322 §2.2.3) and breaking a single word only
// where it would pass 998.
// Neither mime nor net/textproto writes folded header fields (textproto's
// MIMEHeader, which multipart.Writer writes for the parts, never folds),
// and the report's own fields need it: the Content-Type with its boundary
// passes 78 characters.
func foldHeader(name, value string) string {
	var b strings.Builder
	line := name + ":"
	rest := " " + value
	for rest != "" {
		// The next token is its leading spaces and one word.
		i := len(rest) - len(strings.TrimLeft(rest, " "))
		j := strings.IndexByte(rest[i:], ' ')
		if j < 0 {
			j = len(rest)
		} else {
			j += i
		}
		tok := rest[:j]
		rest = rest[j:]
		if i > 0 && len(line)+len(tok) > foldAt && line != name+":" {
			b.WriteString(line + "\r\n")
			line = "" // the token's own space starts the continuation line
		}
		line += tok
		for len(line) > maxLine {
			cut := runeCut(line, maxLine)
			b.WriteString(line[:cut] + "\r\n")
			line = " " + line[cut:]
		}
	}
	b.WriteString(line + "\r\n")
	return b.String()
}

// wrap splits text into lines of at most width bytes at spaces; a word
// longer than width is broken.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		for len(w) > width {
			if line != "" {
				lines, line = append(lines, line), ""
			}
			cut := runeCut(w, width)
			lines, w = append(lines, w[:cut]), w[cut:]
		}
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= width:
			line += " " + w
		default:
			lines, line = append(lines, line), w
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

func diagnostic(s string) string { return smtpreply.Truncate(smtpreply.Sanitize(s), maxDiagnostic) }

// runeCut returns the largest index <= n (and > 0) that does not split a
// UTF-8 sequence.
func runeCut(s string, n int) int { return len(smtpreply.Truncate(s, n)) }

// address sanitises an address and drops surrounding angle brackets.
func address(s string) string {
	return strings.TrimSpace(strings.Trim(smtpreply.Sanitize(s), "<>"))
}

// typedAddress is an RFC 3464 §2.3.2 Final-Recipient value: "rfc822;" for
// ASCII addresses, RFC 6533 §3 "utf-8;" with \x{HEX} escapes otherwise, as
// message/delivery-status is ASCII.
func typedAddress(addr string) string {
	if isASCII(addr) {
		return "rfc822;" + addr
	}
	return "utf-8;" + asciiOnly(addr)
}

// asciiOnly writes each non-ASCII character as an RFC 6533
// EmbeddedUnicodeChar, \x{HEX}.
func asciiOnly(s string) string {
	if isASCII(s) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r < utf8.RuneSelf {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
