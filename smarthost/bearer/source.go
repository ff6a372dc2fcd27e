package bearer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"relayq/internal/smtpreply"
	"relayq/smarthost/smtpclient"
)

const (
	// DefaultTimeout bounds one run of a token command: an OAuth2 token
	// endpoint answers in seconds, and deliveries wait for the run.
	DefaultTimeout = 30 * time.Second
	// maxOutput bounds what is kept of a command's output: a token is a
	// few kilobytes.
	maxOutput = 64 << 10
	// maxStderrLog is how much of a failed command's standard error is
	// logged.
	maxStderrLog = 512
)

// Options configure a Source. Exactly one of File and Command is set.
type Options struct {
	Name     string   // the configuration table, for the log: "delivery.route[1]"
	File     string   // token_file
	Command  []string // token_command: program and arguments
	Lifetime time.Duration
	Timeout  time.Duration // of one command run; 0 = DefaultTimeout
	Log      zerolog.Logger
	Now      func() time.Time // nil = time.Now
}

// Source is the bearer token of one route. Its methods are safe for
// concurrent use.
type Source struct {
	o  Options
	mu struct {
		sync.Mutex
		token  string
		got    time.Time // when the command printed token
		stamp  stamp     // the file's when token was read from it
		flight *flight   // the command run under way, if any
	}
}

var _ smtpclient.TokenSource = (*Source)(nil)

// stamp is what tells that a file changed.
type stamp struct {
	mod  time.Time
	size int64
}

// flight is one run of the command; done is closed when token or err is
// set.
type flight struct {
	done  chan struct{}
	token string
	err   error
}

// New returns a Source for o.
func New(o Options) *Source {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Source{o: o}
}

// Token returns the current token: from the file, read again if it
// changed, or from the command, run again if the token is older than the
// lifetime.
func (s *Source) Token(ctx context.Context) (string, error) {
	if s.o.File != "" {
		return s.fromFile(false)
	}
	s.mu.Lock()
	tok, fresh := s.mu.token, s.o.Now().Sub(s.mu.got) < s.o.Lifetime
	s.mu.Unlock()
	if tok != "" && fresh {
		return tok, nil
	}
	return s.run(ctx, "")
}

// Refused logs the next hop's refusal of tok and returns a newer token:
// the file's if it now holds another one, or the command's (run again
// unless another delivery already replaced tok). It returns "" when there
// is none newer.
func (s *Source) Refused(ctx context.Context, tok string, r *smtpreply.Reply) (string, error) {
	ev := s.o.Log.Warn().Str("route", s.o.Name).Int("code", r.Code).Str("enhanced", r.Status().String()).Str("reply", r.Error())
	if s.o.File != "" {
		fresh, err := s.fromFile(true)
		if err == nil && fresh == tok {
			ev.Str("token_file", s.o.File).Msg("the smart host refused the OAuth2 token, and token_file holds no newer one; the mail waits for it")
			return "", nil
		}
		ev.Str("token_file", s.o.File).Msg("the smart host refused the OAuth2 token; trying the one token_file holds now")
		return fresh, err
	}
	ev.Msg("the smart host refused the OAuth2 token; running token_command for a new one")
	fresh, err := s.run(ctx, tok)
	if err != nil || fresh == tok {
		return "", err
	}
	return fresh, nil
}

// fromFile returns the file's token, read again when force is set or the
// file changed since the last read.
func (s *Source) fromFile(force bool) (string, error) {
	fi, err := os.Stat(s.o.File)
	if err != nil {
		return "", s.fail(fmt.Errorf("token_file: %w", err), "")
	}
	st := stamp{fi.ModTime(), fi.Size()}
	s.mu.Lock()
	tok, same := s.mu.token, s.mu.stamp == st
	s.mu.Unlock()
	if tok != "" && same && !force {
		return tok, nil
	}
	f, err := os.Open(s.o.File)
	if err != nil {
		return "", s.fail(fmt.Errorf("token_file: %w", err), "")
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxOutput+1))
	if err != nil {
		return "", s.fail(fmt.Errorf("token_file: %w", err), "")
	}
	tok, err = parseToken(b)
	if err != nil {
		return "", s.fail(fmt.Errorf("token_file %s %w", s.o.File, err), "")
	}
	s.mu.Lock()
	s.mu.token, s.mu.stamp = tok, st
	s.mu.Unlock()
	return tok, nil
}

// run returns a token from the command: the one a run under way prints,
// or a new run's. With stale set (a refused token) and a current token
// that is no longer stale, another delivery has replaced it: that one is
// returned without a run. A run outlives the caller's ctx; the caller
// stops waiting when ctx ends.
func (s *Source) run(ctx context.Context, stale string) (string, error) {
	s.mu.Lock()
	if stale != "" && s.mu.token != "" && s.mu.token != stale {
		tok := s.mu.token
		s.mu.Unlock()
		return tok, nil
	}
	f := s.mu.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		s.mu.flight = f
		go s.fly(context.WithoutCancel(ctx), f)
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// fly runs the command once for f.
func (s *Source) fly(ctx context.Context, f *flight) {
	start := s.o.Now()
	tok, stderr, err := s.execute(ctx)
	if err != nil {
		err = s.fail(err, stderr)
	} else {
		s.o.Log.Info().Str("route", s.o.Name).Dur("took", s.o.Now().Sub(start)).Msg("token_command gave a new OAuth2 token")
	}
	s.mu.Lock()
	if err == nil {
		s.mu.token, s.mu.got = tok, start
	}
	s.mu.flight = nil
	f.token, f.err = tok, err
	s.mu.Unlock()
	close(f.done)
}

// execute runs the command with the timeout and returns its token, or an
// error and its standard error.
func (s *Source) execute(ctx context.Context) (tok, stderr string, err error) {
	if len(s.o.Command) == 0 {
		return "", "", errors.New("token_command is empty")
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.o.Command[0], s.o.Command[1:]...)
	var out, errOut capped
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, &out, &errOut
	// A child the command left behind may hold the pipes open: stop
	// waiting for them soon after the command is gone.
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	stderr = errOut.String()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return "", stderr, fmt.Errorf("token_command %s timed out after %v", s.o.Command[0], s.o.Timeout)
	case err != nil:
		return "", stderr, fmt.Errorf("token_command %s: %w", s.o.Command[0], err)
	}
	tok, err = parseToken(out.Bytes())
	if err != nil {
		return "", stderr, fmt.Errorf("token_command %s %w", s.o.Command[0], err)
	}
	return tok, "", nil
}

// fail logs err (and a command's standard error) as a warning naming the
// route, and returns err.
func (s *Source) fail(err error, stderr string) error {
	ev := s.o.Log.Warn().Str("route", s.o.Name).Err(err)
	if stderr = strings.TrimSpace(stderr); stderr != "" {
		ev = ev.Str("stderr", truncate(stderr, maxStderrLog))
	}
	ev.Msg("no OAuth2 token for the smart host")
	return err
}

// parseToken returns the token in b, which must be one word of printable
// ASCII (RFC 6750 §2.1's b64token, a JWT): the error never quotes b.
func parseToken(b []byte) (string, error) {
	if len(b) > maxOutput {
		return "", fmt.Errorf("is longer than %d bytes: not a token", maxOutput)
	}
	tok := string(bytes.TrimSpace(b))
	switch {
	case tok == "":
		return "", errors.New("gave no token (empty)")
	case strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }):
		return "", errors.New("gave more than one word or non-ASCII characters: not a token")
	}
	return tok, nil
}

// truncate cuts s to at most n bytes, on a character boundary, marking
// the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// capped is a bytes.Buffer that keeps the first maxOutput+1 bytes written
// to it and discards the rest (so that a runaway command cannot fill the
// memory, and a too-long output is still seen as such).
type capped struct{ bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxOutput + 1 - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
