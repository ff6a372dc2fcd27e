package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/admin"
	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
	"relayq/queue"
)

// nightly is the message TestFindAMessageByItsMessageID sends: a folded
// Subject with an RFC 2047 word, and a Message-ID.
const nightly = "From: <app@shop.invalid>\r\nTo: <ok@dest.invalid>\r\n" +
	"Subject: Nightly report\r\n =?UTF-8?Q?f=C3=BCr_M=C3=A4rz?=\r\n" +
	"Message-ID: <nightly.42@shop.invalid>\r\n\r\nAll jobs ran.\r\n"

const (
	nightlyID      = "<nightly.42@shop.invalid>"
	nightlySubject = "Nightly report für März"
)

// sendRaw sends msg as is, from app@shop.invalid to rcpts, and returns
// the queue ID of relayq's reply.
func sendRaw(t *testing.T, addr string, msg string, rcpts ...string) queue.ID {
	t.Helper()
	c := dialSMTP(t, addr)
	defer c.Close()
	if err := c.Hello("client.test.invalid"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@shop.invalid", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "queued as ")
	if !ok || !queue.ID(id).Valid() {
		t.Fatalf("reply %q names no queue ID", resp.StatusText)
	}
	c.Quit()
	return queue.ID(id)
}

// TestFindAMessageByItsMessageID takes a message with a folded Subject and
// a Message-ID through relayq over SMTP to a sink that takes one
// recipient, defers one and refuses one, and finds it again: on the
// received, delivered, deferred and bounced log lines, in queue list and
// show, through the API's message_id filter (and only it), among the
// status page's recent events, and with show --body as the exact bytes
// queued. A message without a header section goes through as well.
func TestFindAMessageByItsMessageID(t *testing.T) {
	snk := startSink(t, sink.Options{OnRcpt: func(to string) error {
		switch to {
		case "later@dest.invalid":
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try later"}
		case "gone@dest.invalid":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	cfg := testConfig(t, snk.Addr())
	cfg.Retry.MinBackoff = config.Duration(10 * time.Minute)
	cfg.Retry.MaxBackoff = config.Duration(time.Hour)
	logs := &logBuffer{}
	in, err := server.Start(cfg, zerolog.New(logs), serverOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop() })

	id := sendRaw(t, in.Addrs()[0], nightly, "ok@dest.invalid", "later@dest.invalid", "gone@dest.invalid")
	bare := sendRaw(t, in.Addrs()[0], "no header section, just a line\r\n", "later@dest.invalid")

	lines := func() map[string]map[string]any { // message → its line about id
		out := map[string]map[string]any{}
		for l := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["id"] == string(id) {
				out[m["message"].(string)] = m
			}
		}
		return out
	}
	waitFor(t, 15*time.Second, func() bool {
		l := lines()
		return l["delivered"] != nil && l["deferred"] != nil && l["bounced"] != nil
	}, "the delivered, deferred and bounced lines")
	for _, msg := range []string{"received", "delivered", "deferred", "bounced"} {
		l := lines()[msg]
		if l["message_id"] != nightlyID || l["subject"] != nightlySubject {
			t.Errorf("%s line: message_id %q, subject %q", msg, l["message_id"], l["subject"])
		}
	}

	out, errOut, code := runOps(t, in, "queue", "list")
	if code != 0 || !strings.Contains(out, "Message-ID: "+nightlyID+"  Subject: "+nightlySubject) ||
		!strings.Contains(out, string(bare)) {
		t.Fatalf("queue list: exit %d %s\n%s", code, errOut, out)
	}
	out, _, code = runOps(t, in, "queue", "show", string(id))
	if code != 0 || !strings.Contains(out, "Message-ID:   "+nightlyID+"\n") || !strings.Contains(out, "Subject:      "+nightlySubject+"\n") {
		t.Fatalf("queue show: exit %d\n%s", code, out)
	}
	if out, _, _ := runOps(t, in, "queue", "show", string(bare)); strings.Contains(out, "Message-ID:") || strings.Contains(out, "Subject:") {
		t.Fatalf("queue show of a message without headers:\n%s", out)
	}

	for _, q := range []string{nightlyID, strings.Trim(nightlyID, "<>")} {
		var list admin.ListResponse
		api(t, in.AdminAddr(), "/api/queue?message_id="+url.QueryEscape(q), &list)
		if len(list.Messages) != 1 || list.Messages[0].ID != string(id) || list.Messages[0].Subject != nightlySubject {
			t.Fatalf("message_id=%s selects %+v", q, list.Messages)
		}
		out, _, code := runOps(t, in, "queue", "list", "--message-id", q)
		if code != 0 || !strings.Contains(out, string(id)) || strings.Contains(out, string(bare)) || !strings.Contains(out, "in 1 message") {
			t.Fatalf("queue list --message-id %s: exit %d\n%s", q, code, out)
		}
	}

	var st admin.Status
	api(t, in.AdminAddr(), "/api/status", &st)
	kinds := map[string]bool{}
	for _, e := range st.Recent {
		if e.ID == string(id) && e.MessageID == nightlyID && e.Subject == nightlySubject {
			kinds[e.Kind] = true
		}
	}
	if !kinds[admin.EventDeferred] || !kinds[admin.EventBounced] {
		t.Fatalf("recent events %+v", st.Recent)
	}
	if out, _, code := runOps(t, in, "status"); code != 0 || !strings.Contains(out, "      Message-ID: "+nightlyID+"  Subject: "+nightlySubject+"\n") {
		t.Fatalf("relayq status: exit %d\n%s", code, out)
	}

	body, err := in.Store().Body(id)
	if err != nil {
		t.Fatal(err)
	}
	queued, err := io.ReadAll(body)
	body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(queued, []byte("Received: from client.test.invalid")) || !bytes.HasSuffix(queued, []byte(nightly)) {
		t.Fatalf("queued %q", queued)
	}
	out, _, code = runOps(t, in, "queue", "show", "--body", string(id))
	if code != 0 || out != string(queued) {
		t.Fatalf("show --body: exit %d\n%q\nwant the bytes queued\n%q", code, out, queued)
	}

	// The actions take the filter too.
	out, _, code = runOps(t, in, "queue", "hold", "--message-id", nightlyID)
	if m, err := in.Store().Get(id); code != 0 || out != "held 1 message\n" || err != nil || !m.Held {
		t.Fatalf("queue hold --message-id: exit %d %q", code, out)
	}
	if m, err := in.Store().Get(bare); err != nil || m.Held {
		t.Fatalf("the message without headers was held too: %v", err)
	}
}
