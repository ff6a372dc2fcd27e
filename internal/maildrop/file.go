package maildrop

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// magic is the first line of every maildrop file; the number is the
// format's version.
const magic = "relayq-maildrop 1"

// maxLine bounds an envelope line: an address is at most 256 octets
// (RFC 5321 §4.5.3.1.3), with room to spare for UTF-8 addresses.
const maxLine = 1024

// tmpPrefix starts the name of a file being written; Pickup never reads
// such a file.
const tmpPrefix = ".tmp-"

// FileMode is the mode of a maildrop file: the relayq daemon, which owns
// the directory but not the file (the user who ran sendmail does), must be
// able to read it. Other users cannot find it: the directory is not
// readable to them, and the name is random.
const FileMode = 0o644

// ErrMalformed is wrapped by every error that says a maildrop file is not
// in the format: Pickup moves such a file aside instead of trying it again.
var ErrMalformed = errors.New("malformed maildrop file")

// Envelope is the SMTP envelope of a dropped message.
type Envelope struct {
	From string   // "" is the null sender
	To   []string // at least one
}

func (e Envelope) check() error {
	if len(e.To) == 0 {
		return fmt.Errorf("%w: no recipient", ErrMalformed)
	}
	for _, a := range append([]string{e.From}, e.To...) {
		if strings.ContainsFunc(a, func(r rune) bool { return r < ' ' || r == 0x7f || r == '<' || r == '>' }) || len(a) > maxLine-8 {
			return fmt.Errorf("%w: address %q", ErrMalformed, a)
		}
	}
	for _, a := range e.To {
		if a == "" {
			return fmt.Errorf("%w: empty recipient", ErrMalformed)
		}
	}
	return nil
}

// Write puts a message into the maildrop directory dir: env, then size
// bytes of message read from body. It writes a file with a temporary name,
// fsyncs it, renames it to its final name and fsyncs the directory, so
// that a file with a final name is always complete and survives a crash
// once Write has returned nil. It returns the final path.
//
// A writer without read permission on dir (a user of the maildrop group:
// the directory is mode 1730) cannot open it to fsync it; the rename is
// then made durable by syncing the file system (syncfs(2) on Linux).
func Write(dir string, env Envelope, body io.Reader, size int64) (_ string, err error) {
	if err := env.check(); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(FileMode); err != nil { // not the umask's mode
		return "", err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "%s\nfrom <%s>\n", magic, env.From)
	for _, to := range env.To {
		fmt.Fprintf(w, "to <%s>\n", to)
	}
	fmt.Fprintf(w, "size %d\n\n", size)
	n, err := io.Copy(w, io.LimitReader(body, size+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("reading the message: %w", err)
	case n != size:
		return "", fmt.Errorf("the message has %d bytes, not the %d announced", n, size)
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	final := filepath.Join(dir, newName())
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	if err := syncDir(dir, f); err != nil {
		// The file is complete under its final name; only its durability
		// across a crash is in doubt. Taking it back is the safe answer.
		os.Remove(final)
		return "", fmt.Errorf("syncing %s: %w", dir, err)
	}
	return final, nil
}

// newName returns a final file name: the time in nanoseconds, so that a
// directory listing sorts in arrival order, and a random part, so that
// names neither collide nor can be guessed.
func newName() string {
	return fmt.Sprintf("%019d.%s", time.Now().UnixNano(), strings.ToLower(rand.Text()[:16]))
}

// File is an open maildrop file.
type File struct {
	Envelope
	// Body is the message: Size bytes with CRLF line endings.
	Body *io.SectionReader
	Size int64
	f    *os.File
}

// Close closes the file.
func (m *File) Close() error { return m.f.Close() }

// Open opens and checks the maildrop file at path. An error wrapping
// ErrMalformed means the file is not in the format, or holds fewer or more
// message bytes than its envelope announces; other errors are I/O errors.
//
// Only a regular file is opened: a symbolic link (to a file the writer
// could not read itself), a FIFO (that would block the pickup) or a device
// in the directory is malformed.
func Open(path string) (*File, error) {
	lst, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !lst.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file (%s)", ErrMalformed, lst.Mode().Type())
	}
	// O_NONBLOCK: the writer may have put a FIFO in the file's place since
	// the Lstat, and opening one blocks until someone writes to it. parse
	// then finds that it is not the file Lstat saw.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	m, err := parse(f, lst)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

// parse reads the envelope of f, which Lstat described as lst.
func parse(f *os.File, lst os.FileInfo) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !os.SameFile(st, lst) {
		return nil, fmt.Errorf("%w: replaced while being opened", ErrMalformed)
	}
	r := bufio.NewReaderSize(f, maxLine)
	var (
		m       = &File{f: f, Size: -1}
		offset  int64
		hasFrom bool
	)
	for i := 0; ; i++ {
		line, err := r.ReadSlice('\n')
		offset += int64(len(line))
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, bufio.ErrBufferFull):
			return nil, fmt.Errorf("%w: the envelope does not end", ErrMalformed)
		case err != nil:
			return nil, err
		}
		l := string(line[:len(line)-1])
		if i == 0 {
			if l != magic {
				return nil, fmt.Errorf("%w: first line %q, want %q", ErrMalformed, truncate(l), magic)
			}
			continue
		}
		if l == "" {
			break
		}
		key, value, _ := strings.Cut(l, " ")
		addr, isAddr := strings.CutPrefix(value, "<")
		addr, closed := strings.CutSuffix(addr, ">")
		switch {
		case key == "from" && isAddr && closed && !hasFrom:
			m.From, hasFrom = addr, true
		case key == "to" && isAddr && closed:
			m.To = append(m.To, addr)
		case key == "size" && m.Size < 0:
			if m.Size, err = strconv.ParseInt(value, 10, 64); err != nil || m.Size < 0 {
				return nil, fmt.Errorf("%w: size %q", ErrMalformed, truncate(value))
			}
		default:
			return nil, fmt.Errorf("%w: envelope line %q", ErrMalformed, truncate(l))
		}
	}
	switch {
	case !hasFrom:
		return nil, fmt.Errorf("%w: no sender", ErrMalformed)
	case m.Size < 0:
		return nil, fmt.Errorf("%w: no size", ErrMalformed)
	case st.Size()-offset != m.Size:
		return nil, fmt.Errorf("%w: %d message bytes, the envelope says %d", ErrMalformed, st.Size()-offset, m.Size)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	m.Body = io.NewSectionReader(f, offset, m.Size)
	return m, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
