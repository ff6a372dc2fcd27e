package maildrop

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzOpen feeds arbitrary files to Open: any user of the maildrop group
// can write one. Open must never panic; what it accepts, Write must accept
// and write back to the same envelope and message; what it refuses for its
// content must be ErrMalformed.
func FuzzOpen(f *testing.F) {
	f.Add([]byte("relayq-maildrop 1\nfrom <a@x>\nto <b@y>\nsize 4\n\nbody"))
	f.Add([]byte("relayq-maildrop 1\nfrom <>\nto <b@y>\nto <c@y>\nsize 0\n\n"))
	f.Add([]byte("relayq-maildrop 1\nfrom <a@x>\nsize 1\nto <b@y>\n\nx"))
	f.Add([]byte("relayq-maildrop 1\r\nfrom <a@x>\r\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(dir, "f")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := Open(path)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("a file's content gave an error that is not ErrMalformed: %v", err)
			}
			return
		}
		defer m.Close()
		body, err := io.ReadAll(m.Body)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Write(t.TempDir(), m.Envelope, bytes.NewReader(body), m.Size)
		if err != nil {
			t.Fatalf("Open accepted what Write refuses: %v", err)
		}
		// Open accepts the envelope lines in any order, Write has its own:
		// the parsed parts are compared.
		m2, err := Open(again)
		if err != nil {
			t.Fatal(err)
		}
		defer m2.Close()
		body2, _ := io.ReadAll(m2.Body)
		if m2.From != m.From || !slices.Equal(m2.To, m.To) || !bytes.Equal(body2, body) {
			t.Fatalf("round trip of %q gave %q → %q, %q", content, m2.From, m2.To, body2)
		}
	})
}
