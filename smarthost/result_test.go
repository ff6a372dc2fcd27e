package smarthost

import (
	"encoding/json"
	"testing"
)

// TestResultWords: a Result reads as the word logs, events, metrics and
// JSON have always carried.
func TestResultWords(t *testing.T) {
	want := []string{"delivered", "deferred", "bounced", "expired"}
	for i, r := range Results() {
		if r.String() != want[i] {
			t.Errorf("Results()[%d] = %q, want %q", i, r, want[i])
		}
	}
	b, err := json.Marshal(Outcome{Result: ResultBounced})
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil || back["Result"] != "bounced" {
		t.Errorf("JSON %s (%v)", b, err)
	}
	if Result(0).String() != "unknown" {
		t.Errorf("the zero Result reads %q", Result(0))
	}
}
