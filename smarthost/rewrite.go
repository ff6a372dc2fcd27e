package smarthost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"

	"github.com/emersion/go-message/textproto"

	"relayq/config"
	"relayq/queue"
)

// Rewrite is how a route rewrites the sender, at delivery: per attempt and
// per route, never in the queue, whose record keeps the original sender
// (reports go to it). The null sender (reports themselves) is never
// rewritten. The zero value rewrites nothing.
type Rewrite struct {
	// Sender is the envelope sender (MAIL FROM) instead of the message's;
	// "" keeps it.
	Sender string
	// From is config.RewriteFromReplace or config.RewriteFromReplyTo to
	// rewrite the From: field to Sender; anything else keeps it.
	From string
}

// rewritesFrom reports whether rw rewrites the From: field.
func (rw Rewrite) rewritesFrom() bool {
	return rw.Sender != "" && (rw.From == config.RewriteFromReplace || rw.From == config.RewriteFromReplyTo)
}

// Signer signs mail at delivery whose From: a route rewrote (DKIM, RFC
// 6376), for the rewritten domain; *dkimsign.Signer is one.
type Signer interface {
	// Signature reads msg, a message with CRLF line endings, to its end
	// and returns the DKIM-Signature fields to put in front of it (each
	// ended by CRLF): one per key configured for its From: domain, ""
	// when none is.
	Signature(ctx context.Context, msg io.Reader) (string, error)
}

// maxRewriteHeader bounds the header section a route rewrites, as intake
// bounds the one it reads: a message whose header section does not end
// within it is sent with its From: as it is (and the log says so).
const maxRewriteHeader = 64 << 10

// outgoing opens what is sent of m on a route that rewrites as rw: the
// stored body, checked against the stored size (exactReader: a body that
// went away or changed is never sent as the message), with its header
// section rewritten when rw rewrites From: and m's sender is not null, and
// the number of bytes that are then sent. The rewritten header section is
// signed with w.Signer, which reads the stored body once more. Only the
// header section is held in memory; the rest streams.
func (w *Worker) outgoing(ctx context.Context, m *queue.Message, rw Rewrite) (io.ReadCloser, int64, error) {
	body, err := w.Queue.Body(m.ID)
	if err != nil {
		return nil, 0, err
	}
	stored := &exactReader{r: body, left: m.Size}
	if !rw.rewritesFrom() || m.From == "" {
		return readCloser{stored, body}, m.Size, nil
	}
	br := bufio.NewReaderSize(stored, maxRewriteHeader)
	peek, err := br.Peek(maxRewriteHeader)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		body.Close()
		return nil, 0, err
	}
	end := headerEnd(peek)
	var h textproto.Header
	if end > 0 {
		h, err = textproto.ReadHeader(bufio.NewReader(bytes.NewReader(peek[:end])))
	}
	if end <= 0 || err != nil {
		w.Log.Warn().Str("id", string(m.ID)).Err(err).Int("max", maxRewriteHeader).
			Msg("header section unreadable or too long to rewrite; From: sent as it is")
		return readCloser{br, body}, m.Size, nil
	}
	head := rewriteHeader(h, rw)
	if w.Signer != nil {
		sig, err := w.signRewritten(ctx, m, head, int64(end))
		if err != nil {
			body.Close()
			return nil, 0, err
		}
		head = append([]byte(sig), head...)
	}
	if _, err := br.Discard(end); err != nil {
		body.Close()
		return nil, 0, err
	}
	return readCloser{io.MultiReader(bytes.NewReader(head), br), body}, m.Size - int64(end) + int64(len(head)), nil
}

// signRewritten returns the DKIM-Signature fields for head followed by
// the stored body of m after its first skip bytes (the header section
// head replaces).
func (w *Worker) signRewritten(ctx context.Context, m *queue.Message, head []byte, skip int64) (string, error) {
	body, err := w.Queue.Body(m.ID)
	if err != nil {
		return "", err
	}
	defer body.Close()
	stored := &exactReader{r: body, left: m.Size}
	if _, err := io.CopyN(io.Discard, stored, skip); err != nil {
		return "", err
	}
	sig, err := w.Signer.Signature(ctx, io.MultiReader(bytes.NewReader(head), stored))
	if err != nil {
		return "", fmt.Errorf("signing the rewritten message: %w", err)
	}
	return sig, nil
}

// headerEnd returns the length of the header section at the start of msg
// with the empty line that ends it, 0 if it does not end within msg.
func headerEnd(msg []byte) int {
	if bytes.HasPrefix(msg, []byte("\r\n")) {
		return 2
	}
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	return 0
}

// rewriteHeader returns h, ended by its empty line, with From: rewritten
// as rw says: the address becomes rw.Sender, the display name of the
// first author is kept; with RewriteFromReplyTo, the original From:
// field becomes a Reply-To: field as it was written, unless the message
// has one. Every other field is written as it was read, in its place.
//
// Every DKIM-Signature field is dropped: each one signs From: (RFC 6376
// §5.4), which this changes, so none can verify any more; the caller
// signs the result for the rewritten domain.
func rewriteHeader(h textproto.Header, rw Rewrite) []byte {
	var name string
	if addrs, err := mail.ParseAddressList(h.Get("From")); err == nil && len(addrs) > 0 {
		name = addrs[0].Name
	}
	var from textproto.Header
	from.Add("From", (&mail.Address{Name: name, Address: rw.Sender}).String())
	replyTo := rw.From == config.RewriteFromReplyTo && !h.Has("Reply-To")

	var out bytes.Buffer
	wrote := false
	for f := h.Fields(); f.Next(); {
		raw, _ := f.Raw() // a field read has its raw form
		switch f.Key() {
		case "Dkim-Signature":
			continue
		case "From":
			if wrote {
				continue // one author field (RFC 5322 §3.6: From: occurs once)
			}
			wrote = true
			textproto.WriteHeader(&out, from)
			out.Truncate(out.Len() - 2) // WriteHeader ends the section
			if replyTo {
				colon := bytes.IndexByte(raw, ':')
				out.WriteString("Reply-To")
				out.Write(raw[colon:])
			}
			continue
		}
		out.Write(raw)
	}
	if !wrote {
		textproto.WriteHeader(&out, from)
		return out.Bytes()
	}
	out.WriteString("\r\n")
	return out.Bytes()
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
