package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"

	"github.com/urfave/cli/v2"
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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"relayq self-signed"}},
		NotBefore:             now.Add(-time.Hour), // tolerate a client clock a little behind
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// The key first: a certificate without its key is of no use.
	if err := writePEM(keyPath, "PRIVATE KEY", pkcs8, 0o600, force); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", der, 0o644, force)
}

func writePEM(path, typ string, der []byte, mode os.FileMode, force bool) error {
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
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
