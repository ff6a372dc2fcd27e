package queue

import (
	"fmt"
	"os"
	"sync"

	"github.com/rs/zerolog"
)

// pebbleLogger sends Pebble's own messages to zerolog: Infof at debug,
// Errorf at error, and Fatalf ends the process.
//
// Pebble calls Fatalf when it cannot go on safely: a write or sync of its
// log (WAL) or of its MANIFEST failed, or an invariant broke. It does not
// expect Fatalf to return: after "fatal commit error" it would go on as if
// the commit had been made, and a Put would return nil for a message that
// is not on disk. So Fatalf never returns. The first call writes one line
// at fatal level naming the data directory and the error, then calls exit
// (os.Exit, or Options.Exit) with status 1; a second call, from another
// goroutine meanwhile, waits for good without a line of its own. What
// Put acknowledged is on disk (synced before its nil), and the message
// whose commit failed was never acknowledged: a restart (systemd's
// Restart=on-failure) opens the queue and delivers it all.
type pebbleLogger struct {
	log   zerolog.Logger
	dir   string
	exit  func(code int)
	fatal *sync.Once
}

func newPebbleLogger(dir string, opts Options) pebbleLogger {
	exit := opts.Exit
	if exit == nil {
		exit = os.Exit
	}
	return pebbleLogger{log: opts.Log, dir: dir, exit: exit, fatal: new(sync.Once)}
}

func (l pebbleLogger) Infof(format string, args ...any)  { l.log.Debug().Msgf(format, args...) }
func (l pebbleLogger) Errorf(format string, args ...any) { l.log.Error().Msgf(format, args...) }

func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.fatal.Do(func() {
		// WithLevel, not Fatal: zerolog's Fatal would exit by itself,
		// bypassing exit.
		l.log.WithLevel(zerolog.FatalLevel).Str("data_dir", l.dir).Str("error", fmt.Sprintf(format, args...)).
			Msg("queue: storage failed and the queue cannot go on safely: exiting (acknowledged mail is on disk; a restart delivers it)")
		l.exit(1)
	})
	select {} // exit has been called: Pebble must not go on
}
