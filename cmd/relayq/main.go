// Command relayq is an SMTP relay with a durable retry queue.
//
// This package is wiring only: it reads the configuration, builds the
// relay, queue and smarthost pieces and starts them. See ../../README.md.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:  "relayq",
		Usage: "an SMTP relay with a durable retry queue",
		Commands: []*cli.Command{
			serveCommand(),
			queueCommand(),
			statusCommand(),
			sendCommand(),
			sinkCommand(),
			configCommand(),
			explainCommand(),
			certCommand(),
			passwdCommand(),
			versionCommand(),
		},
		HideHelpCommand: true,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "relayq:", err)
		os.Exit(1)
	}
}
