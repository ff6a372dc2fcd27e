package smarthost

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"

	"relayq/config"
)

// FuzzRewriteHeader: whatever header section go-message reads, the
// rewritten one reads back with exactly one From: field for the rewritten
// address, no DKIM-Signature, at most one Reply-To: more than it had, and
// every other field byte for byte in its order.
func FuzzRewriteHeader(f *testing.F) {
	for _, s := range []string{
		"From: \"Alice Example\" <alice@sales.example>\r\nTo: b@x.example\r\nSubject: hi\r\n\r\n",
		"Received: by relay\r\nDKIM-Signature: v=1; d=sales.example;\r\n h=from:to; b=abc\r\nFrom: a@b.example\r\nReply-To: c@d.example\r\n\r\n",
		"Subject: no author\r\n\r\n",
		"From: =?utf-8?q?Zo=C3=AB?= <zoe@x.example>, bob@x.example\r\nFrom: second@x.example\r\nX-A: 1\r\n\r\n",
		"from:<lower@x.example>\r\nX-Folded: a\r\n\tb\r\n\r\n",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, head string, replyTo bool) {
		h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			return
		}
		rw := Rewrite{Sender: "relay@example.net", From: config.RewriteFromReplace}
		if replyTo {
			rw.From = config.RewriteFromReplyTo
		}
		out := rewriteHeader(h, rw)
		back, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(out)))
		if err != nil || !bytes.HasSuffix(out, []byte("\r\n\r\n")) {
			t.Fatalf("rewritten header does not read back (%v):\n%q", err, out)
		}
		froms := back.Values("From")
		if len(froms) != 1 || !strings.Contains(froms[0], "<relay@example.net>") {
			t.Fatalf("From: fields %q in\n%q", froms, out)
		}
		if back.Has("Dkim-Signature") {
			t.Fatalf("a DKIM-Signature is left in\n%q", out)
		}
		if n, m := len(back.Values("Reply-To")), len(h.Values("Reply-To")); n < m || n > m+1 {
			t.Fatalf("%d Reply-To: fields from %d", n, m)
		}
		if got, want := otherFields(t, back), otherFields(t, h); got != want {
			t.Fatalf("other fields changed:\n%q\nwant\n%q", got, want)
		}
	})
}

// otherFields is the raw fields of h but From, Reply-To and
// DKIM-Signature, in order.
func otherFields(t *testing.T, h textproto.Header) string {
	var b strings.Builder
	for f := h.Fields(); f.Next(); {
		switch f.Key() {
		case "From", "Reply-To", "Dkim-Signature":
			continue
		}
		raw, err := f.Raw()
		if err != nil {
			t.Fatal(err)
		}
		b.Write(raw)
	}
	return b.String()
}
