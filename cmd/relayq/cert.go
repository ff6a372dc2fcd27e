package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"relayq/internal/certs"
)

func certCommand() *cli.Command {
	return &cli.Command{
		Name:  "cert",
		Usage: "write a self-signed certificate and key for trying out STARTTLS and smtps",
		Description: "Clients will not trust this certificate unless told to; for production use one\n" +
			"from a CA (e.g. Let's Encrypt). Point [tls] cert_file and key_file at the files.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "host", Required: true, Usage: "`NAME` or IP address the certificate is for; repeat for more"},
			&cli.StringFlag{Name: "cert", Value: "relayq-cert.pem", Usage: "certificate `FILE` to write"},
			&cli.StringFlag{Name: "key", Value: "relayq-key.pem", Usage: "private key `FILE` to write (mode 0600)"},
			&cli.DurationFlag{Name: "valid-for", Value: 365 * 24 * time.Hour, Usage: "validity `DURATION`"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
		},
		Action: func(c *cli.Context) error {
			hosts := c.StringSlice("host")
			if err := writeSelfSigned(hosts, c.String("cert"), c.String("key"), c.Duration("valid-for"), c.Bool("force")); err != nil {
				return cli.Exit("cert: "+err.Error(), 1)
			}
			fmt.Printf("wrote %s and %s for %v\n\n[tls]\ncert_file = %q\nkey_file = %q\n",
				c.String("cert"), c.String("key"), hosts, c.String("cert"), c.String("key"))
			return nil
		},
	}
}

// writeSelfSigned writes a self-signed ECDSA P-256 server certificate for
// hosts (names or IP addresses) and its key as PEM files. Existing files
// are kept unless force is set.
func writeSelfSigned(hosts []string, certPath, keyPath string, validFor time.Duration, force bool) error {
	if len(hosts) == 0 {
		return errors.New("give at least one --host")
	}
	p, err := certs.SelfSigned(hosts, validFor)
	if err != nil {
		return err
	}
	// The key first: a certificate without its key is of no use.
	if err := writeFile(keyPath, p.KeyPEM, 0o600, force); err != nil {
		return err
	}
	return writeFile(certPath, p.CertPEM, 0o644, force)
}

// writeFile writes data to a new file at path with mode, or over an
// existing one when force is set.
func writeFile(path string, data []byte, mode os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists (use --force to overwrite)", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
