package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"relayq/internal/explain"
	"relayq/internal/smtpreply"
)

// runExplain runs `relayq explain args...` and returns its output and exit
// code.
func runExplain(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{
		Name:           "relayq",
		Commands:       []*cli.Command{explainCommand()},
		Writer:         &out,
		ErrWriter:      &errOut,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.Run(append([]string{"relayq", "explain"}, args...))
	return out.String(), exitCode(err)
}

// exchangeCodes reads the codes of Exchange's table of enhanced status
// codes, kept in internal/explain's testdata (its tests check that list against
// the operator report it came from, when that sits beside the checkout).
func exchangeCodes(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "internal", "explain", "testdata", "exchange_codes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var codes []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			codes = append(codes, l)
		}
	}
	if len(codes) < 30 {
		t.Fatalf("%d codes read", len(codes))
	}
	return codes
}

func TestExplainPrintsASummaryForEveryExchangeCode(t *testing.T) {
	for _, code := range exchangeCodes(t) {
		out, exit := runExplain(t, code)
		first, rest, _ := strings.Cut(out, "\n")
		c, err := smtpreply.ParseEnhanced(code)
		if err != nil {
			t.Fatal(err)
		}
		if exit != 0 || first != explain.Summary(c) || !strings.HasPrefix(first, code+" ") || strings.Contains(first, "Unregistered") {
			t.Errorf("explain %s: exit %d, first line %q", code, exit, first)
		}
		if !strings.Contains(rest, "Likely causes:\n  - ") || !strings.Contains(rest, "What you can do:\n  - ") {
			t.Errorf("explain %s: no causes or fixes:\n%s", code, out)
		}
	}
}

func TestExplainAcceptsReplyLines(t *testing.T) {
	tests := []struct {
		args  []string
		first string
		also  string
	}{
		{[]string{"421 4.3.2"}, "4.3.2 System not accepting network messages", "Reply:    421 4.3.2"},
		{[]string{"452 4.3.1 Insufficient system resources"}, "4.3.1 Mail system full", "Reply:    452 4.3.1 Insufficient system resources"},
		{[]string{"552", "5.3.4", "Message", "size", "exceeds", "fixed", "maximum", "message", "size"}, "5.3.4 Message too big for system",
			"Reply:    552 5.3.4 Message size exceeds fixed maximum message size"},
		{[]string{"5.7.99"}, "5.7.99 Unregistered security or policy status code", "not in relayq's table"},
	}
	for _, tt := range tests {
		out, exit := runExplain(t, tt.args...)
		first, _, _ := strings.Cut(out, "\n")
		if exit != 0 || !strings.HasPrefix(first, tt.first) || !strings.Contains(out, tt.also) {
			t.Errorf("explain %q: exit %d:\n%s", tt.args, exit, out)
		}
	}
}

func TestExplainRejectsWhatIsNoCode(t *testing.T) {
	for _, args := range [][]string{nil, {"hello"}, {"7.1.1"}} {
		if out, exit := runExplain(t, args...); exit != 2 || out != "" {
			t.Errorf("explain %q: exit %d, output %q; want 2 and nothing on stdout", args, exit, out)
		}
	}
}
