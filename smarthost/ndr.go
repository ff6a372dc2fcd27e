package smarthost

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"relayq/internal/dsn"
	"relayq/internal/smtpreply"
	"relayq/queue"
)

const (
	// maxNDRHeaders bounds the original header section copied into a DSN.
	maxNDRHeaders = 64 << 10
	// DefaultReturnFullMax is the largest original an NDR returns whole
	// when the sender asked RET=FULL (Worker.ReturnFullMax); a larger one
	// is returned as its headers, and the NDR says so.
	DefaultReturnFullMax = 1 << 20
)

// ndrMaker builds the delivery status notifications (RFC 3464) the worker
// sends: NDRs for failed recipients, delay warnings, and "relayed" reports
// (RFC 3461 §5.2.2). None is ever made for a message from <> (never
// bounce a bounce), and each recipient's NOTIFY decides
// whether it is included (RFC 3461 §4.1; no NOTIFY means FAILURE,DELAY).
type ndrMaker struct {
	hostname string
	now      func() time.Time
	newID    func() queue.ID
	body     func(queue.ID) (io.ReadCloser, error)
	// returnMax caps RET=FULL: 0 means DefaultReturnFullMax, < 0 headers only.
	returnMax int64
}

// failed returns the NDR for the bounced recipients idx of m, or nil when
// none is due (a <> sender, no recipient whose NOTIFY includes FAILURE).
// why is "expired" for a lifetime bounce (Status 4.4.7, Action failed). The
// original is returned whole for RET=FULL when it fits returnMax.
func (n ndrMaker) failed(m *queue.Message, idx []int, why string) (*queue.NewMessage, error) {
	var rcpts []dsn.Recipient
	for _, i := range n.asking(m, idx, "FAILURE") {
		r := &m.Recipients[i]
		status := recordedStatus(r)
		if status.IsZero() {
			status = smtpreply.CodePermGeneric
		}
		if why == "expired" {
			status = smtpreply.CodeExpired
		}
		rcpts = append(rcpts, n.recipient(m, r, dsn.ActionFailed, status))
	}
	return n.build(m, rcpts, strings.EqualFold(m.Ret, "FULL"))
}

// delayed returns the delay warning for the pending recipients idx of m
// whose NOTIFY allows DELAY, or nil; until is Will-Retry-Until (RFC 3464
// §2.3.8), the end of the message's queue lifetime.
func (n ndrMaker) delayed(m *queue.Message, idx []int, until time.Time) (*queue.NewMessage, error) {
	var rcpts []dsn.Recipient
	for _, i := range n.asking(m, idx, "DELAY") {
		r := &m.Recipients[i]
		status := smtpreply.CodeTempGeneric
		if st := recordedStatus(r); !st.IsZero() {
			// Still pending, so temporary, whatever class the reply had (a
			// 5xx greeting defers: it is about the host, not the message).
			status = smtpreply.EnhancedCode{4, st[1], st[2]}
		}
		d := n.recipient(m, r, dsn.ActionDelayed, status)
		d.WillRetryUntil = until
		rcpts = append(rcpts, d)
	}
	return n.build(m, rcpts, false)
}

// relayed returns the "relayed" DSN for the delivered recipients idx of m
// that asked NOTIFY=SUCCESS, or nil. The caller passes only recipients whose
// next hop lacked DSN: one that has it reports success itself (RFC 3461
// §5.2.2).
func (n ndrMaker) relayed(m *queue.Message, idx []int) (*queue.NewMessage, error) {
	var rcpts []dsn.Recipient
	for _, i := range n.asking(m, idx, "SUCCESS") {
		rcpts = append(rcpts, n.recipient(m, &m.Recipients[i], dsn.ActionRelayed, smtpreply.CodeOK))
	}
	return n.build(m, rcpts, false)
}

// asking returns the recipients of idx whose NOTIFY asks for kind; none
// when the sender is <>.
func (n ndrMaker) asking(m *queue.Message, idx []int, kind string) []int {
	if m.From == "" {
		return nil
	}
	var out []int
	for _, i := range idx {
		if notifies(m.Recipients[i].Notify, kind) {
			out = append(out, i)
		}
	}
	return out
}

func (n ndrMaker) recipient(m *queue.Message, r *queue.Recipient, a dsn.Action, st smtpreply.EnhancedCode) dsn.Recipient {
	return dsn.Recipient{
		Final:       r.Addr,
		Original:    r.ORCPT,
		Action:      a,
		Status:      st,
		RemoteMTA:   hostOnly(r.LastHost),
		Diagnostic:  r.LastReply,
		LastAttempt: m.LastAttempt,
		Attempts:    r.Attempts,
	}
}

// build composes the report on rcpts to m's sender; nil when rcpts is
// empty. With full, the original is attached whole if it fits returnMax.
func (n ndrMaker) build(m *queue.Message, rcpts []dsn.Recipient, full bool) (*queue.NewMessage, error) {
	if len(rcpts) == 0 || m.From == "" {
		return nil, nil
	}
	id := n.newID()
	rep := &dsn.Report{
		ReportingMTA: n.hostname,
		From:         "MAILER-DAEMON@" + n.hostname,
		To:           m.From,
		MessageID:    string(id) + "@" + n.hostname,
		Date:         n.now(),
		QueueID:      string(m.ID),
		EnvID:        m.EnvID,
		Arrival:      m.Received,
		Size:         m.Size,
		Recipients:   rcpts,
	}
	limit := n.returnMax
	if limit == 0 {
		limit = DefaultReturnFullMax
	}
	if full && limit > 0 && m.Size <= limit {
		rep.Full = n.whole(m.ID, limit)
	}
	if len(rep.Full) == 0 {
		rep.Headers = n.headers(m.ID)
		if full && limit > 0 {
			rep.ReturnLimit = limit
		}
	}
	b, err := rep.Bytes()
	if err != nil {
		return nil, fmt.Errorf("composing a DSN about %s: %w", m.ID, err)
	}
	return &queue.NewMessage{
		ID: id,
		Envelope: queue.Envelope{
			Recipients: []queue.Recipient{{Addr: m.From}},
			Client:     "local",
		},
		Body: b,
	}, nil
}

// headers returns the original's header section, or nothing if unreadable:
// a report without them is better than none.
func (n ndrMaker) headers(id queue.ID) []byte {
	rc, err := n.body(id)
	if err != nil {
		return nil
	}
	defer rc.Close()
	h, _ := dsn.OriginalHeaders(rc, maxNDRHeaders)
	return h
}

// whole returns the original message if it is at most limit bytes and
// readable, else nil (the caller falls back to the headers). It reads at
// most limit+1 bytes: memory stays bounded whatever Size claims.
func (n ndrMaker) whole(id queue.ID, limit int64) []byte {
	rc, err := n.body(id)
	if err != nil {
		return nil
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil || int64(len(b)) > limit {
		return nil
	}
	return b
}

// hostOnly drops the port of a host:port: Remote-MTA names a host
// (RFC 3464 §2.3.5).
func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// recordedStatus is the enhanced status of r's last reply: the one the
// worker settled on (Recipient.Status), else the reply's own; zero if
// neither parses.
func recordedStatus(r *queue.Recipient) smtpreply.EnhancedCode {
	if c, err := smtpreply.ParseEnhanced(r.Status); err == nil {
		return c
	}
	if reply, err := smtpreply.ParseReply(r.LastReply); err == nil {
		return reply.Status()
	}
	return smtpreply.EnhancedCode{}
}

// notifies reports whether a recipient's RFC 3461 NOTIFY parameter asks for
// a DSN of kind ("FAILURE", "DELAY", "SUCCESS"). No NOTIFY means the
// default, FAILURE and DELAY (RFC 3461 §4.1).
func notifies(notify, kind string) bool {
	if notify == "" {
		return kind == "FAILURE" || kind == "DELAY"
	}
	for _, k := range strings.Split(strings.ToUpper(notify), ",") {
		if strings.TrimSpace(k) == kind {
			return true
		}
	}
	return false
}

// DoubleBounces is how many failed recipients of messages from <> (NDRs and
// other reports that could not be delivered) were logged and dropped, never
// bounced (never a bounce of a bounce), since the worker started.
func (w *Worker) DoubleBounces() int64 { return w.doubleBounces.Load() }
