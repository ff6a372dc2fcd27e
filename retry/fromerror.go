package retry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
)

// FromError turns any delivery error into a Reply, so that Classify sees one
// kind of value. A nil err gives nil (Classify: Deliver).
//
//   - a wrapped *Reply is returned as is (errors.As);
//   - a go-smtp *smtp.SMTPError, the remote's reply, becomes a remote Reply
//     with its lines joined by "; ";
//   - *net.DNSError: not found → local 550 5.1.2, otherwise (temporary,
//     timeout, SERVFAIL) → local 451 4.4.3;
//   - TLS handshake and certificate failures → local 451 4.4.1, text saying TLS;
//   - at StageConnect, dial errors (refused, unreachable, timeout, the dial's
//     context expiring) → local 451 4.4.1 "no answer from host" (RFC 3463 X.4.1);
//   - later, a connection dropped, reset, at EOF or timed out, and a context
//     cancelled or past its deadline → local 451 4.4.2 (RFC 3463 X.4.2);
//   - anything else → local 451 4.0.0 with the error's text, deferred rather
//     than bounced: an error nobody understood must not lose mail.
//
// Local replies have Local=true and short, single-line text.
func FromError(stage Stage, err error) *smtpreply.Reply {
	if err == nil {
		return nil
	}
	var r *smtpreply.Reply
	if errors.As(err, &r) {
		return r
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &smtpreply.Reply{Code: se.Code, Enhanced: validEnhanced(se.EnhancedCode), Text: oneLine(se.Message)}
	}
	local := func(code int, c smtpreply.EnhancedCode, text string) *smtpreply.Reply {
		return &smtpreply.Reply{Code: code, Enhanced: c, Text: smtpreply.Truncate(oneLine(text), maxLocalText), Local: true}
	}

	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound {
			return local(550, smtpreply.CodeBadDomain, "domain not found: "+dnsErr.Name)
		}
		return local(451, smtpreply.CodeDNSTemp, "DNS lookup failed: "+dnsErr.Err)
	}
	if isTLSError(err) {
		return local(451, smtpreply.CodeNoAnswer, "TLS failed: "+err.Error())
	}

	timeout := errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		timeout = true
	}
	if stage == StageConnect && (isDialError(err) || timeout || errors.Is(err, context.Canceled)) {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return local(451, smtpreply.CodeNoAnswer, "connection refused")
		case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
			return local(451, smtpreply.CodeNoAnswer, "host unreachable")
		case timeout:
			return local(451, smtpreply.CodeNoAnswer, "connection timed out")
		}
		return local(451, smtpreply.CodeNoAnswer, "no answer from host: "+err.Error())
	}
	switch {
	case timeout:
		return local(451, smtpreply.CodeConnDropped, "connection timed out")
	case errors.Is(err, context.Canceled):
		return local(451, smtpreply.CodeConnDropped, "delivery cancelled")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE):
		return local(451, smtpreply.CodeConnDropped, "connection closed by remote")
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED):
		return local(451, smtpreply.CodeConnDropped, "connection reset by remote")
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return local(451, smtpreply.CodeConnDropped, "connection failed: "+err.Error())
	}
	return local(451, smtpreply.CodeTempGeneric, err.Error())
}

func isDialError(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// isTLSError recognises handshake and verification failures. The tls package
// returns many of them as plain errors, all with a "tls: " prefix.
func isTLSError(err error) bool {
	var (
		alert  tls.AlertError
		rec    tls.RecordHeaderError
		verify *tls.CertificateVerificationError
		unk    x509.UnknownAuthorityError
		host   x509.HostnameError
		inv    x509.CertificateInvalidError
	)
	return errors.As(err, &alert) || errors.As(err, &rec) || errors.As(err, &verify) ||
		errors.As(err, &unk) || errors.As(err, &host) || errors.As(err, &inv) ||
		strings.Contains(err.Error(), "tls: ")
}

// validEnhanced keeps a go-smtp enhanced code only when it is a real one
// (go-smtp uses {-1,-1,-1} and {0,0,0} for "none").
func validEnhanced(c smtp.EnhancedCode) smtpreply.EnhancedCode {
	if (c[0] == 2 || c[0] == 4 || c[0] == 5) && c[1] >= 0 && c[1] <= 999 && c[2] >= 0 && c[2] <= 999 {
		return smtpreply.EnhancedCode(c)
	}
	return smtpreply.EnhancedCode{}
}

// maxLocalText bounds the text of a local reply: it is logged, stored with
// the recipient and shown in DSNs.
const maxLocalText = 300

// oneLine joins a multi-line reply text with "; " and drops other control
// characters, keeping the Reply.Text contract (one line of at most
// smtpreply.MaxText bytes).
func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\r\n", "\n")
	return smtpreply.Truncate(smtpreply.Sanitize(strings.ReplaceAll(s, "\n", "; ")), smtpreply.MaxText)
}
