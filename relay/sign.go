package relay

import (
	"context"
	"io"

	"relayq/queued"
)

// Signer signs mail at intake ([[dkim]]), before it is queued, so that a
// signature is computed once, whatever the number of delivery attempts.
// internal/dkimsign is the implementation internal/server wires in.
type Signer interface {
	// Sign reads msg (the message as it will be queued, without relayq's
	// Received field) and returns the message to queue in its place:
	// msg's bytes, after the signature fields when a key covers the
	// message. by names the signature for the log, "" when unsigned. To
	// sign, Sign reads msg to its end first; otherwise the result may go
	// on reading msg. An error reading msg is returned wrapped. signed
	// must be closed once read (it may hold a spool file); it is nil when
	// err is not.
	Sign(ctx context.Context, msg io.Reader) (signed io.ReadCloser, by string, err error)
}

// signed returns what Data queues after its Received field: body itself,
// or as Config.Signer returns it. release frees what the result holds.
func (s *session) signed(id queued.ID, body io.Reader) (msg io.Reader, release func(), err error) {
	sg := s.srv.cfg.Signer
	if sg == nil {
		return body, func() {}, nil
	}
	r, by, err := sg.Sign(s.ctx, body)
	if err != nil {
		return nil, func() {}, err
	}
	if by != "" {
		s.log.Debug().Str("id", string(id)).Str("dkim", by).Msg("signed")
	}
	return r, func() { r.Close() }, nil
}
