// Package testlog is what tests need to read relayq's log while it runs: a
// buffer the logger's goroutines and the test may use at once. It is
// imported by tests only.
package testlog

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Buffer is a log destination safe for concurrent writers and readers.
// The zero Buffer is empty and ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Events returns the JSON log lines (zerolog's) whose message is msg,
// decoded.
func (l *Buffer) Events(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil && ev["message"] == msg {
			out = append(out, ev)
		}
	}
	return out
}
