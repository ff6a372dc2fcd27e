package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"relayq/config"
)

// newLogger builds the process logger: console output on a terminal, JSON
// otherwise (log.format = auto), at log.level. JSON lines go through a
// batchedLog; the caller closes the returned closer last, to write out what
// is buffered.
func newLogger(c config.Log, w io.Writer) (zerolog.Logger, io.Closer, error) {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil || c.Level == "" {
		return zerolog.Logger{}, nil, fmt.Errorf("log.level: %q is not one of trace, debug, info, warn, error", c.Level)
	}
	console := c.Format == config.LogFormatConsole
	if c.Format == config.LogFormatAuto || c.Format == "" {
		f, ok := w.(*os.File)
		console = ok && isatty.IsTerminal(f.Fd())
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	if console {
		// A person is watching: every line at once.
		out := zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
		return zerolog.New(out).Level(level).With().Timestamp().Logger(), io.NopCloser(nil), nil
	}
	buf := newBatchedLog(w, logFlushEvery)
	return zerolog.New(buf).Level(level).With().Timestamp().Logger(), buf, nil
}

// logFlushEvery is the longest an info line waits in the buffer.
const logFlushEvery = 100 * time.Millisecond

// batchedLog gathers log lines into few write syscalls. At a few thousand
// messages a second, two info lines per message written one by one cost
// relayq about 7 % of its CPU (make bench). An info or debug line waits at
// most the flush interval; a warn or error line is written at once,
// together with everything before it, so that what explains a problem is
// never held back. A crash (kill -9) can lose the info lines of the last
// interval, never a queued message.
type batchedLog struct {
	mu struct {
		sync.Mutex
		w      *bufio.Writer
		closed bool
	}
	stop chan struct{}
	done chan struct{}
}

var _ zerolog.LevelWriter = (*batchedLog)(nil)

func newBatchedLog(w io.Writer, every time.Duration) *batchedLog {
	b := &batchedLog{stop: make(chan struct{}), done: make(chan struct{})}
	b.mu.w = bufio.NewWriterSize(w, 64<<10)
	go b.flusher(every)
	return b
}

func (b *batchedLog) flusher(every time.Duration) {
	defer close(b.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.mu.Lock()
			if b.mu.w.Buffered() > 0 {
				_ = b.mu.w.Flush()
			}
			b.mu.Unlock()
		}
	}
}

// Write buffers p (a line without a level).
func (b *batchedLog) Write(p []byte) (int, error) { return b.WriteLevel(zerolog.NoLevel, p) }

// WriteLevel buffers p, and writes the buffer out at once for warn and above.
func (b *batchedLog) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.closed {
		// After Close (a late goroutine): unbuffered, nothing is lost.
		if err := b.mu.w.Flush(); err != nil {
			return 0, err
		}
		n, err := b.mu.w.Write(p)
		if err == nil {
			err = b.mu.w.Flush()
		}
		return n, err
	}
	n, err := b.mu.w.Write(p)
	if err == nil && l >= zerolog.WarnLevel && l != zerolog.NoLevel {
		err = b.mu.w.Flush()
	}
	return n, err
}

// Close stops the flusher and writes out what is buffered; later lines are
// written unbuffered.
func (b *batchedLog) Close() error {
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return nil
	}
	b.mu.closed = true
	b.mu.Unlock()
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.w.Flush()
}
