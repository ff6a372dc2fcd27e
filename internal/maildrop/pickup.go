package maildrop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// Submitter hands a message to relayq's intake.
type Submitter interface {
	// Submit sends the message, size bytes read from body, from env.From
	// to every address of env.To, and returns once the intake has
	// answered, with the text of its reply to the message (relayq's names
	// the queue ID), for the log. nil means the message is queued (committed) for every
	// recipient; RecipientErrors means some recipients (or all: then
	// nothing was queued) were refused and the message is queued for the
	// others; any other error means it was queued for none, and
	// retry.FromError says whether for now or for good.
	Submit(ctx context.Context, env Envelope, body io.Reader, size int64) (string, error)
}

// Refusal is a recipient a message was not queued for, and the reply that
// said why.
type Refusal struct {
	Rcpt  string
	Reply *smtpreply.Reply
}

// RecipientErrors is a Submitter's error when recipients were refused one
// by one (at RCPT).
type RecipientErrors []Refusal

func (e RecipientErrors) Error() string {
	s := make([]string, len(e))
	for i, r := range e {
		s[i] = fmt.Sprintf("<%s>: %v", r.Rcpt, r.Reply)
	}
	return strings.Join(s, "; ")
}

// Result sorts the recipients of a message after a submission.
type Result struct {
	// Later are the recipients to submit again: refused for now (4xx), or
	// all of them when the message as a whole failed for now (no
	// connection, 4xx at MAIL or after DATA).
	Later []string
	// Refused are the recipients refused for good (5xx), each with its
	// reply; all of them when the message as a whole was refused.
	Refused []Refusal
}

// Sort turns the error a Submitter returned for env into a Result. What is
// for now and what is for good is retry.Classify's verdict: a reply it
// bounces is for good, anything else (4.5.3 "too many recipients"
// included) is tried again.
func Sort(env Envelope, err error) Result {
	var res Result
	var rcpts RecipientErrors
	switch {
	case err == nil:
	case errors.As(err, &rcpts):
		for _, r := range rcpts {
			if retry.Classify(retry.StageRcpt, r.Reply).Action == retry.Bounce {
				res.Refused = append(res.Refused, r)
			} else {
				res.Later = append(res.Later, r.Rcpt)
			}
		}
	default:
		reply := retry.FromError(retry.StageMail, err)
		if retry.Classify(retry.StageMail, reply).Action != retry.Bounce {
			res.Later = env.To
			break
		}
		for _, to := range env.To {
			res.Refused = append(res.Refused, Refusal{Rcpt: to, Reply: reply})
		}
	}
	return res
}

// DefaultInterval is how often Pickup looks into the directory.
const DefaultInterval = time.Second

// staleTemp is the age after which a file still under a temporary name is
// taken for the leftover of a writer that died, and removed.
const staleTemp = 24 * time.Hour

// Pickup submits the files of a maildrop directory to relayq's intake and
// removes each once the intake has queued it. It is not safe for
// concurrent use: one goroutine runs it.
type Pickup struct {
	Dir      string
	Submit   Submitter
	Log      zerolog.Logger
	Interval time.Duration // between scans; 0 means DefaultInterval

	deferring bool            // a failure for now was logged, no success since
	stuck     map[string]bool // files that could be neither taken nor moved aside
}

// Run scans the directory at once and then every Interval until ctx is
// done.
func (p *Pickup) Run(ctx context.Context) {
	interval := p.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := p.Scan(ctx); err != nil {
			p.Log.Error().Err(err).Str("dir", p.Dir).Msg("maildrop: cannot read the directory")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Scan submits the files of the directory once each, oldest first, until
// ctx is done. It stops early at a message that failed for now as a whole
// (relayq is busy, or its listener is unreachable): the next ones would
// fail the same way, and the next scan tries again.
func (p *Pickup) Scan(ctx context.Context) error {
	entries, err := os.ReadDir(p.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return nil
		}
		name := e.Name()
		switch {
		case e.IsDir() || p.stuck[name]:
		case strings.HasPrefix(name, tmpPrefix):
			p.removeStale(e)
		case strings.HasPrefix(name, "."):
		default:
			if !p.take(ctx, name) {
				return nil
			}
		}
	}
	return nil
}

// take submits one file and reports whether the scan should go on.
func (p *Pickup) take(ctx context.Context, name string) bool {
	path := filepath.Join(p.Dir, name)
	m, err := Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true // gone meanwhile
	}
	if err != nil {
		p.moveAside(path, name, err)
		return true
	}
	defer m.Close()
	// A submission is not cut short by a stop: its reply decides whether
	// the file is removed, and the submitter's timeouts bound it.
	reply, err := p.Submit.Submit(context.WithoutCancel(ctx), m.Envelope, m.Body, m.Size)
	res := Sort(m.Envelope, err)
	log := p.Log.With().Str("file", name).Str("from", m.From).Logger()
	if len(res.Later) == len(m.To) {
		if !p.deferring {
			log.Warn().Strs("rcpt", res.Later).Msg("maildrop: relayq did not take the message for now; trying again every scan")
			p.deferring = true
		}
		return false
	}
	if p.deferring {
		log.Info().Msg("maildrop: relayq takes messages again")
		p.deferring = false
	}
	if err := p.keepRest(m, res); err != nil {
		// The message is queued for some recipients: submitting the file
		// again would send it to them twice. It stays until a restart.
		log.Error().Err(err).Msg("maildrop: cannot record the recipients left; the file stays, untouched until relayq restarts")
		p.markStuck(name)
		return true
	}
	if err := os.Remove(path); err != nil {
		log.Error().Err(err).Msg("maildrop: cannot remove a submitted file; it stays, untouched until relayq restarts")
		p.markStuck(name)
		return true
	}
	queued := len(m.To) - len(res.Later) - len(res.Refused)
	if queued == 0 {
		// Every recipient was refused (those for good logged above): an
		// operator grepping for "submitted" must not count it.
		log.Info().Int("later", len(res.Later)).Int("refused", len(res.Refused)).Msg("maildrop: queued for no recipient")
		return true
	}
	log.Info().Int("rcpts", queued).Str("reply", reply).Msg("maildrop: submitted")
	return true
}

// keepRest writes what is left of m after a submission: a file in
// RefusedDir for the recipients refused for good (each logged at error),
// and a new maildrop file for those to try again.
func (p *Pickup) keepRest(m *File, res Result) error {
	if len(res.Refused) > 0 {
		env := Envelope{From: m.From}
		for _, r := range res.Refused {
			env.To = append(env.To, r.Rcpt)
		}
		path, err := Write(filepath.Join(p.Dir, RefusedDir), env, io.NewSectionReader(m.Body, 0, m.Size), m.Size)
		if err != nil {
			return err
		}
		for _, r := range res.Refused {
			p.Log.Error().Str("file", path).Str("from", m.From).Str("rcpt", r.Rcpt).
				Int("code", r.Reply.Code).Str("enhanced", r.Reply.Status().String()).Str("reply", r.Reply.Error()).
				Msg("maildrop: refused for good; the message is kept in the refused directory")
		}
	}
	if len(res.Later) > 0 {
		if _, err := Write(p.Dir, Envelope{From: m.From, To: res.Later}, io.NewSectionReader(m.Body, 0, m.Size), m.Size); err != nil {
			return err
		}
	}
	return nil
}

// moveAside moves a file that cannot be read as a maildrop file into
// CorruptDir, so that it is neither lost nor tried again every scan.
func (p *Pickup) moveAside(path, name string, why error) {
	dst := filepath.Join(p.Dir, CorruptDir, name)
	if err := os.Rename(path, dst); err != nil {
		p.Log.Error().Err(err).Str("file", name).AnErr("cause", why).Msg("maildrop: cannot move an unreadable file aside; it stays, untouched until relayq restarts")
		p.markStuck(name)
		return
	}
	p.Log.Error().Err(why).Str("file", dst).Msg("maildrop: unreadable file moved aside")
}

func (p *Pickup) markStuck(name string) {
	if p.stuck == nil {
		p.stuck = map[string]bool{}
	}
	p.stuck[name] = true
}

// removeStale removes a temporary file left by a writer that died long
// ago.
func (p *Pickup) removeStale(e fs.DirEntry) {
	info, err := e.Info()
	if err != nil || time.Since(info.ModTime()) < staleTemp {
		return
	}
	path := filepath.Join(p.Dir, e.Name())
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.Log.Warn().Err(err).Str("file", e.Name()).Msg("maildrop: cannot remove a stale temporary file")
		p.markStuck(e.Name())
		return
	}
	p.Log.Warn().Str("file", e.Name()).Time("modified", info.ModTime()).Msg("maildrop: removed a temporary file a writer left over a day ago")
}
