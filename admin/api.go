package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"relayq/internal/explain"
	"relayq/internal/smtpreply"
	"relayq/queue"
)

const (
	// MaxPage is the largest page GET /api/queue returns.
	MaxPage = 1000
	// DefaultPage is the page size when the request gives no limit.
	DefaultPage = 100
	// bulkPage and bulkWorkers shape an action on a filter: pages of the
	// queue read one at a time, each page's messages acted on by a few
	// goroutines so that their synced commits share fsyncs.
	bulkPage    = 500
	bulkWorkers = 16
	// maxActionErrors bounds the errors an action on a filter reports.
	maxActionErrors = 100
)

// Message is a queued message as the API shows it.
type Message struct {
	ID         string      `json:"id"`
	From       string      `json:"from"` // "" is the null sender <>
	Recipients []Recipient `json:"recipients"`
	Size       int64       `json:"size"`
	Created    time.Time   `json:"created"`
	// NextAttempt is when the message is due; a held message keeps the
	// value it had when it was held, but is not tried until released.
	NextAttempt     time.Time `json:"next_attempt"`
	LastAttempt     time.Time `json:"last_attempt,omitzero"`
	State           string    `json:"state"` // active | deferred | held
	BounceRequested bool      `json:"bounce_requested,omitempty"`
	Client          string    `json:"client,omitempty"`
	EnvID           string    `json:"envid,omitempty"`
	// MessageID and Subject are the message's header fields, as queued
	// (the Subject decoded and cut to 200 bytes); "" when it had none.
	MessageID string `json:"message_id,omitempty"`
	Subject   string `json:"subject,omitempty"`
	// LastReply is the last reply of the first pending recipient that has
	// one: why the message is still queued. Explain and Hint explain it.
	LastReply string `json:"last_reply,omitempty"`
	Explain   string `json:"explain,omitempty"`
	Hint      string `json:"hint,omitempty"`
}

// Recipient is one recipient of a Message.
type Recipient struct {
	Address   string    `json:"address"`
	State     string    `json:"state"` // pending | delivered | bounced | deleted
	Attempts  int       `json:"attempts"`
	LastReply string    `json:"last_reply"`
	LastHost  string    `json:"last_host,omitempty"`
	Explain   string    `json:"explain,omitempty"`
	Hint      string    `json:"hint,omitempty"`
	Done      time.Time `json:"done,omitzero"`
}

// ListResponse is the answer of GET /api/queue. Next, when set, is the
// after= of the next page.
type ListResponse struct {
	Messages []Message `json:"messages"`
	Next     string    `json:"next,omitempty"`
}

// ActionResult is the answer of an action: how many messages the request
// selected, how many were acted on, how many were passed over (a held
// message for flush, one gone meanwhile) and the first errors.
type ActionResult struct {
	Action  string        `json:"action"`
	Matched int           `json:"matched"`
	Done    int           `json:"done"`
	Skipped int           `json:"skipped"`
	Errors  []ActionError `json:"errors,omitempty"`
}

// ActionError is why an action failed or was passed over for one message.
type ActionError struct {
	ID    string `json:"id"`
	Error string `json:"error"`
	// Skipped is set when the message was passed over rather than failed:
	// held (for flush) or no longer queued.
	Skipped bool `json:"skipped,omitempty"`
}

// Status is the answer of GET /api/status.
type Status struct {
	Time         time.Time     `json:"time"`
	Started      time.Time     `json:"started"`
	Hostname     string        `json:"hostname,omitempty"`
	Version      string        `json:"version,omitempty"`
	Queue        QueueTotals   `json:"queue"`
	BackPressure *BackPressure `json:"back_pressure,omitempty"` // nil: not monitored
	Destinations []Destination `json:"destinations"`
	// Recent are the latest deferrals and bounces, newest first.
	Recent []Event `json:"recent"`
	// RateLimited are the users and addresses over a sending limit now.
	RateLimited []RateLimited `json:"rate_limited,omitempty"`
	// Cluster is the nodes sharing destination limits; nil without
	// [cluster].
	Cluster *ClusterStatus `json:"cluster,omitempty"`
}

// QueueTotals sums up the queue.
type QueueTotals struct {
	Messages int64     `json:"messages"`
	Bytes    int64     `json:"bytes"`
	OldestID string    `json:"oldest_id,omitempty"`
	Oldest   time.Time `json:"oldest,omitzero"` // when the oldest message was received
}

// Explain returns the one-line summary of what a reply line's status code
// means and the cause-and-fix hint for it (`relayq explain`), "" for what
// does not parse as a reply.
func Explain(reply string) (summary, hint string) {
	if reply == "" {
		return "", ""
	}
	r, err := smtpreply.ParseReply(reply)
	if err != nil {
		return "", ""
	}
	code := r.Status()
	return explain.Summary(code), explain.Hint(code)
}

// NewMessage converts a stored message to its API form at now.
func NewMessage(m *queue.Message, now time.Time) Message {
	out := Message{
		ID:              string(m.ID),
		From:            m.From,
		Size:            m.Size,
		Created:         m.Received,
		NextAttempt:     m.NextAttempt,
		LastAttempt:     m.LastAttempt,
		State:           string(m.QueueState(now)),
		BounceRequested: m.BounceRequested,
		Client:          m.Client,
		EnvID:           m.EnvID,
		MessageID:       m.MessageID,
		Subject:         m.Subject,
		Recipients:      make([]Recipient, len(m.Recipients)),
	}
	for i, r := range m.Recipients {
		rc := Recipient{
			Address: r.Addr, State: r.State.String(), Attempts: r.Attempts,
			LastReply: r.LastReply, LastHost: r.LastHost, Done: r.Done,
		}
		rc.Explain, rc.Hint = Explain(r.LastReply)
		out.Recipients[i] = rc
		if out.LastReply == "" && !r.State.Final() && r.LastReply != "" {
			out.LastReply, out.Explain, out.Hint = r.LastReply, rc.Explain, rc.Hint
		}
	}
	return out
}

// ParseFilter reads a filter from the query parameters domain, sender,
// state, older_than (a Go duration, or whole days as "3d") and message_id
// (exact, with or without angle brackets).
func ParseFilter(q url.Values) (queue.Filter, error) {
	f := queue.Filter{
		Domain:    strings.TrimSpace(q.Get("domain")),
		Sender:    strings.TrimSpace(q.Get("sender")),
		MessageID: strings.TrimSpace(q.Get("message_id")),
	}
	var err error
	if f.State, err = queue.ParseQueueState(q.Get("state")); err != nil {
		return f, err
	}
	if v := strings.TrimSpace(q.Get("older_than")); v != "" {
		if f.OlderThan, err = ParseAge(v); err != nil {
			return f, fmt.Errorf("older_than: %w", err)
		}
	}
	return f, nil
}

// ParseAge parses a Go duration ("90m", "2h") or a number of days ("3d").
func ParseAge(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a duration", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration (90m, 2h, 3d)", s)
	}
	return d, nil
}

// FilterQuery is the inverse of ParseFilter.
func FilterQuery(f queue.Filter) url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("domain", f.Domain)
	set("sender", f.Sender)
	set("state", string(f.State))
	set("message_id", f.MessageID)
	if f.OlderThan > 0 {
		q.Set("older_than", f.OlderThan.String())
	}
	return q
}

func (s *Server) apiList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := ParseFilter(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	limit := DefaultPage
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit <= 0 {
			writeError(w, http.StatusBadRequest, "limit: %q is not a positive number", v)
			return
		}
		limit = min(limit, MaxPage)
	}
	after := queue.ID(q.Get("after"))
	if after != "" && !after.Valid() {
		writeError(w, http.StatusBadRequest, "after: %q is not a message ID", after)
		return
	}
	msgs, err := s.opts.Queue.List(f, after, limit)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	now := s.opts.Now()
	resp := ListResponse{Messages: make([]Message, 0, len(msgs))}
	for i := range msgs {
		resp.Messages = append(resp.Messages, NewMessage(&msgs[i], now))
	}
	if len(msgs) == limit {
		resp.Next = string(msgs[len(msgs)-1].ID)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) apiShow(w http.ResponseWriter, r *http.Request) {
	m, err := s.opts.Queue.Get(queue.ID(r.PathValue("id")))
	if errors.Is(err, queue.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no message %q in the queue", r.PathValue("id"))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, NewMessage(m, s.opts.Now()))
}

// apiBody streams a message as stored, its header fields and body, for an
// operator to read (relayq queue show --body). It is read chunk by chunk
// from the queue: memory does not grow with the message.
func (s *Server) apiBody(w http.ResponseWriter, r *http.Request) {
	id := queue.ID(r.PathValue("id"))
	body, err := s.opts.Queue.Body(id)
	if errors.Is(err, queue.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no message %q in the queue", id)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	defer body.Close()
	// message/rfc822 would make a browser offer a download or render it:
	// an operator wants to read the bytes as they are.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if _, err := io.Copy(w, body); err != nil {
		// The status line is out: all that can be done is to cut the
		// answer short, which the client sees as an unexpected EOF.
		s.opts.Log.Error().Err(err).Str("id", string(id)).Msg("streaming a queued message")
		panic(http.ErrAbortHandler)
	}
}

// action returns the queue operation named name.
func (s *Server) action(name string) func(context.Context, queue.ID) error {
	q := s.opts.Queue
	switch name {
	case "flush":
		return q.Flush
	case "hold":
		return q.Hold
	case "release":
		return q.Release
	case "bounce":
		return q.Bounce
	case "delete":
		return q.Delete
	}
	return nil
}

// Actions are the operator actions the API takes.
var Actions = []string{"flush", "hold", "release", "bounce", "delete"}

func (s *Server) apiAction(w http.ResponseWriter, r *http.Request) {
	name, id := r.PathValue("action"), queue.ID(r.PathValue("id"))
	op := s.action(name)
	if op == nil {
		writeError(w, http.StatusNotFound, "unknown action %q (one of %s)", name, strings.Join(Actions, ", "))
		return
	}
	err := op(r.Context(), id)
	s.logAction(r, name, id, err)
	res := ActionResult{Action: name, Matched: 1}
	switch {
	case errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, "no message %q in the queue", id)
	case errors.Is(err, queue.ErrHeld):
		writeError(w, http.StatusConflict, "message %s is held: release it first", id)
	case err != nil:
		writeError(w, http.StatusInternalServerError, "%s %s: %v", name, id, err)
	default:
		res.Done = 1
		writeJSON(w, http.StatusOK, res)
	}
}

// apiBulk runs an action on every message selected by the request: the
// IDs given as id= (repeatable), or the filter of domain=, sender=,
// state=, older_than=, message_id=; a request with neither needs
// all=true. Parameters may come in the query string or a form body.
func (s *Server) apiBulk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("action")
	op := s.action(name)
	if op == nil {
		writeError(w, http.StatusNotFound, "unknown action %q (one of %s)", name, strings.Join(Actions, ", "))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	f, err := ParseFilter(r.Form)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ids := r.Form["id"]
	all, _ := strconv.ParseBool(r.Form.Get("all"))
	if len(ids) == 0 && f.IsZero() && !all {
		writeError(w, http.StatusBadRequest, "%s of every message needs all=true; or give id=, domain=, sender=, state=, older_than= or message_id=", name)
		return
	}
	res := &bulkResult{ActionResult: ActionResult{Action: name}}
	if len(ids) > 0 {
		page := make([]queue.ID, 0, len(ids))
		for _, id := range ids {
			page = append(page, queue.ID(id))
		}
		s.actOn(r, name, op, page, res)
	} else if err := s.actOnFilter(r, name, op, f, res); err != nil {
		writeError(w, http.StatusInternalServerError, "%s after %d messages: %v", name, res.Done, err)
		return
	}
	writeJSON(w, http.StatusOK, res.ActionResult)
}

type bulkResult struct {
	mu sync.Mutex
	ActionResult
}

func (b *bulkResult) note(id queue.ID, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.Matched++
	if err == nil {
		b.Done++
		return
	}
	skipped := errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrHeld)
	if skipped {
		b.Skipped++
	}
	if len(b.Errors) < maxActionErrors {
		b.Errors = append(b.Errors, ActionError{ID: string(id), Error: err.Error(), Skipped: skipped})
	}
}

// actOnFilter walks the queue page by page and acts on every message f
// selects. Paging by ID stays correct while the action changes or removes
// the messages behind it.
func (s *Server) actOnFilter(r *http.Request, name string, op func(context.Context, queue.ID) error, f queue.Filter, res *bulkResult) error {
	var after queue.ID
	for {
		if err := r.Context().Err(); err != nil {
			return err
		}
		page, err := s.opts.Queue.List(f, after, bulkPage)
		if err != nil {
			return err
		}
		ids := make([]queue.ID, len(page))
		for i := range page {
			ids[i] = page[i].ID
		}
		s.actOn(r, name, op, ids, res)
		if len(page) < bulkPage {
			return nil
		}
		after = page[len(page)-1].ID
	}
}

func (s *Server) actOn(r *http.Request, name string, op func(context.Context, queue.ID) error, ids []queue.ID, res *bulkResult) {
	var g errgroup.Group
	g.SetLimit(bulkWorkers)
	for _, id := range ids {
		g.Go(func() error {
			err := op(r.Context(), id)
			s.logAction(r, name, id, err)
			res.note(id, err)
			return nil
		})
	}
	_ = g.Wait()
}

func (s *Server) logAction(r *http.Request, name string, id queue.ID, err error) {
	ev := s.opts.Log.Info()
	if err != nil && !errors.Is(err, queue.ErrNotFound) && !errors.Is(err, queue.ErrHeld) {
		ev = s.opts.Log.Error().Err(err)
	} else if err != nil {
		ev = ev.Str("result", err.Error())
	}
	ev.Str("id", string(id)).Str("action", name).Str("remote", r.RemoteAddr).Msg("operator action")
}

func (s *Server) apiStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.status())
}

// status gathers what /api/status and the status page show.
func (s *Server) status() Status {
	st := Status{
		Time:     s.opts.Now(),
		Started:  s.started,
		Hostname: s.opts.Hostname,
		Version:  s.opts.Version,
		Queue:    QueueTotals{Messages: s.opts.Queue.Messages(), Bytes: s.opts.Queue.Bytes()},
		Recent:   s.events.Recent(DefaultEvents),
	}
	if oldest, err := s.opts.Queue.List(queue.Filter{}, "", 1); err == nil && len(oldest) == 1 {
		st.Queue.OldestID, st.Queue.Oldest = string(oldest[0].ID), oldest[0].Received
	}
	if s.opts.BackPressure != nil {
		bp := s.opts.BackPressure.BackPressure()
		st.BackPressure = &bp
	}
	if s.opts.Destinations != nil {
		st.Destinations = s.opts.Destinations.Destinations()
	}
	if st.Destinations == nil {
		st.Destinations = []Destination{}
	}
	if s.opts.RateLimits != nil {
		st.RateLimited = s.opts.RateLimits.RateLimits().Limited
	}
	if s.opts.Cluster != nil {
		cl := s.opts.Cluster.Cluster()
		st.Cluster = &cl
	}
	return st
}
