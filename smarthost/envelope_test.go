package smarthost

import (
	"testing"

	"relayq/internal/smtpreply"
	"relayq/queue"
)

// TestEnvelopeEndsRecipientsAtTooManyRecipients: the envelope the worker
// hands the client carries retry's rule for the RCPT refusal after which
// no further RCPT goes in the transaction (the client has none of its own).
func TestEnvelopeEndsRecipientsAtTooManyRecipients(t *testing.T) {
	m := &queue.Message{Envelope: queue.Envelope{From: "a@src.invalid", Recipients: []queue.Recipient{{Addr: "b@dst.invalid"}}}}
	env := envelopeFor(m, []int{0}, Rewrite{})
	if env.EndsRcpts == nil {
		t.Fatal("envelopeFor gives no EndsRcpts: the client would send every RCPT after a 452 4.5.3")
	}
	for _, c := range []struct {
		reply string
		want  bool
	}{
		{"452 4.5.3 Too many recipients", true},
		{"550 5.1.1 no such user", false},
	} {
		r, err := smtpreply.ParseReply(c.reply)
		if err != nil {
			t.Fatal(err)
		}
		if got := env.EndsRcpts(r); got != c.want {
			t.Errorf("EndsRcpts(%q) = %v, want %v", c.reply, got, c.want)
		}
	}
}
