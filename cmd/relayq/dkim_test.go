package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/foxcpp/go-mockdns"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"relayq/config"
	"relayq/internal/server"
	"relayq/internal/sink"
)

// runTool runs `relayq args...` with the dkim and config commands and
// returns stdout, stderr and the exit code.
func runTool(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{
		Name:           "relayq",
		Commands:       []*cli.Command{dkimCommand(), configCommand()},
		Writer:         &out,
		ErrWriter:      &errOut,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.Run(append([]string{"relayq"}, args...))
	if err != nil {
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), exitCode(err)
}

// keygen runs `relayq dkim keygen` into dir and returns the key file and
// the TXT record it printed, its strings joined as a resolver joins them.
func keygen(t *testing.T, dir, domain, selector, typ string) (string, string) {
	t.Helper()
	file := filepath.Join(dir, selector+".pem")
	out, errOut, code := runTool(t, "dkim", "keygen", "--domain", domain, "--selector", selector, "--type", typ, "--out", file)
	if code != 0 {
		t.Fatalf("keygen: exit %d %s", code, errOut)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v, want 0600", err, fi.Mode())
	}
	name := selector + "._domainkey." + domain + ". IN TXT "
	i := strings.Index(out, name)
	if i < 0 {
		t.Fatalf("no record for %s in:\n%s", name, out)
	}
	rec := out[i+len(name):]
	rec = rec[:strings.Index(rec, "\n\n")]
	var value strings.Builder
	for _, m := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(rec, -1) {
		value.WriteString(m[1])
	}
	if !strings.Contains(out, "key_file = \""+file+"\"") {
		t.Errorf("keygen does not print the [[dkim]] entry:\n%s", out)
	}
	return file, value.String()
}

func TestDKIMKeygenKeysSignThroughRelayqAndVerifyAgainstDNS(t *testing.T) {
	dir := t.TempDir()
	rsaFile, rsaRec := keygen(t, dir, "shop.invalid", "r1", "rsa")
	edFile, edRec := keygen(t, dir, "shop.invalid", "e1", "ed25519")
	dns, err := mockdns.NewServerWithLogger(map[string]mockdns.Zone{
		"r1._domainkey.shop.invalid.": {TXT: []string{rsaRec}},
		"e1._domainkey.shop.invalid.": {TXT: []string{edRec}},
	}, log.New(io.Discard, "", 0), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	res := &net.Resolver{}
	dns.PatchNet(res)
	lookup := func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return res.LookupTXT(ctx, name)
	}

	dst := startSink(t, sink.Options{})
	cfg := testConfig(t, dst.Addr())
	cfg.DKIM = []config.DKIM{
		{Domain: "shop.invalid", Selector: "r1", KeyFile: rsaFile},
		{Domain: "shop.invalid", Selector: "e1", KeyFile: edFile},
	}
	in := startRelayq(t, cfg)
	// 300 kB: past the 256 KiB kept in memory, so the spool file is used.
	submit(t, in.Addrs()[0], "app@shop.invalid", "u@dest.invalid", []string{"signed"}, 300_000)
	submit(t, in.Addrs()[0], "app@other.invalid", "u@dest.invalid", []string{"unsigned"}, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, 2); err != nil {
		t.Fatal(err)
	}
	var signed, unsigned []byte
	for _, m := range dst.Messages() {
		switch {
		case bytes.Contains(m.Data, []byte("Message-ID: <signed@")):
			signed = m.Data
		case bytes.Contains(m.Data, []byte("Message-ID: <unsigned@")):
			unsigned = m.Data
		}
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 2 {
		t.Fatalf("verify: %v, %d signatures, want 2", err, len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "shop.invalid" {
			t.Errorf("signature of %s: %v", v.Domain, v.Err)
		}
	}

	altered := bytes.Replace(signed, []byte("xxxx\r\n"), []byte("xxxy\r\n"), 1)
	vs, err = dkim.VerifyWithOptions(bytes.NewReader(altered), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 2 {
		t.Fatalf("verify altered: %v, %d signatures", err, len(vs))
	}
	for _, v := range vs {
		if v.Err == nil {
			t.Errorf("the signature of %s verifies on an altered body", v.Domain)
		}
	}
	if bytes.Contains(unsigned, []byte("DKIM-Signature:")) {
		t.Errorf("mail from other.invalid was signed:\n%s", unsigned)
	}
	if ents, _ := os.ReadDir(filepath.Join(cfg.DataDir, "spool")); len(ents) != 0 {
		t.Errorf("the spool directory keeps %d files", len(ents))
	}
}

func TestDKIMBadKeyFileFailsConfigCheckAndStartNamingIt(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "relayq.toml")
	conf := "[[dkim]]\ndomain = \"shop.invalid\"\nselector = \"s1\"\nkey_file = \"" + bad + "\"\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	want := "dkim[0].key_file " + bad + `: PEM block "CERTIFICATE"`
	_, errOut, code := runTool(t, "config", "check", "--config", path)
	if code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("config check: exit %d %q, want 1 and %q", code, errOut, want)
	}
	cfg := testConfig(t, "127.0.0.1:1")
	cfg.DKIM = []config.DKIM{{Domain: "shop.invalid", Selector: "s1", KeyFile: bad}}
	if in, err := server.Start(cfg, zerolog.Nop(), serverOptions(nil)); err == nil {
		in.Stop()
		t.Error("relayq started with a bad DKIM key")
	} else if !strings.Contains(err.Error(), want) {
		t.Errorf("start: %v, want %q", err, want)
	}
}
