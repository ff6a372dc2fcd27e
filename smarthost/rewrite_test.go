package smarthost

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
	"github.com/rs/zerolog"

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

// A header section longer than a route rewrites (64 KiB) goes out as it
// was queued, From: and all, with its stored size, and the log says so
// (README: "a message whose header section is longer goes out with its
// From: as it is"); one just within it is rewritten.
func TestRewriteLeavesAnOverlongHeaderSectionAsItIs(t *testing.T) {
	logs := &logBuffer{}
	h := pausedHarness(t, nil, &Static{Destination: "unused"}, func(w *Worker) { w.Log = zerolog.New(logs) })
	h.worker.init()
	rw := Rewrite{Sender: "relay@example.net", From: config.RewriteFromReplyTo}
	message := func(headerLen int) string {
		var b strings.Builder
		b.WriteString("From: Alice <alice@sales.example>\r\n")
		for b.Len() < headerLen-len("X-Pad: \r\n\r\n")-70 {
			b.WriteString("X-Filler: " + strings.Repeat("x", 60) + "\r\n")
		}
		b.WriteString("X-Pad: " + strings.Repeat("y", headerLen-b.Len()-len("X-Pad: \r\n\r\n")) + "\r\n\r\nbody\r\n")
		return b.String()
	}
	for _, c := range []struct {
		headerLen int
		rewritten bool
	}{{maxRewriteHeader, true}, {maxRewriteHeader + 1, false}} {
		data := message(c.headerLen)
		if end := headerEnd([]byte(data)); end != c.headerLen {
			t.Fatalf("test message's header section is %d bytes, want %d", end, c.headerLen)
		}
		id := h.putMessage("alice@sales.example", data, "x@dst.example")
		m, err := h.store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		r, size, err := h.worker.outgoing(context.Background(), m, rw)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || int64(len(got)) != size {
			t.Fatalf("header of %d bytes: read %d bytes (%v), outgoing said %d", c.headerLen, len(got), err, size)
		}
		if rewritten := strings.HasPrefix(string(got), `From: "Alice" <relay@example.net>`+"\r\n"); rewritten != c.rewritten {
			t.Errorf("header of %d bytes: rewritten %v, want %v", c.headerLen, rewritten, c.rewritten)
		}
		if !c.rewritten && string(got) != data {
			t.Errorf("header of %d bytes: not sent as queued", c.headerLen)
		}
	}
	if n := strings.Count(logs.String(), "too long to rewrite"); n != 1 {
		t.Errorf("%d log lines say a header section was too long to rewrite, want 1:\n%s", n, logs.String())
	}
}
