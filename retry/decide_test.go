package retry

import (
	"testing"

	"relayq/internal/smtpreply"
)

// TestDecisionsWithoutAReplyToClassify: the decisions the delivery side
// takes for recipients no reply decided.
func TestDecisionsWithoutAReplyToClassify(t *testing.T) {
	// A permanent failure before MAIL (a refused AUTH, "no such domain"
	// on the last host) still only defers recipients it never reached.
	for _, last := range []*smtpreply.Reply{
		{Code: 451, Enhanced: smtpreply.CodeNoAnswer, Text: "connection refused", Local: true},
		{Code: 554, Enhanced: smtpreply.CodePermGeneric, Text: "no service"},
		{Code: 421, Enhanced: smtpreply.CodeTooManyConns, Text: "too many connections"},
	} {
		d := Unreached(last)
		if d.Action != Defer || d.Status != Classify(StageConnect, last).Status {
			t.Errorf("Unreached(%v) = %+v, want Defer with Classify's status", last, d)
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
