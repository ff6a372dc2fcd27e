package retry

import (
	"strings"
	"testing"

	"relayq/internal/smtpreply"
)

// TestDecisionsWithoutAReplyToClassify: the decisions the delivery side
// takes for recipients no reply decided.
func TestDecisionsWithoutAReplyToClassify(t *testing.T) {
	// A permanent failure before MAIL (a refused AUTH, "no such domain"
	// on the last host) still only defers recipients it never reached,
	// and the status recorded for them is a transient one.
	for _, c := range []struct {
		last *smtpreply.Reply
		want smtpreply.EnhancedCode
	}{
		{&smtpreply.Reply{Code: 451, Enhanced: smtpreply.CodeNoAnswer, Text: "connection refused", Local: true}, smtpreply.CodeNoAnswer},
		{&smtpreply.Reply{Code: 554, Enhanced: smtpreply.CodePermGeneric, Text: "no service"}, smtpreply.CodeTempGeneric},
		{&smtpreply.Reply{Code: 421, Enhanced: smtpreply.CodeTooManyConns, Text: "too many connections"}, smtpreply.CodeTooManyConns},
		// A smart host refusing the OAuth2 token or the password.
		{&smtpreply.Reply{Code: 535, Enhanced: smtpreply.EnhancedCode{5, 7, 8}, Text: "Username and Password not accepted"}, smtpreply.EnhancedCode{4, 7, 8}},
		{&smtpreply.Reply{Code: 535, Enhanced: smtpreply.EnhancedCode{5, 7, 3}, Text: "Authentication unsuccessful"}, smtpreply.EnhancedCode{4, 7, 3}},
		{&smtpreply.Reply{Code: 535, Text: "no"}, smtpreply.CodeTempGeneric},
	} {
		d := Unreached(c.last)
		if d.Action != Defer || d.Status != c.want {
			t.Errorf("Unreached(%v) = %+v, want Defer %s", c.last, d, c.want)
		}
		if c.last.Code == 535 && !strings.Contains(d.Note, "credentials") {
			t.Errorf("Unreached(%v) note %q does not say the credentials were refused", c.last, d.Note)
		}
	}
	r := &smtpreply.Reply{Code: 452, Enhanced: smtpreply.EnhancedCode{4, 5, 3}, Text: "too many recipients"}
	if d := Unsplit(r); d.Action != Defer || d.Status != r.Status() {
		t.Errorf("Unsplit = %+v", d)
	}
	d, rep := OperatorBounce()
	if d.Action != Bounce || d.Status != smtpreply.CodePermGeneric || !rep.Local || rep.Code != 550 {
		t.Errorf("OperatorBounce = %+v, %v", d, rep)
	}
}
