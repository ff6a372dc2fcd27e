package smarthost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/internal/sink"
	"relayq/internal/smtpreply"
	"relayq/queue"
	"relayq/retry"
)

// harness is a real queue, a real sink and a worker delivering from one to
// the other through a static smart-host route.
type harness struct {
	t      *testing.T
	dir    string // the queue's directory, for a restart
	store  *queue.Store
	rec    *recordingQueue
	sink   *sink.Server
	worker *Worker
	stop   func()
	start  func() // runs the worker; startHarness has called it
}

func newHarness(t *testing.T, opts sink.Options, tune func(*Worker)) *harness {
	t.Helper()
	dst, err := sink.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	router := &Static{Destination: "sink", Targets: []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}}
	return startHarness(t, dst, router, tune)
}

// startHarness runs a worker routing by router over a fresh queue; dst, if
// not nil, is closed with it. The worker stores learned destination state
// in the queue.
func startHarness(t *testing.T, dst *sink.Server, router Router, tune func(*Worker)) *harness {
	t.Helper()
	h := pausedHarness(t, dst, router, tune)
	h.start()
	return h
}

// pausedHarness is startHarness with the worker not yet running: a test
// queues a backlog first, then calls h.start.
func pausedHarness(t *testing.T, dst *sink.Server, router Router, tune func(*Worker)) *harness {
	t.Helper()
	dir := t.TempDir()
	store, err := queue.Open(dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingQueue{Store: store, news: map[queue.ID]int{}, gets: map[queue.ID]int{}}
	w := testWorker(t, rec, store, router, tune)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	h := &harness{t: t, dir: dir, store: store, rec: rec, sink: dst, worker: w}
	started := false
	h.start = func() {
		started = true
		go func() { defer close(done); w.Run(ctx) }()
	}
	h.stop = sync.OnceFunc(func() {
		cancel()
		if started {
			<-done
		}
		if dst != nil {
			dst.Close()
		}
		store.Close()
	})
	t.Cleanup(h.stop)
	return h
}

// testWorker is a worker over q (whose store is store) with short
// backoffs, tuned by tune if set.
func testWorker(t *testing.T, q Queue, store *queue.Store, router Router, tune func(*Worker)) *Worker {
	w := &Worker{
		Queue:    q,
		State:    store,
		Router:   router,
		Hostname: "relay.test.invalid",
		Backoff:  retry.Backoff{Min: 20 * time.Millisecond, Max: 50 * time.Millisecond},
		Grace:    5 * time.Second,
		Log:      zerolog.New(zerolog.NewTestWriter(t)),
	}
	if tune != nil {
		tune(w)
	}
	return w
}

// recordingQueue counts the messages each Update enqueued (NDRs) per
// original message, before they are committed, and the Gets of each.
type recordingQueue struct {
	*queue.Store
	mu   sync.Mutex
	news map[queue.ID]int
	gets map[queue.ID]int
}

func (q *recordingQueue) Get(id queue.ID) (*queue.Message, error) {
	q.mu.Lock()
	q.gets[id]++
	q.mu.Unlock()
	return q.Store.Get(id)
}

// reads returns how many times the worker read id (Get).
func (h *harness) reads(id queue.ID) int {
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	return h.rec.gets[id]
}

func (q *recordingQueue) Update(ctx context.Context, m *queue.Message, news ...queue.NewMessage) error {
	q.mu.Lock()
	q.news[m.ID] += len(news)
	q.mu.Unlock()
	return q.Store.Update(ctx, m, news...)
}

// ndrs returns how many messages the worker enqueued because of id.
func (h *harness) ndrs(id queue.ID) int {
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	return h.rec.news[id]
}

// put queues a message from `from` to rcpts and returns its ID.
func (h *harness) put(from string, rcpts ...string) queue.ID {
	h.t.Helper()
	env := &queue.Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id := h.store.NewID()
	body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: hello\r\nMessage-ID: <%s@test.invalid>\r\n\r\nbody\r\n", from, rcpts[0], id)
	if err := h.store.Put(context.Background(), id, env, strings.NewReader(body)); err != nil {
		h.t.Fatal(err)
	}
	return id
}

// waitSink waits until the sink holds n messages.
func (h *harness) waitSink(n int) []sink.Message {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.sink.Wait(ctx, n); err != nil {
		h.t.Fatalf("sink has %d messages, want %d: %v", h.sink.Count(), n, err)
	}
	return h.sink.Messages()
}

// waitGone waits until the queue no longer holds id.
func (h *harness) waitGone(id queue.ID) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.store.Get(id); err == queue.ErrNotFound {
			return
		}
		if time.Now().After(deadline) {
			m, _ := h.store.Get(id)
			h.t.Fatalf("message %s still queued: %+v", id, m.Recipients)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitIdle waits until every open connection of the worker is idle, and
// one is: a delivery's commit comes before its connection goes back to the
// pool.
func (h *harness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		idle, busy := 0, 0
		for _, d := range h.worker.Destinations() {
			idle, busy = idle+d.Idle, busy+d.Open-d.Idle
		}
		if idle > 0 && busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no idle connection within 10 s: %+v", h.worker.Destinations())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTemporaryFailureIsRetriedThenDelivered(t *testing.T) {
	var tries atomic.Int32
	h := newHarness(t, sink.Options{OnRcpt: func(string) error {
		if tries.Add(1) <= 2 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}}, nil)
	id := h.put("a@src.invalid", "b@dst.invalid")
	msgs := h.waitSink(1)
	h.waitGone(id)
	if n := tries.Load(); n != 3 {
		t.Errorf("RCPT tried %d times, want 3 (two 451s, then accepted)", n)
	}
	if msgs[0].From != "a@src.invalid" || msgs[0].To[0] != "b@dst.invalid" {
		t.Errorf("delivered envelope %s → %v", msgs[0].From, msgs[0].To)
	}
}

// ndrReport is the parsed delivery-status part of an NDR.
type ndrReport struct {
	header      mail.Header
	perMessage  textproto.MIMEHeader
	recipients  []textproto.MIMEHeader
	origHeaders string
}

// parseNDR parses an RFC 3464 report with net/mail and mime/multipart.
func parseNDR(t *testing.T, data []byte) ndrReport {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	rep := ndrReport{header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch p.Header.Get("Content-Type") {
		case "message/delivery-status":
			tr := textproto.NewReader(bufio.NewReader(p))
			if rep.perMessage, err = tr.ReadMIMEHeader(); err != nil {
				t.Fatal(err)
			}
			for {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					rep.recipients = append(rep.recipients, h)
				}
				if err != nil {
					break
				}
			}
		case "text/rfc822-headers":
			b, _ := io.ReadAll(p)
			rep.origHeaders = string(b)
		}
	}
	if rep.perMessage == nil || len(rep.recipients) == 0 {
		t.Fatalf("no delivery-status fields in:\n%s", data)
	}
	return rep
}

func TestPermanentFailureSendsNDRToSender(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if strings.HasPrefix(to, "nobody@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}}, nil)
	id := h.put("sender@src.invalid", "nobody@dst.invalid", "someone@dst.invalid")
	msgs := h.waitSink(2) // the message to someone@, and the NDR
	h.waitGone(id)
	var ndr *sink.Message
	for i := range msgs {
		if msgs[i].From == "" {
			ndr = &msgs[i]
		}
	}
	if ndr == nil || len(ndr.To) != 1 || ndr.To[0] != "sender@src.invalid" {
		t.Fatalf("no NDR from <> to the sender among %d messages", len(msgs))
	}
	rep := parseNDR(t, ndr.Data)
	if len(rep.recipients) != 1 {
		t.Fatalf("NDR covers %d recipients, want 1", len(rep.recipients))
	}
	r := rep.recipients[0]
	for field, want := range map[string]string{
		"Action":          "failed",
		"Status":          "5.1.1",
		"Final-Recipient": "rfc822;nobody@dst.invalid",
	} {
		if got := strings.ReplaceAll(r.Get(field), " ", ""); got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	if !strings.Contains(r.Get("Diagnostic-Code"), "no such user") {
		t.Errorf("Diagnostic-Code %q lacks the remote's reply", r.Get("Diagnostic-Code"))
	}
	if rep.perMessage.Get("Reporting-MTA") == "" || !strings.Contains(rep.origHeaders, "Subject: hello") {
		t.Errorf("missing Reporting-MTA or original headers: %v / %q", rep.perMessage, rep.origHeaders)
	}
}

func TestExpiredMessageBouncesWith447(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if strings.HasPrefix(to, "slow@") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
		}
		return nil
	}}, func(w *Worker) { w.Lifetime = 300 * time.Millisecond })
	id := h.put("sender@src.invalid", "slow@dst.invalid")
	msgs := h.waitSink(1)
	h.waitGone(id)
	if msgs[0].From != "" {
		t.Fatalf("first message at the sink is from %q, want the NDR from <>", msgs[0].From)
	}
	r := parseNDR(t, msgs[0].Data).recipients[0]
	if r.Get("Action") != "failed" || r.Get("Status") != "4.4.7" {
		t.Errorf("Action %q Status %q, want failed 4.4.7", r.Get("Action"), r.Get("Status"))
	}
	if !strings.Contains(r.Get("Diagnostic-Code"), "mailbox busy") {
		t.Errorf("Diagnostic-Code %q should carry the last reply", r.Get("Diagnostic-Code"))
	}
}

func TestFailedBounceIsDroppedNotBounced(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}}, nil)
	bounce := h.put("", "gone@dst.invalid")
	normal := h.put("x@src.invalid", "gone@dst.invalid")
	h.waitGone(bounce)
	h.waitGone(normal)
	if n := h.ndrs(bounce); n != 0 {
		t.Errorf("the failed bounce gave rise to %d NDRs, want none", n)
	}
	if n := h.ndrs(normal); n != 1 {
		t.Errorf("the failed message gave rise to %d NDRs, want 1", n)
	}
}

func TestNotifyNeverSuppressesNDR(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}}, nil)
	env := &queue.Envelope{From: "a@src.invalid", Recipients: []queue.Recipient{
		{Addr: "never@dst.invalid", Notify: "NEVER"},
		{Addr: "success@dst.invalid", Notify: "SUCCESS"},
	}}
	id := h.store.NewID()
	if err := h.store.Put(context.Background(), id, env, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	h.waitGone(id)
	if n := h.ndrs(id); n != 0 {
		t.Fatalf("%d NDRs despite NOTIFY=NEVER / NOTIFY=SUCCESS", n)
	}
}

func TestRecipientsSplitWhenPeerLimitsThem(t *testing.T) {
	h := newHarness(t, sink.Options{MaxRecipients: 2}, nil)
	id := h.put("a@src.invalid", "r1@dst.invalid", "r2@dst.invalid", "r3@dst.invalid", "r4@dst.invalid", "r5@dst.invalid")
	msgs := h.waitSink(3)
	h.waitGone(id)
	got := map[string]int{}
	for _, m := range msgs {
		if m.From == "" {
			t.Fatalf("an NDR was sent: 4.5.3 is not a failure")
		}
		for _, r := range m.To {
			got[r]++
		}
	}
	if len(got) != 5 {
		t.Fatalf("recipients delivered: %v, want all 5 once", got)
	}
	for r, n := range got {
		if n != 1 {
			t.Errorf("%s got %d copies", r, n)
		}
	}
}

func TestConnectionsNeverExceedDestinationCap(t *testing.T) {
	h := newHarness(t, sink.Options{}, func(w *Worker) { w.MaxConnsPerDest = 3 })
	for i := 0; i < 60; i++ {
		h.put("a@src.invalid", fmt.Sprintf("r%d@dst.invalid", i))
	}
	h.waitSink(60)
	if _, most, _ := h.sink.Connections(); most > 3 || most < 1 {
		t.Fatalf("the sink saw up to %d concurrent connections; the cap is 3", most)
	}
}

func TestSmarthostAuthFailureDefersNotBounces(t *testing.T) {
	h := newHarness(t, sink.Options{Users: map[string]string{"relay": "right"}}, func(w *Worker) {
		w.Router = &Static{Destination: "auth", Targets: []Target{{Addr: "", TLS: TLSNone, Username: "relay", Password: "wrong", Timeout: 5 * time.Second}}}
	})
	h.worker.Router.(*Static).Targets[0].Addr = h.sink.Addr()
	id := h.put("a@src.invalid", "b@dst.invalid")
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := h.store.Get(id)
		if err != nil {
			t.Fatalf("message left the queue (%v): a credentials problem must not bounce it", err)
		}
		if r := m.Recipients[0]; r.Attempts >= 2 {
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "535") {
				t.Fatalf("recipient %s with %q, want pending after a 535", r.State, r.LastReply)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no two attempts within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.ndrs(id); n != 0 {
		t.Fatalf("%d NDRs for a credentials problem", n)
	}
}

func TestOperatorBounceReturnsMessageWithNDR(t *testing.T) {
	h := newHarness(t, sink.Options{OnRcpt: func(to string) error {
		if strings.HasPrefix(to, "stuck@") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
		}
		return nil
	}}, func(w *Worker) { w.Backoff = retry.Backoff{Min: time.Hour, Max: time.Hour} })
	id := h.put("sender@src.invalid", "stuck@dst.invalid")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, err := h.store.Get(id); err == nil && m.Recipients[0].Attempts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no first attempt within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.store.Bounce(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	h.waitGone(id)
	msgs := h.waitSink(1)
	r := parseNDR(t, msgs[0].Data).recipients[0]
	if r.Get("Action") != "failed" || !strings.Contains(r.Get("Diagnostic-Code"), "operator") {
		t.Fatalf("NDR Action %q Diagnostic-Code %q, want failed and the operator's reason", r.Get("Action"), r.Get("Diagnostic-Code"))
	}
}

// failingRouter fails every lookup at once, so that attempts end in
// microseconds: the worker must still never run more attempts than
// MaxConns, and must stop when asked.
type failingRouter struct{}

func (failingRouter) Route(context.Context, string, string) (*Route, error) {
	return nil, &smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeDNSTemp, Text: "lookup failed", Local: true}
}

func (failingRouter) SenderClass(string) string { return "" }

func TestInstantAttemptsNeverExceedMaxConnsAndStop(t *testing.T) {
	store, err := queue.Open(t.TempDir(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const n = 400
	for i := 0; i < n; i++ {
		env := &queue.Envelope{From: "a@src.invalid", Recipients: []queue.Recipient{{Addr: fmt.Sprintf("r%d@dst.invalid", i)}}}
		if err := store.Put(context.Background(), store.NewID(), env, strings.NewReader("x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	var running, most atomic.Int32
	q := &countingQueue{Store: store, running: &running, most: &most}
	w := &Worker{Queue: q, Router: failingRouter{}, Hostname: "relay.test.invalid", MaxConns: 3,
		Backoff: retry.Backoff{Min: time.Hour, Max: time.Hour}, Grace: time.Second, Log: zerolog.Nop()}
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	// Intake goes on meanwhile, as in production: every Put wakes the
	// worker's loop too, not only finished attempts.
	var intake sync.WaitGroup
	intake.Add(1)
	go func() {
		defer intake.Done()
		for i := 0; i < n; i++ {
			env := &queue.Envelope{From: "a@src.invalid", Recipients: []queue.Recipient{{Addr: fmt.Sprintf("late%d@dst.invalid", i)}}}
			if err := store.Put(context.Background(), store.NewID(), env, strings.NewReader("x\r\n")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	peak := 0
	deadline := time.Now().Add(20 * time.Second)
	for q.updates.Load() < 2*n {
		peak = max(peak, runtime.NumGoroutine()-base)
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages attempted within 20 s", q.updates.Load(), 2*n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	intake.Wait()
	// The worker's loop, its ticker, MaxConns attempts and the intake.
	if peak > 3+8 {
		t.Errorf("up to %d goroutines more than before the worker started; MaxConns is 3: finished attempts are piling up", peak)
	}
	if m := most.Load(); m > 3 {
		t.Errorf("%d attempts ran at once; MaxConns is 3", m)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of being stopped")
	}
}

// An attempt whose commit failed leaves its message due, and nothing
// wakes the scheduler for it: the loop must look again by itself
// (doneRecheck), not wait for the next message or its timer, and the
// scan from its cursor must see the entry it passed over while the
// message was in flight (Worker.recheck), not wait for the scan from the
// start (fullScanEvery, a minute: beyond waitGone's 10 s).
func TestAttemptWhoseCommitFailedIsTriedAgain(t *testing.T) {
	var failed atomic.Bool
	h := newHarness(t, sink.Options{}, func(w *Worker) {
		w.Queue = &failFirstUpdate{Queue: w.Queue, failed: &failed}
	})
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	if !failed.Load() {
		t.Fatal("no Update failed")
	}
	if n := h.sink.Count(); n != 2 {
		t.Fatalf("the sink got %d copies, want 2: the attempt whose commit failed and the next", n)
	}
}

// failFirstUpdate fails the first Update, writing nothing.
type failFirstUpdate struct {
	Queue
	failed *atomic.Bool
}

func (q *failFirstUpdate) Update(ctx context.Context, m *queue.Message, news ...queue.NewMessage) error {
	if q.failed.CompareAndSwap(false, true) {
		return errors.New("injected: the commit failed")
	}
	return q.Queue.Update(ctx, m, news...)
}

// countingQueue counts the attempts running at once (from Get to Update)
// and the Updates made.
type countingQueue struct {
	*queue.Store
	running, most *atomic.Int32
	updates       atomic.Int32
}

func (q *countingQueue) Get(id queue.ID) (*queue.Message, error) {
	n := q.running.Add(1)
	for m := q.most.Load(); n > m && !q.most.CompareAndSwap(m, n); m = q.most.Load() {
	}
	return q.Store.Get(id)
}

func (q *countingQueue) Update(ctx context.Context, m *queue.Message, news ...queue.NewMessage) error {
	defer q.running.Add(-1)
	defer q.updates.Add(1)
	return q.Store.Update(ctx, m, news...)
}
