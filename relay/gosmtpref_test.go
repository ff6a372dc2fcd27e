package relay

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"relayq/config"
)

// refBackend is the reference for relay's reading of a DATA body: a plain
// go-smtp server whose session reads go-smtp's own DATA reader through
// the bodyReader relay uses (line endings, size, hops) and records what
// comes out. Where relay's fast path stores something else, or replies
// otherwise, it reads the client's bytes differently from go-smtp.
type refBackend struct {
	max int64

	mu     sync.Mutex
	bodies [][]byte
}

type refSession struct{ b *refBackend }

func (b *refBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return refSession{b}, nil }

func (refSession) Mail(string, *smtp.MailOptions) error { return nil }
func (refSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (refSession) Reset()                               {}
func (refSession) Logout() error                        { return nil }

func (s refSession) Data(r io.Reader) error {
	body := newBodyReader(r, s.b.max, config.DefaultMaxHops, BareNormalize)
	defer body.release()
	got, _ := io.ReadAll(body)
	if reply := body.Reply(); reply != nil {
		return smtpError(reply)
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.bodies = append(s.b.bodies, got)
	return nil
}

// serveRef serves b with go-smtp on a pipeListener until the test ends.
// lineLimit is go-smtp's MaxLineLength (0: none).
func serveRef(t testing.TB, b *refBackend, lineLimit int) *pipeListener {
	t.Helper()
	srv := smtp.NewServer(b)
	srv.Domain = "ref.test"
	srv.MaxMessageBytes = b.max
	srv.MaxLineLength = lineLimit
	srv.ReadTimeout, srv.WriteTimeout = testTimeout, testTimeout
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l := newPipeListener()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return l
}

// dataRun is one client's transaction: the envelope, then DATA, then the
// bytes in, written in segments: in[:split], then chunks of chunk bytes.
// withBody sends in[:split] in the same write as DATA, before the 354.
type dataRun struct {
	in       []byte
	split    int
	chunk    int
	withBody bool
	limit    int64 // max message size
}

const refEnvelope = "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"

func (r dataRun) segments() []string {
	segs := []string{refEnvelope}
	if r.withBody {
		segs = append(segs, "DATA\r\n"+string(r.in[:r.split]))
	} else {
		segs = append(segs, "DATA\r\n", string(r.in[:r.split]))
	}
	for p := r.in[r.split:]; len(p) > 0; {
		n := min(r.chunk, len(p))
		segs = append(segs, string(p[:n]))
		p = p[n:]
	}
	return segs
}

// converse writes segs to a new connection of l, one write each (a
// net.Pipe read never returns bytes of two writes, so the server reads
// exactly these segments), closes the client's side and returns the
// codes of the replies.
func converse(t testing.TB, l *pipeListener, segs []string) []int {
	t.Helper()
	c := l.dial(t, netip.MustParseAddr("127.0.0.1"))
	defer c.Close()
	go func() {
		defer c.closeWrite()
		for _, s := range segs {
			if s == "" {
				continue
			}
			if _, err := io.WriteString(c, s); err != nil {
				return // the server hung up
			}
		}
	}()
	return replyCodes(c.readAll(t, testTimeout))
}

var finalReplyRe = regexp.MustCompile(`(?m)^([2-5][0-9][0-9]) `)

// replyCodes returns the codes of the final lines of the replies in out.
func replyCodes(out []byte) []int {
	var codes []int
	for _, m := range finalReplyRe.FindAllSubmatch(out, -1) {
		code, _ := strconv.Atoi(string(m[1]))
		codes = append(codes, code)
	}
	return codes
}

// dataReply returns the reply codes up to and including the reply to the
// body (the one after the 354), and that reply; 0 if there is none.
func dataReply(codes []int) ([]int, int) {
	for i, c := range codes {
		if c == 354 && i+1 < len(codes) {
			return codes[:i+2], codes[i+1]
		}
	}
	return codes, 0
}

// checkFastAgainstGoSMTP runs r through relay and through the go-smtp
// reference and compares the replies up to the one to the body, and what
// was queued. It also checks that relay read the body by the fast path
// exactly when DATA came alone: when it did not, go-smtp had read part of
// the body, and relay must leave the rest to go-smtp's reader.
//
// go-smtp checks line lengths per socket read, and its check of a read
// that holds an over-long line fails the whole read, the end of the body
// with it; relay's fast path counts only up to the end of the body. So
// when the client's bytes hold an over-long line the two may differ, and
// then relay must either refuse it as such (554) or do what go-smtp does
// without a line limit.
func checkFastAgainstGoSMTP(t *testing.T, r dataRun, full bool) {
	t.Helper()
	q := &memQueue{}
	cfg := testConfig()
	cfg.MaxMessageSize = r.limit
	srv := New(cfg, q, zerolog.Nop())
	relayL := servePipes(t, srv, ListenerConfig{})
	segs := r.segments()
	got := converse(t, relayL, segs)

	ref := &refBackend{max: r.limit}
	want := converse(t, serveRef(t, ref, fastLineLimit), segs)
	if hasLongLine(segs) {
		if _, code := dataReply(got); code == replyLineTooLong.Code {
			return
		}
		ref = &refBackend{max: r.limit}
		want = converse(t, serveRef(t, ref, 0), segs)
	}
	if count(got, 354) == 1 {
		// One body, and which path read it is known.
		if fast, wantFast := srv.fastBodies.Load(), !r.withBody || r.split == 0; fast != 1 && wantFast || fast != 0 && !wantFast {
			t.Errorf("%d bodies read by the fast path, want the fast path: %v", fast, wantFast)
		}
	}
	gotHead, gotCode := dataReply(got)
	wantHead, _ := dataReply(want)
	if full {
		gotHead, wantHead = got, want
	}
	if fmt.Sprint(gotHead) != fmt.Sprint(wantHead) {
		t.Fatalf("relay replied %v, go-smtp %v", gotHead, wantHead)
	}
	if gotCode != 250 {
		return
	}
	msgs := q.messages()
	if len(msgs) == 0 || len(ref.bodies) == 0 {
		t.Fatalf("250 with %d messages queued, go-smtp's reference %d", len(msgs), len(ref.bodies))
	}
	if b := afterReceived(t, msgs[0].body); !bytes.Equal(b, ref.bodies[0]) {
		t.Fatalf("relay queued\n%.400q\ngo-smtp read\n%.400q", b, ref.bodies[0])
	}
}

func count(codes []int, code int) int {
	n := 0
	for _, c := range codes {
		if c == code {
			n++
		}
	}
	return n
}

// hasLongLine reports whether a line of segs, taken as one stream, comes
// near go-smtp's line limit.
func hasLongLine(segs []string) bool {
	n := 0
	for _, s := range segs {
		for i := range len(s) {
			if s[i] == '\n' {
				n = 0
				continue
			}
			if n++; n >= fastLineLimit-1 {
				return true
			}
		}
	}
	return false
}
