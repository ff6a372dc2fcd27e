// Package smtpclient is relayq's SMTP client: it speaks to next hops (an
// MX or an upstream smart host) and knows nothing of the queue. The
// delivery side (package smarthost) uses it through its Courier and
// Session interfaces.
//
// Dial opens one session to one host: TCP through a caller-supplied Dialer
// (never go-smtp's Dial, whose 30 s timeout is fixed), the greeting, EHLO
// (HELO when EHLO is refused, RFC 5321 §3.2), TLS per Target.TLS, then AUTH,
// all through go-smtp's client. Conn.Send runs one mail transaction on it; a
// Conn carries any number of transactions, one at a time. The transactions,
// RSET and QUIT are spoken by pipeline.go over the same connection, never
// through go-smtp's client again (its reader would be out of step).
//
// Invariants and contract:
//
//   - Every error is, or wraps, a *smtpreply.Reply: the remote's reply, or a
//     local one (Local=true) for what no server said: 451 4.4.1 when the
//     dial or a TLS handshake fails, 451 4.4.2 when the connection drops or
//     times out, 4.3.5 for a bad Target. Classification is retry's job
//     (retry.Classify with the stage that DialError and RcptResult carry).
//   - Send returns exactly one RcptResult per recipient, in order, with a
//     non-nil Reply, whatever happens, so the caller can record every
//     recipient's state (each ends delivered, bounced or deleted). A 2xx result is only ever
//     the reply after the final "." (RFC 5321 §4.1.1.4): a recipient is never
//     reported delivered on the strength of its RCPT alone.
//   - A non-nil error from Send means the connection is unusable (421, I/O
//     error, timeout, ctx done): Close it, never reuse it. 421 is answered by
//     closing without QUIT (RFC 5321 §3.8).
//   - The body is streamed from the caller's reader in 64 KiB chunks and
//     never held whole (invariant 5). If the reader fails mid-body the
//     connection is dropped before the final ".", so a truncated message is
//     never delivered (SMTP has no way to abort DATA, RFC 5321 §4.1.1.4).
//   - What goes out after the 354 has CRLF line endings only (a bare CR or
//     LF in the body becomes CRLF) and every line starting with "." has it
//     doubled (RFC 5321 §4.5.2): nothing in a body can end the DATA early
//     at the next hop. The body is written in large chunks straight to the
//     connection, its small last chunk in one write with the final
//     "\r\n.\r\n" (data.go).
//   - PIPELINING (RFC 2920): when the next hop offers it, MAIL, every RCPT
//     and DATA go out in one write and the replies are read in order, so a
//     one-recipient message takes two writes and two reads (the commands,
//     then the body and "."). Every reply of a group is checked: a refused
//     MAIL decides all recipients, each RCPT its own recipient (one accepted
//     after a "too many recipients" stays in the transaction), a refused
//     DATA the accepted ones; a 354 with no recipient accepted gets just
//     "." (§3.1). A group holds at most 100 commands or about 16 KiB, so
//     that neither side can block on full socket buffers. Without
//     PIPELINING every command waits for its reply.
//   - Timeouts: every reply has Target.Timeout (default 5 minutes, RFC 5321
//     §4.5.3.2), and so has every write: each group of commands, each chunk
//     of the body (§4.5.3.2.5); the reply to the final "." gets twice the
//     timeout (§4.5.3.2.6, 10 minutes by default). Cancelling ctx closes the
//     socket, which aborts whatever is blocked.
//   - Replies are read with bounded memory: a line of more than 16 KiB or a
//     reply of more than 64 KiB breaks the connection.
//   - SIZE (RFC 1870): a message larger than the remote's advertised limit is
//     not sent at all; every recipient gets a local 552 5.3.4 that names both
//     sizes, so the NDR can tell the sender the remote's limit.
//   - "Too many recipients" at RCPT (RFC 5321 §4.5.3.1.10): which refusal
//     ends a transaction's recipients is the caller's rule
//     (Envelope.EndsRcpts; the delivery side passes
//     retry.TooManyRecipients). After one, no further RCPT is sent; the
//     recipients refused with it and the later ones not yet sent carry the
//     reply and go in the caller's next transaction on the same Conn.
//   - TLS: opportunistic mode (RFC 7435) does STARTTLS when offered without
//     verifying the certificate and continues in plaintext only when
//     STARTTLS is not offered; a refused STARTTLS or a failed handshake
//     defers the host instead of falling back on the same connection. The
//     starttls and implicit modes verify against Target.RootCAs (system roots
//     when nil) and Target.ServerName (the host of Addr when empty). Data
//     buffered in plaintext after the 220 to STARTTLS is refused (the
//     CVE-2011-0411 injection, RFC 3207 §5).
//   - AUTH (RFC 4954) uses PLAIN, or LOGIN when only LOGIN is offered,
//     unless Target.Auth asks for LOGIN alone or for a bearer token:
//     XOAUTH2 (Google's and Microsoft's format) or OAUTHBEARER (RFC 7628),
//     the token from Target.Token. A mechanism the next hop does not offer
//     is a local 530 5.7.0, a token source that fails a local 451 4.7.0. A
//     refused token (535, or an error challenge, answered so that the next
//     hop gives its final reply) is reported to the source, and the newer
//     token it may return is tried once more on the same connection;
//     otherwise the next hop's reply is the error. No error or log line
//     holds a token or a password. AUTH is attempted in whatever
//     protection the TLS mode gave: with "none" or an opportunistic session
//     without STARTTLS the password goes in clear, which the operator chose
//     with the mode.
//   - A Conn is not safe for concurrent use.
package smtpclient
