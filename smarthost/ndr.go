package smarthost

import (
	"io"
	"strings"
	"time"

	"relayq/queue"
	"relayq/retry"
)

// maxNDRHeaders bounds the original header section copied into an NDR.
const maxNDRHeaders = 64 << 10

// ndrMaker builds the non-delivery reports of failed recipients.
type ndrMaker struct {
	hostname string
	now      func() time.Time
	newID    func() queue.ID
	body     func(queue.ID) (io.ReadCloser, error)
}

// failed returns the NDR for the bounced recipients idx of m, or nil when
// none is due: never for a message from <> (DESIGN.md invariant 4: never
// bounce a bounce) and not for recipients whose NOTIFY excludes FAILURE.
// why is "expired" for a lifetime bounce (Status 4.4.7, Action failed).
func (n ndrMaker) failed(m *queue.Message, idx []int, why string) *queue.NewMessage {
	if m.From == "" {
		return nil
	}
	now := n.now()
	var rcpts []retry.DSNRecipient
	for _, i := range idx {
		r := &m.Recipients[i]
		if !notifies(r.Notify, "FAILURE") {
			continue
		}
		status := retry.CodePermGeneric
		if reply, err := retry.ParseReply(r.LastReply); err == nil {
			status = reply.Status()
		}
		if why == "expired" {
			status = retry.CodeExpired
		}
		rcpts = append(rcpts, retry.DSNRecipient{
			Final:       r.Addr,
			Original:    r.ORCPT,
			Action:      retry.ActionFailed,
			Status:      status,
			RemoteMTA:   r.LastHost,
			Diagnostic:  r.LastReply,
			LastAttempt: m.LastAttempt,
		})
	}
	if len(rcpts) == 0 {
		return nil
	}
	id := n.newID()
	dsn := &retry.DSN{
		ReportingMTA: n.hostname,
		From:         "MAILER-DAEMON@" + n.hostname,
		To:           m.From,
		MessageID:    string(id) + "@" + n.hostname,
		Date:         now,
		QueueID:      string(m.ID),
		EnvID:        m.EnvID,
		Arrival:      m.Received,
		Recipients:   rcpts,
		Headers:      n.headers(m.ID),
	}
	b, err := dsn.Bytes()
	if err != nil {
		return nil
	}
	return &queue.NewMessage{
		ID: id,
		Envelope: queue.Envelope{
			Recipients: []queue.Recipient{{Addr: m.From}},
			Client:     "local",
		},
		Body: b,
	}
}

// headers returns the original's header section, or nothing if unreadable:
// an NDR without them is better than none.
func (n ndrMaker) headers(id queue.ID) []byte {
	rc, err := n.body(id)
	if err != nil {
		return nil
	}
	defer rc.Close()
	h, _ := retry.OriginalHeaders(rc, maxNDRHeaders)
	return h
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
