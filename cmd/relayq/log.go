package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"relayq/config"
)

// newLogger builds the process logger: console output on a terminal, JSON
// otherwise (log.format = auto), at log.level.
func newLogger(c config.Log, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil || c.Level == "" {
		return zerolog.Logger{}, fmt.Errorf("log.level: %q is not one of trace, debug, info, warn, error", c.Level)
	}
	console := c.Format == config.LogFormatConsole
	if c.Format == config.LogFormatAuto || c.Format == "" {
		f, ok := w.(*os.File)
		console = ok && isatty.IsTerminal(f.Fd())
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	if console {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}
