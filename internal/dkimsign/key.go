package dkimsign

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinRSABits is the smallest RSA key accepted: RFC 8301 §3.2 requires
// verifiers to take 1024 to 4096 bits and signers to use 2048 or more.
const MinRSABits = 2048

// Key types of Generate (`relayq dkim keygen --type`).
const (
	TypeRSA     = "rsa"
	TypeEd25519 = "ed25519"
)

// LoadKey reads a PEM private key for signing: RSA of MinRSABits or more
// (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY") or Ed25519 (PKCS#8).
// Its error says what is wrong with the file, without naming it.
func LoadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block in the file")
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q, want \"PRIVATE KEY\" or \"RSA PRIVATE KEY\"", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits: DKIM needs %d or more (RFC 8301 §3.2)", bits, MinRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("a %T key: want RSA or Ed25519", key)
}

// Generate makes a key of type typ (TypeRSA: 2048 bits, TypeEd25519) and
// returns it with its PKCS#8 PEM encoding.
func Generate(typ string) (crypto.Signer, []byte, error) {
	var key crypto.Signer
	var err error
	switch typ {
	case TypeRSA:
		key, err = rsa.GenerateKey(rand.Reader, MinRSABits)
	case TypeEd25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, nil, fmt.Errorf("key type %q: want %s or %s", typ, TypeRSA, TypeEd25519)
	}
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// RecordName is the DNS name of the public key of selector in domain
// (RFC 6376 §3.6.2.1), with the final dot.
func RecordName(domain, selector string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".") + "."
}

// RecordValue is the TXT record of key's public half (RFC 6376 §3.6.1):
// p= is the DER SubjectPublicKeyInfo for RSA and the bare 32-byte key for
// Ed25519 (RFC 8463 §4.2).
func RecordValue(key crypto.Signer) (string, error) {
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("a %T key: want RSA or Ed25519", key.Public())
}

// ZoneLine is the record as a zone-file line: a TXT string holds at most
// 255 octets (RFC 1035 §3.3), so a longer value (any RSA key) is split
// into several strings, which resolvers join (RFC 6376 §3.6.2.2).
func ZoneLine(name, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	if len(parts) == 1 {
		return name + " IN TXT " + parts[0]
	}
	return name + " IN TXT ( " + strings.Join(parts, "\n\t") + " )"
}
