package main

import (
	"strings"
	"testing"
	"time"

	"relayq/config"
)

func TestLogWarnIsWrittenAtOnceWithWhatCameBefore(t *testing.T) {
	var out logBuffer
	log, closer, err := newLogger(config.Log{Format: config.LogFormatJSON, Level: "info"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	// An hour-long interval would hold the info line; the warn takes it out.
	log.Info().Msg("first")
	if got := out.String(); got != "" && !strings.Contains(got, "first") {
		t.Fatalf("unexpected output %q", got)
	}
	log.Warn().Msg("second")
	got := out.String()
	if !strings.Contains(got, `"message":"first"`) || !strings.Contains(got, `"message":"second"`) ||
		strings.Index(got, "first") > strings.Index(got, "second") {
		t.Fatalf("after a warn, the output should hold both lines in order; got %q", got)
	}
}

func TestLogInfoIsWrittenWithinTheFlushInterval(t *testing.T) {
	var out logBuffer
	b := newBatchedLog(&out, 20*time.Millisecond)
	defer b.Close()
	if _, err := b.Write([]byte("info line\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for out.String() == "" {
		if time.Now().After(deadline) {
			t.Fatal("a buffered line was not written within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := out.String(); got != "info line\n" {
		t.Fatalf("got %q", got)
	}
}

func TestLogCloseWritesWhatIsBufferedAndLaterLinesGoStraightOut(t *testing.T) {
	var out logBuffer
	b := newBatchedLog(&out, time.Hour)
	if _, err := b.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "" {
		t.Fatalf("an info line was written before the interval: %q", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "one\n" {
		t.Fatalf("after Close: %q", got)
	}
	if _, err := b.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "one\ntwo\n" {
		t.Fatalf("a line after Close: %q", got)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
