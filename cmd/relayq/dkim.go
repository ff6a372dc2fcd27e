package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"relayq/config"
	"relayq/internal/dkimsign"
)

func dkimCommand() *cli.Command {
	return &cli.Command{
		Name:  "dkim",
		Usage: "DKIM signing tools",
		Subcommands: []*cli.Command{{
			Name:  "keygen",
			Usage: "write a DKIM private key and print the DNS TXT record to publish",
			Description: "The key file (mode 0600) goes in a [[dkim]] entry of the config; the record\n" +
				"is published at <selector>._domainkey.<domain>. RSA (2048 bits) is verified\n" +
				"everywhere; Ed25519 (RFC 8463) is not yet, so sign with both to use it.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "domain", Required: true, Usage: "`DOMAIN` of the From: addresses to sign (d=)"},
				&cli.StringFlag{Name: "selector", Required: true, Usage: "`SELECTOR` (s=), e.g. s1 or 2026"},
				&cli.StringFlag{Name: "type", Value: dkimsign.TypeRSA, Usage: "key type: rsa (2048 bits) | ed25519"},
				&cli.StringFlag{Name: "out", Usage: "key `FILE` to write (default: <domain>.<selector>.pem)"},
				&cli.BoolFlag{Name: "force", Usage: "overwrite an existing file"},
			},
			Action: dkimKeygen,
		}},
	}
}

func dkimKeygen(c *cli.Context) error {
	domain := strings.ToLower(strings.TrimSuffix(c.String("domain"), "."))
	selector := c.String("selector")
	probe := config.Config{DKIM: []config.DKIM{{Domain: domain, Selector: selector, KeyFile: "-"}}}
	if err := probe.ValidateDKIM(); err != nil {
		return cli.Exit("dkim keygen: "+err.Error(), 2)
	}
	out := c.String("out")
	if out == "" {
		out = domain + "." + selector + ".pem"
	}
	key, pemBytes, err := dkimsign.Generate(c.String("type"))
	if err != nil {
		return cli.Exit("dkim keygen: "+err.Error(), 2)
	}
	value, err := dkimsign.RecordValue(key)
	if err != nil {
		return cli.Exit("dkim keygen: "+err.Error(), 1)
	}
	if err := writeFile(out, pemBytes, 0o600, c.Bool("force")); err != nil {
		return cli.Exit("dkim keygen: "+err.Error(), 1)
	}
	if err := os.Chmod(out, 0o600); err != nil { // --force over a file of another mode
		return cli.Exit("dkim keygen: "+err.Error(), 1)
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		abs = out
	}
	name := dkimsign.RecordName(domain, selector)
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s (%s, mode 0600)\n\n", out, c.String("type"))
	fmt.Fprintf(w, "Publish this DNS TXT record:\n\n%s\n\n", dkimsign.ZoneLine(name, value))
	fmt.Fprintf(w, "Check it with: dig +short TXT %s\n\n", name)
	fmt.Fprintf(w, "and add to the config:\n\n[[dkim]]\ndomain = %q\nselector = %q\nkey_file = %q\n", domain, selector, abs)
	return nil
}
