package relay

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// pipelinedStreams are whole client dialogues written without waiting for
// replies (RFC 2920), with DATA lines inside bodies, RSET after a body,
// BDAT chunks that hold or end inside a DATA line, and RSET in the middle
// of a BDAT transfer.
var pipelinedStreams = []string{
	refEnvelope + "DATA\r\nSubject: x\r\n\r\nline1\r\nDATA\r\n..dot\r\nx\r\n.\r\nRSET\r\n" +
		"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nsecond\r\nDATA\r\n.\r\nQUIT\r\n",
	refEnvelope + "DATA\r\n.\r\nDATA\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\ndata\r\r\n.x\r\n.\r\nNOOP\r\n",
	refEnvelope + "BDAT 6\r\nDATA\r\nBDAT 4 LAST\r\nx\r\nDMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n" +
		"DATA\r\nbody\r\n.\r\nQUIT\r\n",
	refEnvelope + "BDAT 2\r\nDADATA\r\nBDAT 0 LAST\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n" +
		"BDAT 1\r\nxDATA\r\nRSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nz\r\n.\r\n",
}

// TestPipelinedStreamsReadLikeGoSMTP writes each of pipelinedStreams cut
// in two at every point (so a segment ends inside a CRLF, inside ".\r\n",
// right after DATA\r\n, between "." and its CRLF) and compares relay's
// replies and what it queued with a go-smtp server given the same
// segments.
func TestPipelinedStreamsReadLikeGoSMTP(t *testing.T) {
	for si, stream := range pipelinedStreams {
		for i := len(refEnvelope) - 3; i < len(stream); i++ {
			t.Run(fmt.Sprintf("%d/%d", si, i), func(t *testing.T) {
				compareStream(t, []string{stream[:i], stream[i:]}, 1<<20)
			})
		}
	}
}

// TestExactLimitStreamsReadLikeGoSMTP: messages of the limit -1, exactly
// and +1, with dot-stuffed lines, by DATA (cut at every point, with DATA
// alone or with the body) and by BDAT in one chunk or two.
func TestExactLimitStreamsReadLikeGoSMTP(t *testing.T) {
	wire := "Subject: x\r\n\r\n..a\r\n..\r\nbc\r\n"
	msg := strings.ReplaceAll(wire, "\r\n..", "\r\n.")
	data := refEnvelope + "DATA\r\n" + wire + ".\r\nQUIT\r\n"
	for _, limit := range []int64{int64(len(msg)) - 1, int64(len(msg)), int64(len(msg)) + 1} {
		dataEnd := len(refEnvelope) + len("DATA\r\n")
		for i := len(refEnvelope); i < len(data); i++ {
			t.Run(fmt.Sprintf("%d/with/%d", limit, i), func(t *testing.T) {
				compareStream(t, []string{data[:i], data[i:]}, limit)
			})
			if i > dataEnd {
				t.Run(fmt.Sprintf("%d/alone/%d", limit, i), func(t *testing.T) {
					compareStream(t, []string{data[:dataEnd], data[dataEnd:i], data[i:]}, limit)
				})
			}
		}
		for _, s := range []string{
			refEnvelope + fmt.Sprintf("BDAT %d LAST\r\n%sQUIT\r\n", len(msg), msg),
			refEnvelope + fmt.Sprintf("BDAT 5\r\n%sBDAT %d LAST\r\n%sQUIT\r\n", msg[:5], len(msg)-5, msg[5:]),
		} {
			t.Run(fmt.Sprintf("%d/bdat", limit), func(t *testing.T) { compareStream(t, []string{s}, limit) })
		}
	}
}

// compareStream writes segs to relay and to a go-smtp server (refBackend)
// and compares every reply code and every message queued.
func compareStream(t *testing.T, segs []string, limit int64) {
	t.Helper()
	q := &memQueue{}
	cfg := testConfig()
	cfg.MaxMessageSize = limit
	got := converse(t, servePipes(t, New(cfg, q, zerolog.Nop()), ListenerConfig{}), segs)
	ref := &refBackend{max: limit}
	want := converse(t, serveRef(t, ref, fastLineLimit), segs)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("segments %q: relay replied %v, go-smtp %v", segs, got, want)
	}
	msgs := q.messages()
	if len(msgs) != len(ref.bodies) {
		t.Fatalf("segments %q: relay queued %d messages, go-smtp %d", segs, len(msgs), len(ref.bodies))
	}
	for i := range msgs {
		if b := afterReceived(t, msgs[i].body); !bytes.Equal(b, ref.bodies[i]) {
			t.Fatalf("segments %q: relay queued %q, go-smtp %q", segs, b, ref.bodies[i])
		}
	}
}
