// Command relayq is an SMTP relay with a durable retry queue.
//
// This package is flags and subcommands only: `relayq serve` reads the
// configuration and the flags that override it and runs the instance of
// internal/server; the other subcommands are the operator's tools
// (queue, status, send, sendmail, sink, config, explain, cert, dkim,
// passwd, version). See ../../README.md.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	// sendmail's flags ("-oi", "-fsender", "-ti") are not urfave/cli's:
	// a sendmail invocation is parsed by hand, before urfave/cli.
	if args, ok := sendmailArgs(os.Args); ok {
		os.Exit(runSendmail(context.Background(), args, os.Stdin, os.Stdout, os.Stderr))
	}
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "relayq:", err)
		os.Exit(1)
	}
}

// newApp is the relayq command line.
func newApp() *cli.App {
	return &cli.App{
		Name:  "relayq",
		Usage: "an SMTP relay with a durable retry queue",
		Commands: []*cli.Command{
			serveCommand(),
			queueCommand(),
			statusCommand(),
			sendCommand(),
			sendmailCommand(),
			sinkCommand(),
			configCommand(),
			explainCommand(),
			certCommand(),
			dkimCommand(),
			passwdCommand(),
			versionCommand(),
		},
		HideHelpCommand: true,
	}
}
