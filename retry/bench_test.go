package retry

import (
	"relayq/internal/smtpreply"
	"testing"
)

// BenchmarkClassify classifies the replies a delivery worker meets most,
// one sub-benchmark each, and a mix of all of them: it runs once per
// recipient per attempt, so it must stay far below the cost of an fsync.
//
//	CGO_ENABLED=0 go test -run '^$' -bench Classify -benchmem ./retry/
func BenchmarkClassify(b *testing.B) {
	cases := []struct {
		name  string
		stage Stage
		line  string
		local bool
	}{
		{"250-body", StageBody, "250 2.0.0 Ok: queued as 4Xq1Zb0Hk9z", false},
		{"421-4.3.2-connect", StageConnect, "421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel", false},
		{"452-4.5.3-rcpt", StageRcpt, "452 4.5.3 Too many recipients", false},
		{"451-4.4.1-local", StageConnect, "451 4.4.1 connection refused", true},
		{"550-5.1.1-rcpt", StageRcpt, "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in virtual mailbox table", false},
		{"552-size-text-body", StageBody, "552 4.3.1 Message size exceeds fixed maximum message size", false},
		{"554-no-enhanced-body", StageBody, "554 Transaction failed: spam score too high", false},
	}
	replies := make([]*smtpreply.Reply, len(cases))
	for i, c := range cases {
		r, err := smtpreply.ParseReply(c.line)
		if err != nil {
			b.Fatalf("%s: %v", c.line, err)
		}
		r.Local = c.local
		replies[i] = r
	}
	var sink Decision
	for i, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sink = Classify(c.stage, replies[i])
			}
		})
	}
	b.Run("mix", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			sink = Classify(cases[i].stage, replies[i])
			i = (i + 1) % len(cases)
		}
	})
	_ = sink
}
