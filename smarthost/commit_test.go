package smarthost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
	"relayq/internal/smtptest"
	"relayq/queue"
)

// runWorker runs a worker over store, delivering to dst, until the
// returned function is called, which returns once Run has.
func runWorker(t *testing.T, store *queue.Store, dst *sink.Server, tune func(*Worker)) (stop func()) {
	t.Helper()
	router := &Static{Destination: "sink", Targets: []Target{{Addr: dst.Addr(), TLS: TLSNone, Timeout: 5 * time.Second}}}
	w := testWorker(t, store, store, router, tune)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	return func() { cancel(); <-done }
}

func putTo(t *testing.T, s *queue.Store, rcpts ...string) queue.ID {
	t.Helper()
	env := &queue.Envelope{From: "a@src.invalid"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id := s.NewID()
	if err := s.Put(context.Background(), id, env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestEachTransactionIsCommittedBeforeTheNext: a message to three
// recipients goes in three transactions (the next hop takes one per
// transaction). The queue is crashed (a crash image of its files, unsynced
// data lost) while the second transaction is under way; restarted on that
// image, relayq sends only the two recipients the first 250 did not cover.
func TestEachTransactionIsCommittedBeforeTheNext(t *testing.T) {
	fs := vfs.NewCrashableMem()
	store, err := queue.Open("q", queue.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mails atomic.Int32
		image = make(chan vfs.FS, 1)
	)
	first, err := sink.Start(sink.Options{MaxRecipients: 1, OnMail: func(string) error {
		if mails.Add(1) == 2 {
			image <- fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	stop := runWorker(t, store, first, nil)
	id := putTo(t, store, "r1@dst.invalid", "r2@dst.invalid", "r3@dst.invalid")
	var crashed vfs.FS
	select {
	case crashed = <-image:
	case <-time.After(10 * time.Second):
		t.Fatal("no second transaction within 10 s")
	}
	stop()
	store.Close()

	restarted, err := queue.Open("q", queue.Options{FS: crashed})
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	second := smtptest.StartSink(t, sink.Options{})
	defer runWorker(t, restarted, second, nil)()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := second.Wait(ctx, 1); err != nil {
		t.Fatalf("after the restart %d messages arrived: %v", second.Count(), err)
	}
	var got []string
	for _, m := range second.Messages() {
		got = append(got, m.To...)
	}
	if fmt.Sprint(got) != "[r2@dst.invalid r3@dst.invalid]" {
		t.Fatalf("after the restart relayq sent to %v, want only [r2@dst.invalid r3@dst.invalid]", got)
	}
	waitStoreGone(t, restarted, id)
}

func waitStoreGone(t *testing.T, s *queue.Store, id queue.ID) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := s.Get(id); errors.Is(err, queue.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s still queued", id)
		}
	}
}

// TestVerdictsReachedAtShutdownAreCommitted: a transaction whose RCPT
// refused one recipient (550) is still sending the message to the other
// when relayq stops; the grace period ends and the attempt is
// interrupted. The bounce it reached is on disk all the same, with its
// NDR, though the attempt's context was cancelled.
func TestVerdictsReachedAtShutdownAreCommitted(t *testing.T) {
	store, err := queue.Open(t.TempDir(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	inData := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	dst := smtptest.StartSink(t, sink.Options{
		OnRcpt: func(to string) error {
			if strings.HasPrefix(to, "bad@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
		OnData: func(*sink.Message) error {
			inData <- struct{}{}
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
			return nil
		},
	})
	stop := runWorker(t, store, dst, func(w *Worker) { w.Grace = 50 * time.Millisecond })
	id := putTo(t, store, "bad@dst.invalid", "good@dst.invalid")
	select {
	case <-inData:
	case <-time.After(10 * time.Second):
		t.Fatal("the message never reached DATA")
	}
	stop()
	m, err := store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Recipients[0]; r.State != queue.Bounced || !strings.HasPrefix(r.LastReply, "550") {
		t.Fatalf("bad@ is %v with %q after shutdown; want bounced with the 550", r.State, r.LastReply)
	}
	if r := m.Recipients[1]; r.State != queue.Pending {
		t.Fatalf("good@ is %v; want pending (its transaction was interrupted)", r.State)
	}
	if n := store.Messages(); n != 2 {
		t.Fatalf("%d messages queued, want 2: the original and the NDR committed with the bounce", n)
	}
}

// deletingQueue deletes each message right after the worker's Get of it,
// as `relayq queue delete` could between an attempt's Get and its Body.
type deletingQueue struct {
	Queue
	store *queue.Store
}

func (q *deletingQueue) Get(id queue.ID) (*queue.Message, error) {
	m, err := q.Queue.Get(id)
	if err == nil {
		err = q.store.Delete(context.Background(), id)
	}
	return m, err
}

// TestMessageDeletedBeforeItsBodyIsReadIsNotSent: the body of a message
// deleted after the attempt's Get is not found; no transaction is begun,
// where an empty message used to go out.
func TestMessageDeletedBeforeItsBodyIsReadIsNotSent(t *testing.T) {
	var mails atomic.Int32
	var lb *logBuffer
	h := newHarness(t, sink.Options{OnMail: func(string) error { mails.Add(1); return nil }}, func(w *Worker) {
		w.Queue = &deletingQueue{Queue: w.Queue, store: w.Queue.(*recordingQueue).Store}
		lb = captureLog(t, w)
	})
	h.put("a@src.invalid", "b@dst.invalid")
	for deadline := time.Now().Add(10 * time.Second); len(lb.Events("message deleted during delivery")) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the attempt never noticed the deletion")
		}
	}
	if n := mails.Load(); n != 0 || h.sink.Count() != 0 {
		t.Fatalf("%d MAIL commands and %d messages at the next hop for a deleted message, want none", n, h.sink.Count())
	}
}

// truncatingQueue serves the first Body of each message a few bytes short,
// as a body that changed under the attempt would be.
type truncatingQueue struct {
	Queue
	done atomic.Bool
}

func (q *truncatingQueue) Body(id queue.ID) (io.ReadCloser, error) {
	rc, err := q.Queue.Body(id)
	if err != nil || q.done.Swap(true) {
		return rc, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	return io.NopCloser(bytes.NewReader(b[:len(b)-3])), err
}

// TestBodyShorterThanItsStoredSizeIsNeverDelivered: a body that reads
// shorter than the stored size is not ended with "."; the connection is
// dropped, and the next attempt delivers the whole message, once.
func TestBodyShorterThanItsStoredSizeIsNeverDelivered(t *testing.T) {
	h := newHarness(t, sink.Options{}, func(w *Worker) {
		w.Queue = &truncatingQueue{Queue: w.Queue}
	})
	id := h.put("a@src.invalid", "b@dst.invalid")
	h.waitGone(id)
	msgs := h.sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages arrived, want 1", len(msgs))
	}
	if !bytes.HasSuffix(msgs[0].Data, []byte("body\r\n")) {
		t.Fatalf("the message arrived truncated: %q", msgs[0].Data)
	}
}
