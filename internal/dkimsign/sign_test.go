package dkimsign

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/foxcpp/go-mockdns"

	"relayq/config"
)

// writeKey writes a new key of typ to a file under dir.
func writeKey(t testing.TB, dir, typ string) (string, crypto.Signer) {
	t.Helper()
	k, pemBytes, err := Generate(typ)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, typ+".pem")
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, k
}

// lookupVia serves records (name → TXT value) from a DNS server on
// 127.0.0.1 and returns a LookupTXT that asks it.
func lookupVia(t *testing.T, records map[string]string) func(string) ([]string, error) {
	t.Helper()
	zones := map[string]mockdns.Zone{}
	for name, value := range records {
		zones[name] = mockdns.Zone{TXT: []string{value}}
	}
	srv, err := mockdns.NewServerWithLogger(zones, log.New(io.Discard, "", 0), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	res := &net.Resolver{}
	srv.PatchNet(res)
	return func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return res.LookupTXT(ctx, name)
	}
}

func record(t *testing.T, k crypto.Signer) string {
	t.Helper()
	v, err := RecordValue(k)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

const testMsg = "From: App <app@shop.invalid>\r\nTo: u@dest.invalid\r\nSubject: hello\r\n" +
	"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@shop.invalid>\r\n\r\nbody line\r\n"

// signAll signs msg with s and returns what would be queued.
func signAll(t *testing.T, s *Signer, msg string) (string, string) {
	t.Helper()
	r, by, err := s.Sign(context.Background(), strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), by
}

func verify(t *testing.T, msg string, lookup func(string) ([]string, error)) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestSignRSAAndEd25519VerifyAndFailWhenTheBodyChanges(t *testing.T) {
	dir := t.TempDir()
	rsaFile, rsaKey := writeKey(t, dir, TypeRSA)
	edFile, edKey := writeKey(t, dir, TypeEd25519)
	s, err := New([]config.DKIM{
		{Domain: "shop.invalid", Selector: "r1", KeyFile: rsaFile},
		{Domain: "shop.invalid", Selector: "e1", KeyFile: edFile},
	}, Options{SpoolDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	lookup := lookupVia(t, map[string]string{
		"r1._domainkey.shop.invalid.": record(t, rsaKey),
		"e1._domainkey.shop.invalid.": record(t, edKey),
	})
	signed, by := signAll(t, s, testMsg)
	if by != "shop.invalid r1,e1" || !strings.HasSuffix(signed, testMsg) {
		t.Fatalf("by %q, signed:\n%s", by, signed)
	}
	vs := verify(t, signed, lookup)
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "shop.invalid" {
			t.Errorf("signature of %s: %v", v.Domain, v.Err)
		}
		if !strings.Contains(strings.Join(v.HeaderKeys, ":"), "From:Reply-To:Subject") {
			t.Errorf("signed fields %q", v.HeaderKeys)
		}
	}
	if !strings.Contains(signed, "c=relaxed/relaxed;") {
		t.Errorf("not relaxed/relaxed:\n%s", signed)
	}

	altered := strings.Replace(signed, "body line", "body lime", 1)
	for _, v := range verify(t, altered, lookup) {
		if v.Err == nil {
			t.Errorf("signature by %s still verifies after the body changed", v.Domain)
		}
	}
	// A From: added to the signed message breaks it (From is oversigned).
	added := strings.Replace(signed, "From: App", "From: evil@x.invalid\r\nFrom: App", 1)
	for _, v := range verify(t, added, lookup) {
		if v.Err == nil {
			t.Error("signature still verifies after a second From: was added")
		}
	}
}

func TestSignLargeBodyGoesThroughTheSpoolFile(t *testing.T) {
	dir := t.TempDir()
	file, k := writeKey(t, dir, TypeEd25519)
	s, err := New([]config.DKIM{{Domain: "shop.invalid", Selector: "e1", KeyFile: file, Subdomains: true}},
		Options{SpoolDir: dir, Memory: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("0123456789 abcdefghij klmnopqrst uvwxyz ABCDEFGHIJ KLMNOPQRS\r\n", 20000) // 1.2 MB
	msg := strings.Replace(testMsg, "app@shop.invalid", "app@eu.shop.invalid", 1) + body
	r, by, err := s.Sign(context.Background(), strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if !r.(*signedMessage).sp.spilled() {
		t.Error("a 1.2 MB message with 4 KiB of memory did not spill to a file")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 { // the key only: the spool is unlinked
		t.Errorf("spool dir holds %d entries, want the key only", len(ents))
	}
	out, err := io.ReadAll(r)
	r.Close()
	if err != nil || by != "shop.invalid e1" || !strings.HasSuffix(string(out), msg) {
		t.Fatalf("by %q, %v; tail does not match", by, err)
	}
	vs := verify(t, string(out), lookupVia(t, map[string]string{"e1._domainkey.shop.invalid.": record(t, k)}))
	if len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verification: %+v", vs)
	}
}

func TestSignLeavesOtherMailAlone(t *testing.T) {
	dir := t.TempDir()
	file, _ := writeKey(t, dir, TypeEd25519)
	s, err := New([]config.DKIM{{Domain: "shop.invalid", Selector: "e1", KeyFile: file}}, Options{SpoolDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for name, msg := range map[string]string{
		"another domain":          strings.Replace(testMsg, "app@shop.invalid", "app@other.invalid", 1),
		"a subdomain, not asked":  strings.Replace(testMsg, "app@shop.invalid", "app@eu.shop.invalid", 1),
		"a domain ending like it": strings.Replace(testMsg, "app@shop.invalid", "app@myshop.invalid", 1),
		"two From fields":         "From: evil@x.invalid\r\n" + testMsg,
		"no From field":           strings.Replace(testMsg, "From:", "Sender:", 1),
		"no end of header":        "From: app@shop.invalid\r\nSubject: x\r\n",
	} {
		out, by := signAll(t, s, msg)
		if by != "" || out != msg {
			t.Errorf("%s: by %q, out:\n%s", name, by, out)
		}
	}
}

func TestNewNamesTheBadKeyFile(t *testing.T) {
	dir := t.TempDir()
	weak := filepath.Join(dir, "weak.pem")
	// A 1024-bit PKCS#1 key, as old guides made them.
	wk, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weakPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(wk)})
	if err := os.WriteFile(weak, weakPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good, _ := writeKey(t, dir, TypeRSA)
	for _, tc := range []struct{ file, want string }{
		{weak, "dkim[1].key_file " + weak + ": RSA key of 1024 bits: DKIM needs 2048 or more"},
		{garbage, "dkim[1].key_file " + garbage + ": no PEM block in the file"},
		{filepath.Join(dir, "missing.pem"), "dkim[1].key_file " + filepath.Join(dir, "missing.pem") + ": open "},
	} {
		_, err := New([]config.DKIM{
			{Domain: "a.invalid", Selector: "s", KeyFile: good},
			{Domain: "b.invalid", Selector: "s", KeyFile: tc.file},
		}, Options{})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("error %v, want %q…", err, tc.want)
		}
	}
}

func TestZoneLineSplitsLongRecords(t *testing.T) {
	value := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 392)
	line := ZoneLine("s1._domainkey.example.net.", value)
	if !strings.HasPrefix(line, `s1._domainkey.example.net. IN TXT ( "v=DKIM1; k=rsa; p=`) || strings.Count(line, `"`) != 4 {
		t.Errorf("zone line:\n%s", line)
	}
	joined := strings.NewReplacer(`"`, "", "\n\t", "", " )", "").Replace(line[strings.Index(line, "( ")+2:])
	if joined != value {
		t.Errorf("the strings do not join back to the value")
	}
	if got := ZoneLine("e._domainkey.x.", "v=DKIM1; k=ed25519; p=abc"); got != `e._domainkey.x. IN TXT "v=DKIM1; k=ed25519; p=abc"` {
		t.Errorf("short record: %s", got)
	}
}
