package dkimsign

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"fmt"
	"io"
	"net/mail"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"relayq/config"
	"relayq/queue"
)

// Defaults of Options.
const (
	// DefaultMemory is how much of a signed message is held in memory;
	// the rest goes to a spool file.
	DefaultMemory = 256 << 10
	// maxHeader bounds the header section read to find From:; a message
	// with a longer one is passed on unsigned.
	maxHeader = 1 << 20
)

// Options say where Sign keeps the message it signs.
type Options struct {
	// SpoolDir is where a message larger than Memory is spooled, in a file
	// unlinked as soon as it is made; "" means os.TempDir().
	SpoolDir string
	// Memory is the part of a message held in memory; 0 means
	// DefaultMemory.
	Memory int
}

// key is one [[dkim]] entry, its private key read.
type key struct {
	domain     string // lower case, no final dot
	selector   string
	subdomains bool
	headers    []string
	signer     crypto.Signer
}

// Signer signs messages with the keys of [[dkim]]. It is immutable and
// safe for concurrent use.
type Signer struct {
	keys []key
	opts Options
}

// New reads the key file of every entry. An error names the entry and its
// file: "dkim[0].key_file /etc/relayq/k.pem: no PEM block in the file".
func New(entries []config.DKIM, opts Options) (*Signer, error) {
	if opts.Memory <= 0 {
		opts.Memory = DefaultMemory
	}
	s := &Signer{opts: opts}
	for i, e := range entries {
		signer, err := LoadKey(e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("dkim[%d].key_file %s: %w", i, e.KeyFile, err)
		}
		s.keys = append(s.keys, key{
			domain:     strings.ToLower(strings.TrimSuffix(e.Domain, ".")),
			selector:   e.Selector,
			subdomains: e.Subdomains,
			headers:    e.SignedHeaders(),
			signer:     signer,
		})
	}
	return s, nil
}

// Sign reads msg, a message with CRLF line endings, and returns it ready
// to queue, with by naming the signatures ("example.net s1"; "" when
// unsigned). Close the result when it has been read.
//
// When the From: domain has keys (those of the most specific matching
// domain: two entries of one domain, an RSA and an Ed25519 key, both
// sign), msg is read to its end, hashed by one signer per key as it is
// spooled (Options.Memory in memory, the rest in a file), and the result
// is the DKIM-Signature fields, then the message from the spool.
// Otherwise only the header section is read (into memory, up to 1 MiB),
// and the result streams it and then the rest of msg: no copy is made.
// Messages without exactly one From: field, or whose header section has
// no end, are not signed.
//
// An error from msg is returned, wrapped; so is a spool error.
func (s *Signer) Sign(ctx context.Context, msg io.Reader) (signed io.ReadCloser, by string, err error) {
	br := bufio.NewReaderSize(msg, 16<<10)
	header, complete, err := readHeader(br)
	if err != nil {
		return nil, "", err
	}
	unsigned := io.NopCloser(io.MultiReader(bytes.NewReader(header), br))
	if !complete {
		return unsigned, "", nil
	}
	keys := s.keysFor(fromDomain(header))
	if len(keys) == 0 {
		return unsigned, "", nil
	}
	sp := &spool{dir: s.opts.SpoolDir, limit: s.opts.Memory}
	sigs, err := sign(ctx, keys, sp, io.MultiReader(bytes.NewReader(header), br))
	if err != nil {
		sp.Close()
		return nil, "", err
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.selector
	}
	return &signedMessage{Reader: io.MultiReader(strings.NewReader(sigs), sp.reader()), sp: sp},
		keys[0].domain + " " + strings.Join(names, ","), nil
}

// Signature reads msg, a message with CRLF line endings, to its end and
// returns the DKIM-Signature fields of the keys for its From: domain
// (chosen as Sign chooses them), "" when none covers it or the message
// has not exactly one From: field. Nothing is kept: it is for delivery,
// which signs a message whose From: a route rewrote and reads the body
// again to send it.
func (s *Signer) Signature(ctx context.Context, msg io.Reader) (string, error) {
	br := bufio.NewReaderSize(msg, 16<<10)
	header, complete, err := readHeader(br)
	if err != nil || !complete {
		return "", err
	}
	keys := s.keysFor(fromDomain(header))
	if len(keys) == 0 {
		return "", nil
	}
	return sign(ctx, keys, io.Discard, io.MultiReader(bytes.NewReader(header), br))
}

// sign copies msg into sp and through one go-msgauth signer per key, and
// returns their DKIM-Signature fields.
func sign(ctx context.Context, keys []key, sp io.Writer, msg io.Reader) (string, error) {
	signers := make([]*dkim.Signer, 0, len(keys))
	defer func() {
		for _, ds := range signers {
			ds.Close() // a no-op after a successful Close
		}
	}()
	ws := []io.Writer{sp}
	for _, k := range keys {
		ds, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.domain,
			Selector:               k.selector,
			Signer:                 k.signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             k.headers,
		})
		if err != nil {
			return "", fmt.Errorf("dkim: %s: %w", RecordName(k.domain, k.selector), err)
		}
		signers = append(signers, ds)
		ws = append(ws, ds)
	}
	if _, err := io.Copy(io.MultiWriter(ws...), ctxReader{ctx, msg}); err != nil {
		return "", fmt.Errorf("dkim: reading the message: %w", err)
	}
	var sigs strings.Builder
	for i, ds := range signers {
		if err := ds.Close(); err != nil {
			return "", fmt.Errorf("dkim: signing with %s: %w", RecordName(keys[i].domain, keys[i].selector), err)
		}
		sigs.WriteString(ds.Signature())
	}
	return sigs.String(), nil
}

// keysFor returns the keys of the most specific [[dkim]] domain that
// covers domain: the domain itself, or a parent with subdomains = true.
func (s *Signer) keysFor(domain string) []key {
	if domain == "" {
		return nil
	}
	var out []key
	best := -1
	for _, k := range s.keys {
		if k.domain != domain && !(k.subdomains && strings.HasSuffix(domain, "."+k.domain)) {
			continue
		}
		switch {
		case len(k.domain) > best:
			best, out = len(k.domain), []key{k}
		case len(k.domain) == best:
			out = append(out, k)
		}
	}
	return out
}

// readHeader reads the header section and the empty line after it.
// complete is false when msg ended first or the section is over maxHeader;
// header then holds what was read, to be passed on as it is.
func readHeader(br *bufio.Reader) (header []byte, complete bool, err error) {
	lineStart := 0
	for len(header) <= maxHeader {
		chunk, err := br.ReadSlice('\n')
		header = append(header, chunk...)
		switch {
		case err == bufio.ErrBufferFull:
			continue // the same line goes on
		case err == io.EOF:
			return header, false, nil
		case err != nil:
			return nil, false, fmt.Errorf("dkim: reading the header: %w", err)
		}
		line := header[lineStart:]
		lineStart = len(header)
		if string(line) == "\r\n" || string(line) == "\n" { // compared without a copy
			return header, true, nil
		}
	}
	return header, false, nil
}

// fromDomain returns the lower-case domain of the address in the one
// From: field of header, "" if there is not exactly one such field or it
// does not parse.
func fromDomain(header []byte) string {
	msg, err := mail.ReadMessage(io.MultiReader(bytes.NewReader(header), strings.NewReader("\r\n")))
	if err != nil || len(msg.Header["From"]) != 1 {
		return ""
	}
	addrs, err := msg.Header.AddressList("From")
	if err != nil || len(addrs) == 0 {
		return ""
	}
	return queue.Domain(addrs[0].Address)
}

// signedMessage is Sign's result for a signed message.
type signedMessage struct {
	io.Reader
	sp *spool
}

func (m *signedMessage) Close() error { return m.sp.Close() }

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
