package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"relayq/internal/explain"
)

// explainCommand is `relayq explain CODE`: what an SMTP status code means,
// its likely causes and what to do, from the status-code knowledge base (internal/explain).
func explainCommand() *cli.Command {
	return &cli.Command{
		Name:      "explain",
		Usage:     "explain an SMTP status code: what it means, likely causes, what to do",
		ArgsUsage: "CODE | \"REPLY LINE\"",
		Description: "CODE is an enhanced status code (4.4.7), a reply code and one (421 4.3.2) or a\n" +
			"whole reply line (452 4.3.1 Insufficient system resources), quoted or not.\n" +
			"The first line printed is the one-line summary that NDRs carry.",
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.Exit(`explain: give a status code, e.g. relayq explain 4.4.7, or a reply line, e.g. relayq explain "452 4.3.1 Insufficient system resources"`, 2)
			}
			text, err := explain.Text(strings.Join(c.Args().Slice(), " "))
			if err != nil {
				return cli.Exit("explain: "+err.Error(), 2)
			}
			fmt.Fprint(c.App.Writer, text)
			return nil
		},
	}
}
