package smtpreply

import (
	"testing"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Reply
	}{
		{"basic and enhanced", "452 4.3.1 Insufficient system resources", Reply{Code: 452, Enhanced: CodeTempResources, Text: "Insufficient system resources"}},
		{"basic only", "550 No such user", Reply{Code: 550, Text: "No such user"}},
		{"continuation separator", "421-4.3.2 busy", Reply{Code: 421, Enhanced: CodeTooManyConns, Text: "busy"}},
		{"code alone", "250", Reply{Code: 250}},
		{"surrounding space and CRLF", "  354 go ahead\r\n", Reply{Code: 354, Text: "go ahead"}},
		{"bare enhanced temporary gets 451", "4.4.7", Reply{Code: 451, Enhanced: CodeExpired}},
		{"bare enhanced permanent gets 550", "5.1.1 user unknown", Reply{Code: 550, Enhanced: CodeBadMailbox, Text: "user unknown"}},
		{"bare enhanced success gets 250", "2.0.0 ok", Reply{Code: 250, Enhanced: CodeOK, Text: "ok"}},
		{"class mismatch kept as sent", "552 4.3.1 full", Reply{Code: 552, Enhanced: CodeTempResources, Text: "full"}},
		{"enhanced with sign is text", "250 4.+1.2 hi", Reply{Code: 250, Text: "4.+1.2 hi"}},
		{"enhanced with minus zero is text", "250 4.-0.2", Reply{Code: 250, Text: "4.-0.2"}},
		{"enhanced with class 3 is text", "250 3.1.1 x", Reply{Code: 250, Text: "3.1.1 x"}},
		{"enhanced field too long is text", "550 5.1000.1 x", Reply{Code: 550, Text: "5.1000.1 x"}},
		{"tab after enhanced", "550 5.1.1\tgone", Reply{Code: 550, Enhanced: CodeBadMailbox, Text: "gone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReply(tt.line)
			if err != nil {
				t.Fatalf("ParseReply(%q): %v", tt.line, err)
			}
			if *got != tt.want {
				t.Errorf("ParseReply(%q) = %+v, want %+v", tt.line, *got, tt.want)
			}
		})
	}
}

func TestParseReplyRejects(t *testing.T) {
	for _, line := range []string{"", "   ", "25", "abc", "199 x", "600 x", "250x", "2500 x", "+25 x", "4.4", "4.4.7.1"} {
		if r, err := ParseReply(line); err == nil {
			t.Errorf("ParseReply(%q) = %+v, want an error", line, *r)
		}
	}
}

func TestParseEnhanced(t *testing.T) {
	good := map[string]EnhancedCode{"2.0.0": CodeOK, "4.4.7": CodeExpired, "5.1.10": CodeNullMX, "5.999.999": {5, 999, 999}, "4.01.1": {4, 1, 1}}
	for s, want := range good {
		if got, err := ParseEnhanced(s); err != nil || got != want {
			t.Errorf("ParseEnhanced(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "4.4", "1.0.0", "3.0.0", "6.0.0", "4..7", "4.4.7.", "4.+4.7", "4.-0.7", "4. 4.7", "4.1000.0", "x.y.z"} {
		if c, err := ParseEnhanced(s); err == nil {
			t.Errorf("ParseEnhanced(%q) = %v, want an error", s, c)
		}
	}
}

func TestReplyErrorFormatsReplyLine(t *testing.T) {
	tests := []struct {
		r    Reply
		want string
	}{
		{Reply{Code: 451, Enhanced: CodeTempLocal, Text: "try later"}, "451 4.3.0 try later"},
		{Reply{Code: 550, Text: "no"}, "550 no"},
		{Reply{Code: 250, Enhanced: CodeOK}, "250 2.0.0"},
		{Reply{Code: 221}, "221"},
	}
	for _, tt := range tests {
		if got := tt.r.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestReplyStatusBasicClassDecides(t *testing.T) {
	tests := []struct {
		name     string
		r        Reply
		want     EnhancedCode
		mismatch bool
	}{
		{"consistent kept", Reply{Code: 550, Enhanced: CodeBadMailbox}, CodeBadMailbox, false},
		{"552 4.3.1 becomes 5.3.1", Reply{Code: 552, Enhanced: CodeTempResources}, EnhancedCode{5, 3, 1}, true},
		{"452 5.5.3 becomes 4.5.3", Reply{Code: 452, Enhanced: CodeTooManyRcptsPerm}, CodeTooManyRcpts, true},
		{"250 5.0.0 becomes 2.0.0", Reply{Code: 250, Enhanced: CodePermGeneric}, CodeOK, true},
		{"4xx without enhanced is 4.0.0", Reply{Code: 451}, CodeTempGeneric, false},
		{"5xx without enhanced is 5.0.0", Reply{Code: 554}, CodePermGeneric, false},
		{"2xx without enhanced is 2.0.0", Reply{Code: 250}, CodeOK, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.Status(); got != tt.want {
				t.Errorf("Status() = %v, want %v", got, tt.want)
			}
			if got := tt.r.ClassMismatch(); got != tt.mismatch {
				t.Errorf("ClassMismatch() = %v, want %v", got, tt.mismatch)
			}
		})
	}
}

// FuzzParseReply: parsing never panics, and a parsed reply formatted with
// Error() parses back to the same codes.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"452 4.3.1 Insufficient system resources", "550 No such user",
		"421-4.3.2 busy", "4.4.7", "250", "552 4.3.1 x", "250 4.+1.2", "250-\t2.0.0 ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		r, err := ParseReply(line)
		if err != nil {
			return
		}
		if r.Code < 200 || r.Code > 599 {
			t.Fatalf("ParseReply(%q): code %d out of range", line, r.Code)
		}
		again, err := ParseReply(r.Error())
		if err != nil {
			t.Fatalf("ParseReply(%q).Error() = %q does not parse: %v", line, r.Error(), err)
		}
		if again.Code != r.Code || again.Enhanced != r.Enhanced {
			t.Fatalf("round trip of %q: %d %v, then %q: %d %v", line, r.Code, r.Enhanced, r.Error(), again.Code, again.Enhanced)
		}
		if class := r.Code / 100; class != 3 && r.Status().Class() != class {
			t.Fatalf("ParseReply(%q).Status() = %v, not of the basic class", line, r.Status())
		}
	})
}

func TestEnhancedCodeString(t *testing.T) {
	for c, want := range map[EnhancedCode]string{
		{}:            "",
		{2, 0, 0}:     "2.0.0",
		{4, 4, 7}:     "4.4.7",
		{5, 1, 10}:    "5.1.10",
		{4, 999, 999}: "4.999.999",
	} {
		if got := c.String(); got != want {
			t.Errorf("%v.String() = %q, want %q", [3]int(c), got, want)
		}
	}
}
