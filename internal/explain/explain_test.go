package explain

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"relayq/internal/smtpreply"
)

// seedCodes reads testdata/exchange_codes.txt: the codes of Exchange's
// table of enhanced status codes.
func seedCodes(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "exchange_codes.txt"))
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
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(codes) < 30 {
		t.Fatalf("only %d codes in the seed list", len(codes))
	}
	return codes
}

// TestSeedCodeListMatchesSeed keeps testdata/exchange_codes.txt honest when
// the seed file sits beside the checkout (../../../shared, as in CI).
func TestSeedCodeListMatchesSeed(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "seeds", "003_*.txt"))
	if len(files) == 0 {
		t.Skip("shared/seeds/003_*.txt is not beside the checkout")
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	// The seed puts a no-break space after the colon.
	re := regexp.MustCompile(`Numeric Code:[\s\x{00A0}]*([245]\.\d{1,3}\.\d{1,3})`)
	var fromSeed []string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		fromSeed = append(fromSeed, m[1])
	}
	if got := seedCodes(t); !slices.Equal(got, fromSeed) {
		t.Errorf("testdata list %v\nseed file        %v", got, fromSeed)
	}
}

func TestExplainEverySeedCode(t *testing.T) {
	for _, s := range seedCodes(t) {
		c, err := smtpreply.ParseEnhanced(s)
		if err != nil {
			t.Fatal(err)
		}
		e := Lookup(c)
		if !e.Known {
			t.Errorf("%s is not in the table", s)
			continue
		}
		if !strings.HasPrefix(e.Summary, s+" ") || strings.ContainsAny(e.Summary, "\r\n") {
			t.Errorf("%s: summary %q", s, e.Summary)
		}
		if len(e.Causes) == 0 || len(e.Fixes) == 0 || e.Hint == "" {
			t.Errorf("%s: causes %d, fixes %d, hint %q", s, len(e.Causes), len(e.Fixes), e.Hint)
		}
	}
}

// The pairs RFC 3463 §3 defines, X.0.0 … X.7.7; the table must know them all.
var rfc3463 = [][2]int{
	{0, 0},
	{1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}, {1, 5}, {1, 6}, {1, 7}, {1, 8},
	{2, 0}, {2, 1}, {2, 2}, {2, 3}, {2, 4},
	{3, 0}, {3, 1}, {3, 2}, {3, 3}, {3, 4}, {3, 5},
	{4, 0}, {4, 1}, {4, 2}, {4, 3}, {4, 4}, {4, 5}, {4, 6}, {4, 7},
	{5, 0}, {5, 1}, {5, 2}, {5, 3}, {5, 4}, {5, 5},
	{6, 0}, {6, 1}, {6, 2}, {6, 3}, {6, 4}, {6, 5},
	{7, 0}, {7, 1}, {7, 2}, {7, 3}, {7, 4}, {7, 5}, {7, 6}, {7, 7},
}

func TestExplainCoversRFC3463(t *testing.T) {
	for _, p := range rfc3463 {
		for _, class := range []int{4, 5} {
			c := smtpreply.EnhancedCode{class, p[0], p[1]}
			if e := Lookup(c); !e.Known || e.Subject == "" || e.Class == "" {
				t.Errorf("%s: %+v", c, e)
			}
		}
	}
}

// TestCodeTableEntriesAreComplete checks the form of every entry, so that
// the NDR and `relayq explain` never print half an explanation.
func TestCodeTableEntriesAreComplete(t *testing.T) {
	codes := Codes()
	if len(codes) < len(rfc3463)+20 {
		t.Fatalf("Codes() lists %d pairs", len(codes))
	}
	info := map[[2]int]bool{{1, 5}: true, {1, 9}: true, {3, 6}: true, {6, 4}: true} // success or information only
	for _, p := range codes {
		in := details[p]
		name := func() string { return smtpreply.EnhancedCode{5, p[0], p[1]}.String() }
		if in.name == "" || !unicode.IsUpper(rune(in.name[0])) {
			t.Errorf("%s: name %q", name(), in.name)
		}
		if in.means == "" || unicode.IsUpper(rune(in.means[0])) || strings.HasSuffix(in.means, ".") {
			t.Errorf("%s: means %q: want lower case without a final period", name(), in.means)
		}
		if len(in.causes) == 0 || len(in.fixes) == 0 {
			t.Errorf("%s: no causes or fixes", name())
		}
		switch {
		case info[p] && in.hint != "":
			t.Errorf("%s: an informational code has a hint", name())
		case !info[p] && (in.hint == "" || !strings.HasSuffix(in.hint, ".")):
			t.Errorf("%s: hint %q: want one sentence", name(), in.hint)
		}
		if s := Summary(smtpreply.EnhancedCode{5, p[0], p[1]}); len(s) > 160 {
			t.Errorf("%s: summary is %d bytes, too long for one line", name(), len(s))
		}
	}
}

func TestExplainFallsBackToClassAndSubject(t *testing.T) {
	tests := []struct {
		code    smtpreply.EnhancedCode
		summary string
		hint    string
	}{
		{smtpreply.EnhancedCode{5, 1, 99}, "5.1.99 Unregistered addressing status code: a problem with the recipient's or the sender's address", subjects[1].hint},
		{smtpreply.EnhancedCode{4, 7, 500}, "4.7.500 Unregistered security or policy status code: the message was refused for security or policy reasons", subjects[7].hint},
		{smtpreply.EnhancedCode{5, 9, 1}, "5.9.1 Unregistered status code: class 5, permanent failure: the message is not retried as it is", ""},
		{smtpreply.EnhancedCode{2, 6, 0}, "2.6.0 Success: other or undefined media error", ""},
	}
	for _, tt := range tests {
		e := Lookup(tt.code)
		if e.Summary != tt.summary || e.Hint != tt.hint {
			t.Errorf("Lookup(%s) = %q / %q, want %q / %q", tt.code, e.Summary, e.Hint, tt.summary, tt.hint)
		}
		if e.Known != (tt.code.Class() == 2) {
			t.Errorf("Lookup(%s).Known = %v", tt.code, e.Known)
		}
	}
	if Hint(smtpreply.EnhancedCode{}) != "" || Hint(smtpreply.CodeOK) != "" || Summary(smtpreply.EnhancedCode{}) != "" {
		t.Error("the zero code and success have no hint and no summary")
	}
	if Hint(smtpreply.CodeBadMailbox) != Lookup(smtpreply.CodeBadMailbox).Hint {
		t.Error("Hint and Explain disagree")
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		arg      string
		first    string   // the first line
		contains []string // further lines
		absent   []string
	}{
		{"4.3.2", Summary(smtpreply.CodeTooManyConns),
			[]string{"Class:    4.x.x, persistent transient failure", "Likely causes:", "concurrent connections", "What you can do:"},
			[]string{"Reply:", "relayq:"}},
		{"421 4.3.2", Summary(smtpreply.CodeTooManyConns),
			[]string{"Reply:    421 4.3.2", "Code:     421: service not available", "relayq:   closes the connection; with other connections to the destination open, lowers its connection cap"},
			[]string{"Note:"}},
		{"  452 4.3.1 Insufficient system resources  ", Summary(smtpreply.CodeTempResources),
			[]string{"Reply:    452 4.3.1 Insufficient system resources", "back pressure", "relayq:   defers and retries with backoff"}, nil},
		{"552 4.3.1 Insufficient system resources", Summary(smtpreply.EnhancedCode{5, 3, 1}),
			[]string{"Note:     basic code 552 and enhanced code 4.3.1 disagree in class; the basic code decides, so this is 5.3.1",
				"relayq:   at RCPT: temporary"}, nil},
		{"550 5.1.1 <bob@example.org>: Recipient address rejected", Summary(smtpreply.CodeBadMailbox),
			[]string{"relayq:   bounces the recipient at once"}, nil},
		{"535 5.7.8 Username and Password not accepted", Summary(smtpreply.EnhancedCode{5, 7, 8}),
			[]string{"relayq:   to AUTH (the smart host refused the relay's credentials or OAuth2 token): defers", "recorded as 4.7.8", "token_command"},
			[]string{"relayq:   bounces"}},
		{"550 no such user", Summary(smtpreply.CodePermGeneric), []string{"Code:     550: mailbox unavailable"}, nil},
		{"552 4.3.1 Message size exceeds fixed maximum message", Summary(smtpreply.CodeTooBig),
			[]string{"the basic code decides, so this is 5.3.1", "Note:     the text says the message is too big, so relayq reports 5.3.4"}, nil},
		{"421-4.7.0 busy", Summary(smtpreply.EnhancedCode{4, 7, 0}), []string{"closes the connection without QUIT"}, nil},
		{"5.1.99", "5.1.99 Unregistered addressing status code: a problem with the recipient's or the sender's address",
			[]string{"5.1.99 is not in relayq's table", "What you can do:"}, []string{"Likely causes:"}},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			out, err := Text(tt.arg)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(out, "\n")
			if first != tt.first {
				t.Errorf("first line %q, want %q", first, tt.first)
			}
			for _, s := range tt.contains {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
	for _, bad := range []string{"", "hello", "4.3", "6.1.1", "99 4.3.2"} {
		if out, err := Text(bad); err == nil {
			t.Errorf("Text(%q) = %q, want an error", bad, out)
		}
	}
}

// FuzzText: whatever the argument, Text neither panics nor
// prints a first line that is empty or holds a control character.
func FuzzText(f *testing.F) {
	for _, s := range []string{"4.4.7", "421 4.3.2", "452 4.3.1 Insufficient system resources", "552 4.3.1 Message size exceeds",
		"5.999.999", "250", "421-4.7.0 x\r\nBcc: y", "2.0.0", "550 \x00\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		out, err := Text(arg)
		if err != nil {
			return
		}
		first, _, _ := strings.Cut(out, "\n")
		if first == "" || strings.ContainsFunc(first, unicode.IsControl) {
			t.Errorf("Text(%q) first line %q", arg, first)
		}
	})
}
