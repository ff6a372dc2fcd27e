package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"relayq/config"
	"relayq/internal/sink"
)

// sinkCommand is `relayq sink`: a local SMTP destination that accepts
// everything, prints one line per message and optionally stores each as a
// file. A development and test tool: it keeps every message in memory too.
func sinkCommand() *cli.Command {
	return &cli.Command{
		Name:  "sink",
		Usage: "run a local SMTP sink that prints (and optionally stores) what it receives",
		Description: `Accepts every message and prints one line per message on stdout:
time, from, to, size and file. With --dir each message is also written to
DIR/<n>-<unixnano>.eml. Runs until SIGINT or SIGTERM.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:2526", Usage: "`address` to listen on"},
			&cli.StringFlag{Name: "dir", Usage: "store each message as a file in `DIR` (default: print only)"},
			&cli.StringFlag{Name: "max-size", Usage: "advertise and enforce a SIZE limit of `SIZE` (\"10MB\", bytes); 552 5.3.4 above it"},
			&cli.IntFlag{Name: "max-recipients", Usage: "answer 452 4.5.3 beyond `N` recipients per message"},
			&cli.IntFlag{Name: "max-conns", Usage: "answer 421 4.3.2 beyond `N` concurrent connections, like a per-source limit"},
			&cli.BoolFlag{Name: "starttls", Usage: "offer STARTTLS with a throwaway self-signed certificate"},
		},
		Action: runSink,
	}
}

func runSink(cCtx *cli.Context) error {
	opts := sink.Options{
		Addr:          cCtx.String("listen"),
		Dir:           cCtx.String("dir"),
		Log:           cCtx.App.Writer,
		MaxRecipients: cCtx.Int("max-recipients"),
		MaxConns:      cCtx.Int("max-conns"),
	}
	if s := cCtx.String("max-size"); s != "" {
		size, err := config.ParseSize(s)
		if err != nil {
			return cli.Exit("relayq sink: --max-size: "+err.Error(), 2)
		}
		opts.MaxSize = int64(size)
	}
	if cCtx.Bool("starttls") {
		hosts := []string{"localhost"}
		if h, _, err := net.SplitHostPort(opts.Addr); err == nil && h != "" {
			hosts = append(hosts, h)
		}
		cfg, _, err := sink.SelfSigned(hosts...)
		if err != nil {
			return cli.Exit("relayq sink: "+err.Error(), 1)
		}
		opts.TLS = cfg
	}

	ctx, stop := signal.NotifyContext(cCtx.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := sink.Start(opts)
	if err != nil {
		return cli.Exit("relayq sink: "+err.Error(), 1)
	}
	// stdout carries only message lines, so it can be piped; the rest goes
	// to stderr.
	fmt.Fprintf(cCtx.App.ErrWriter, "relayq sink: listening on %s\n", s.Addr())
	<-ctx.Done()
	fmt.Fprintf(cCtx.App.ErrWriter, "relayq sink: stopping after %d messages\n", s.Count())
	return s.Close()
}
