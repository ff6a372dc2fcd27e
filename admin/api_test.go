package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"relayq/pressure"
	"relayq/queue"
)

func TestListShowsDeferredMessagesWithTheirReasonAndExplanation(t *testing.T) {
	f := newFixture(t, nil)
	id := f.put("app@shop.invalid", 0, "a@dest.invalid", "b@dest.invalid")
	f.deferWith(id, "451 4.4.1 connection refused", 10*time.Minute)

	var list ListResponse
	f.getJSON("/api/queue", &list)
	if len(list.Messages) != 1 || list.Next != "" {
		t.Fatalf("list = %+v", list)
	}
	m := list.Messages[0]
	if m.ID != string(id) || m.From != "app@shop.invalid" || m.State != "deferred" || m.Size == 0 ||
		m.Created.IsZero() || !m.NextAttempt.Equal(f.clock().Add(10*time.Minute)) {
		t.Fatalf("message = %+v", m)
	}
	if len(m.Recipients) != 2 || m.Recipients[0].Address != "a@dest.invalid" || m.Recipients[0].State != "pending" ||
		m.Recipients[0].Attempts != 1 || m.Recipients[0].LastReply != "451 4.4.1 connection refused" {
		t.Fatalf("recipients = %+v", m.Recipients)
	}
	if m.LastReply != "451 4.4.1 connection refused" || !strings.HasPrefix(m.Explain, "4.4.1 ") || m.Hint == "" {
		t.Fatalf("why: last_reply %q explain %q hint %q", m.LastReply, m.Explain, m.Hint)
	}

	var one Message
	f.getJSON("/api/queue/"+string(id), &one)
	if one.ID != m.ID || one.Recipients[1].Explain != m.Explain || one.Recipients[1].LastHost != "mx.dest.invalid:25" {
		t.Fatalf("show = %+v", one)
	}
	// The JSON names the CLI and scripts rely on.
	_, raw := f.do("GET", "/api/queue/"+string(id), nil)
	for _, key := range []string{`"id"`, `"from"`, `"recipients"`, `"address"`, `"state"`, `"attempts"`, `"last_reply"`, `"size"`, `"created"`, `"next_attempt"`, `"explain"`} {
		if !strings.Contains(string(raw), key) {
			t.Errorf("no %s in %s", key, raw)
		}
	}
}

func TestListFiltersAndPages(t *testing.T) {
	f := newFixture(t, nil)
	var dest []queue.ID
	for i := 0; i < 5; i++ {
		dest = append(dest, f.put("app@shop.invalid", 0, fmt.Sprintf("u%d@dest.invalid", i)))
		f.put("cron@ops.invalid", time.Hour, "x@other.invalid")
	}
	var got []string
	after := ""
	for page := 0; page < 10; page++ {
		var list ListResponse
		f.getJSON("/api/queue?domain=dest.invalid&limit=2&after="+after, &list)
		for _, m := range list.Messages {
			got = append(got, m.ID)
		}
		if list.Next == "" {
			break
		}
		after = list.Next
	}
	if fmt.Sprint(got) != fmt.Sprint(dest) {
		t.Fatalf("paged by domain = %v, want %v", got, dest)
	}
	var list ListResponse
	f.getJSON("/api/queue?sender=cron@ops.invalid&state=deferred", &list)
	if len(list.Messages) != 5 {
		t.Fatalf("sender+deferred: %d messages, want 5", len(list.Messages))
	}
	f.advance(2 * time.Hour)
	f.getJSON("/api/queue?older_than=1h&state=active&domain=other.invalid", &list)
	if len(list.Messages) != 5 {
		t.Fatalf("older_than+active+domain: %d messages, want 5", len(list.Messages))
	}
	for _, bad := range []string{"state=stuck", "older_than=soon", "limit=-1", "after=zzz"} {
		if code, body := f.do("GET", "/api/queue?"+bad, nil); code != http.StatusBadRequest {
			t.Errorf("GET /api/queue?%s = %d %s, want 400", bad, code, body)
		}
	}
}

func TestActionsOnOneMessage(t *testing.T) {
	f := newFixture(t, nil)
	id := f.put("app@shop.invalid", 0, "a@dest.invalid")
	f.deferWith(id, "451 4.4.1 connection refused", 10*time.Minute)
	path := "/api/queue/" + string(id) + "/"
	state := func() string {
		var m Message
		f.getJSON("/api/queue/"+string(id), &m)
		return m.State
	}

	if code, body := f.do("POST", path+"hold", nil); code != http.StatusOK {
		t.Fatalf("hold = %d %s", code, body)
	}
	if s := state(); s != "held" {
		t.Fatalf("state after hold = %s", s)
	}
	if code, body := f.do("POST", path+"flush", nil); code != http.StatusConflict || !strings.Contains(string(body), "held") {
		t.Fatalf("flush of a held message = %d %s, want 409", code, body)
	}
	if code, _ := f.do("POST", path+"release", nil); code != http.StatusOK {
		t.Fatalf("release = %d", code)
	}
	if s := state(); s != "active" {
		t.Fatalf("state after release = %s", s)
	}
	f.deferWith(id, "451 4.4.1 connection refused", 10*time.Minute)
	if code, _ := f.do("POST", path+"flush", nil); code != http.StatusOK {
		t.Fatalf("flush = %d", code)
	}
	if s := state(); s != "active" {
		t.Fatalf("state after flush = %s", s)
	}
	if code, _ := f.do("POST", path+"bounce", nil); code != http.StatusOK {
		t.Fatalf("bounce = %d", code)
	}
	if m, _ := f.store.Get(id); !m.BounceRequested {
		t.Fatal("bounce did not mark the message")
	}
	if code, body := f.do("POST", path+"explode", nil); code != http.StatusNotFound {
		t.Fatalf("unknown action = %d %s", code, body)
	}
	if code, _ := f.do("POST", path+"delete", nil); code != http.StatusOK {
		t.Fatalf("delete = %d", code)
	}
	if code, _ := f.do("GET", "/api/queue/"+string(id), nil); code != http.StatusNotFound {
		t.Fatalf("show after delete = %d, want 404", code)
	}
	if code, _ := f.do("POST", path+"hold", nil); code != http.StatusNotFound {
		t.Fatalf("hold after delete = %d, want 404", code)
	}
	if f.store.Messages() != 0 || f.store.Bytes() != 0 {
		t.Fatalf("queue after delete: %d messages, %d bytes", f.store.Messages(), f.store.Bytes())
	}
}

func TestActionOnFilterNeedsAFilterOrAll(t *testing.T) {
	f := newFixture(t, nil)
	var dest []queue.ID
	for i := 0; i < 3; i++ {
		dest = append(dest, f.put("app@shop.invalid", time.Hour, "a@dest.invalid"))
		f.put("app@shop.invalid", time.Hour, "b@other.invalid")
	}
	if code, body := f.do("POST", "/api/queue/hold", nil); code != http.StatusBadRequest || !strings.Contains(string(body), "all=true") {
		t.Fatalf("hold without filter = %d %s, want 400", code, body)
	}
	code, body := f.do("POST", "/api/queue/hold?domain=dest.invalid", nil)
	var res ActionResult
	if err := json.Unmarshal(body, &res); code != http.StatusOK || err != nil {
		t.Fatalf("hold by domain = %d %s", code, body)
	}
	if res.Matched != 3 || res.Done != 3 || res.Action != "hold" {
		t.Fatalf("hold by domain = %+v", res)
	}
	var held ListResponse
	f.getJSON("/api/queue?state=held", &held)
	if len(held.Messages) != 3 || held.Messages[0].ID != string(dest[0]) {
		t.Fatalf("held = %+v", held.Messages)
	}
	// flush --all passes over the held ones.
	_, body = f.do("POST", "/api/queue/flush?all=true", nil)
	if err := json.Unmarshal(body, &res); err != nil || res.Matched != 6 || res.Done != 3 || res.Skipped != 3 {
		t.Fatalf("flush all = %s", body)
	}
	_, body = f.do("POST", "/api/queue/release?id="+string(dest[0])+"&id="+string(dest[1]), nil)
	if err := json.Unmarshal(body, &res); err != nil || res.Done != 2 {
		t.Fatalf("release by ids = %s", body)
	}
	_, body = f.do("POST", "/api/queue/delete?state=held", nil)
	if err := json.Unmarshal(body, &res); err != nil || res.Done != 1 || f.store.Messages() != 5 {
		t.Fatalf("delete held = %s; %d left", body, f.store.Messages())
	}
}

func TestActionOnFilterWalksPastOnePage(t *testing.T) {
	f := newFixture(t, nil)
	const n = bulkPage + 37
	for i := 0; i < n; i++ {
		f.put("app@shop.invalid", time.Hour, "a@dest.invalid")
	}
	_, body := f.do("POST", "/api/queue/flush?domain=dest.invalid", nil)
	var res ActionResult
	if err := json.Unmarshal(body, &res); err != nil || res.Done != n {
		t.Fatalf("flush = %s, want %d done", body, n)
	}
	var list ListResponse
	f.getJSON("/api/queue?state=deferred&limit=1", &list)
	if len(list.Messages) != 0 {
		t.Fatalf("still deferred after flush: %v", list.Messages[0].ID)
	}
}

func TestStatusReportsPressureQueueDestinationsAndEvents(t *testing.T) {
	f := newFixture(t, nil)
	id := f.put("app@shop.invalid", 0, "a@dest.invalid")
	f.dests.list = []Destination{{Name: "smarthost:127.0.0.1:2526", Cap: 3, ConfiguredCap: 20, CapReason: "421 4.3.2 too many connections", Open: 2, State: "ok"}}
	f.srv.Event(Event{Time: f.clock(), Kind: EventDeferred, ID: string(id), Rcpt: "a@dest.invalid", Reply: "451 4.4.1 connection refused"})
	var st Status
	f.getJSON("/api/status", &st)
	if st.Queue.Messages != 1 || st.Queue.Bytes == 0 || st.Queue.OldestID != string(id) {
		t.Fatalf("queue = %+v", st.Queue)
	}
	if st.BackPressure == nil || st.BackPressure.Level != pressure.Normal || len(st.BackPressure.Resources) != 3 {
		t.Fatalf("back pressure = %+v", st.BackPressure)
	}
	if len(st.Destinations) != 1 || st.Destinations[0].Cap != 3 || st.Destinations[0].CapReason == "" {
		t.Fatalf("destinations = %+v", st.Destinations)
	}
	if len(st.Recent) != 1 || !strings.HasPrefix(st.Recent[0].Explain, "4.4.1 ") {
		t.Fatalf("recent = %+v", st.Recent)
	}
}

func TestReloadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reload func() error
		want   int
	}{
		{"ok", func() error { return nil }, http.StatusOK},
		{"bad file", func() error { return fmt.Errorf("limits.max_recipients: must be > 0") }, http.StatusUnprocessableEntity},
		{"not wired", nil, http.StatusNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *Options) { o.Reload = tc.reload })
			if code, body := f.do("POST", "/api/reload", nil); code != tc.want {
				t.Fatalf("reload = %d %s, want %d", code, body, tc.want)
			}
		})
	}
}

func TestMessageIDFilterSubjectAndBody(t *testing.T) {
	f := newFixture(t, nil)
	f.put("app@shop.invalid", 0, "a@dest.invalid") // no Message-ID
	const body = "Message-ID: <r.7@shop.invalid>\r\nSubject: Receipt\r\n\r\nline 1\r\n.dot\r\n"
	env := &queue.Envelope{From: "app@shop.invalid", Recipients: []queue.Recipient{{Addr: "b@dest.invalid"}},
		MessageID: "<r.7@shop.invalid>", Subject: "Receipt"}
	id := f.store.NewID()
	if err := f.store.Put(context.Background(), id, env, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	f.put("app@shop.invalid", 0, "c@dest.invalid")

	for _, q := range []string{"<r.7@shop.invalid>", "r.7@shop.invalid"} {
		var list ListResponse
		f.getJSON("/api/queue?message_id="+url.QueryEscape(q), &list)
		if len(list.Messages) != 1 || list.Messages[0].ID != string(id) ||
			list.Messages[0].MessageID != "<r.7@shop.invalid>" || list.Messages[0].Subject != "Receipt" {
			t.Fatalf("message_id=%s: %+v", q, list.Messages)
		}
	}
	var none ListResponse
	f.getJSON("/api/queue?message_id=r.7", &none)
	if len(none.Messages) != 0 {
		t.Fatalf("message_id=r.7 selects %+v", none.Messages)
	}
	// A bulk action takes the filter too.
	code, raw := f.do("POST", "/api/queue/hold?message_id=r.7@shop.invalid", nil)
	var res ActionResult
	if err := json.Unmarshal(raw, &res); code != http.StatusOK || err != nil || res.Matched != 1 || res.Done != 1 {
		t.Fatalf("hold by message_id = %d %s", code, raw)
	}

	code, got := f.do("GET", "/api/queue/"+string(id)+"/body", nil)
	if code != http.StatusOK || string(got) != body {
		t.Fatalf("body = %d %q, want %q", code, got, body)
	}
	if code, _ := f.do("GET", "/api/queue/0123456789abcdef01234567/body", nil); code != http.StatusNotFound {
		t.Fatalf("body of an unknown message = %d", code)
	}
}
