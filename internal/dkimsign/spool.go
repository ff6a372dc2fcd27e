package dkimsign

import (
	"bytes"
	"io"
	"os"
)

// spool keeps a message while it is signed: its first limit bytes in
// memory, the rest in a file that is unlinked as soon as it is made (on
// Unix; elsewhere at Close), so that a crash leaves nothing behind.
type spool struct {
	dir   string
	limit int
	mem   []byte
	f     *os.File
	name  string // of f while it is still linked
	n     int64  // bytes in f
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil {
		if len(s.mem)+len(p) <= s.limit {
			s.mem = append(s.mem, p...)
			return len(p), nil
		}
		f, err := os.CreateTemp(s.dir, "relayq-dkim-*")
		if err != nil {
			return 0, err
		}
		s.f = f
		if os.Remove(f.Name()) != nil {
			s.name = f.Name()
		}
	}
	n, err := s.f.Write(p)
	s.n += int64(n)
	return n, err
}

// reader returns the spooled bytes from the start.
func (s *spool) reader() io.Reader {
	if s.f == nil {
		return bytes.NewReader(s.mem)
	}
	return io.MultiReader(bytes.NewReader(s.mem), io.NewSectionReader(s.f, 0, s.n))
}

// spilled reports whether part of the message went to a file.
func (s *spool) spilled() bool { return s.f != nil }

func (s *spool) Close() error {
	s.mem = nil
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	if s.name != "" {
		os.Remove(s.name)
	}
	s.f = nil
	return err
}
