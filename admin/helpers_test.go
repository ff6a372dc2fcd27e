package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"relayq/pressure"
	"relayq/queue"
)

// fixture is an admin server over a real store, with a settable clock and
// fake back-pressure and destination sources (the project's own
// interfaces).
type fixture struct {
	t     *testing.T
	store *queue.Store
	srv   *Server
	http  *httptest.Server
	bp    *fakePressure
	dests *fakeDests

	mu  sync.Mutex
	now time.Time
}

type fakePressure struct {
	mu sync.Mutex
	bp BackPressure
}

func (f *fakePressure) BackPressure() BackPressure {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bp
}

func (f *fakePressure) set(bp BackPressure) {
	f.mu.Lock()
	f.bp = bp
	f.mu.Unlock()
}

type fakeDests struct{ list []Destination }

func (f *fakeDests) Destinations() []Destination { return f.list }

func newFixture(t *testing.T, mutate func(*Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, now: time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)}
	var err error
	f.store, err = queue.Open(t.TempDir(), queue.Options{Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	f.bp = &fakePressure{bp: BackPressure{Level: pressure.Normal, Resources: []Resource{
		{Name: "free_disk", Level: pressure.Normal, Reading: 12e9, Medium: 4e9, High: 5e8, Unit: "bytes", Falling: true},
		{Name: "memory", Level: pressure.Normal, Reading: 0.31, Medium: 0.75, High: 0.9, Unit: "ratio"},
		{Name: "queue_messages", Level: pressure.Normal, Reading: 3, Medium: 200000, High: 500000, Unit: "count"},
	}}}
	f.dests = &fakeDests{}
	opts := Options{
		Queue: f.store, BackPressure: f.bp, Destinations: f.dests,
		Hostname: "relay.test.invalid", Version: "test",
		Now: f.clock, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if mutate != nil {
		mutate(&opts)
	}
	f.srv = New(opts)
	f.http = httptest.NewServer(f.srv.Handler())
	t.Cleanup(f.http.Close)
	return f
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// put queues a message from from to rcpts, due after delay.
func (f *fixture) put(from string, delay time.Duration, rcpts ...string) queue.ID {
	f.t.Helper()
	env := &queue.Envelope{From: from, NextAttempt: f.clock().Add(delay), Client: "[127.0.0.1] app.test.invalid"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id := f.store.NewID()
	if err := f.store.Put(context.Background(), id, env, strings.NewReader("Subject: x\r\n\r\nhello\r\n")); err != nil {
		f.t.Fatal(err)
	}
	f.advance(time.Second)
	return id
}

// deferWith records a failed attempt with reply on every pending recipient.
func (f *fixture) deferWith(id queue.ID, reply string, backoff time.Duration) {
	f.t.Helper()
	m, err := f.store.Get(id)
	if err != nil {
		f.t.Fatal(err)
	}
	for i := range m.Recipients {
		m.Recipients[i].Attempts++
		m.Recipients[i].LastReply = reply
		m.Recipients[i].LastHost = "mx.dest.invalid:25"
	}
	m.LastAttempt = f.clock()
	m.NextAttempt = f.clock().Add(backoff)
	if err := f.store.Update(context.Background(), m); err != nil {
		f.t.Fatal(err)
	}
}

// do sends a request with optional headers and returns status and body.
func (f *fixture) do(method, path string, header map[string]string) (int, []byte) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.http.URL+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := f.http.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, body
}

// getJSON GETs path, wants 200, and decodes the answer into v.
func (f *fixture) getJSON(path string, v any) {
	f.t.Helper()
	code, body := f.do("GET", path, nil)
	if code != http.StatusOK {
		f.t.Fatalf("GET %s = %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		f.t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// metric returns the value of one series in a Prometheus text exposition,
// e.g. `relayq_deliveries_total{result="delivered"}`.
func metric(t *testing.T, exposition []byte, series string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(string(exposition)))
	for sc.Scan() {
		line := sc.Text()
		if name, value, ok := strings.Cut(line, " "); ok && name == series {
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				t.Fatalf("series %s: %v", series, err)
			}
			return v
		}
	}
	t.Fatalf("no series %s in:\n%s", series, exposition)
	return 0
}
