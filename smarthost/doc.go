// Package smarthost is the outbound side of relayq: the SMTP client that
// speaks to next hops (an MX or an upstream smart host) and, around it, the
// delivery workers that join the queue to that client.
//
// # The client (client.go)
//
// Dial opens one session to one host: TCP through a caller-supplied Dialer
// (never go-smtp's Dial, whose 30 s timeout is fixed), the greeting, EHLO
// (HELO when EHLO is refused, RFC 5321 §3.2), TLS per Target.TLS, then AUTH.
// Conn.Send runs one mail transaction on it; a Conn carries any number of
// transactions, one at a time.
//
// Invariants and contract:
//
//   - Every error is, or wraps, a *retry.Reply: the remote's reply, or a
//     local one (Local=true) for what no server said: 451 4.4.1 when the
//     dial or a TLS handshake fails, 451 4.4.2 when the connection drops or
//     times out, 4.3.5 for a bad Target. Classification is retry's job
//     (retry.Classify with the stage that DialError and RcptResult carry).
//   - Send returns exactly one RcptResult per recipient, in order, with a
//     non-nil Reply, whatever happens, so the caller can record every
//     recipient's state (DESIGN.md invariant 3). A 2xx result is only ever
//     the reply after the final "." (RFC 5321 §4.1.1.4): a recipient is never
//     reported delivered on the strength of its RCPT alone.
//   - A non-nil error from Send means the connection is unusable (421, I/O
//     error, timeout, ctx done): Close it, never reuse it. 421 is answered by
//     closing without QUIT (RFC 5321 §3.8).
//   - The body is streamed from the caller's reader in 32 KiB chunks and
//     never held whole (invariant 5). If the reader fails mid-body the
//     connection is dropped before the final ".", so a truncated message is
//     never delivered (SMTP has no way to abort DATA, RFC 5321 §4.1.1.4).
//   - Timeouts: every command has Target.Timeout (default 5 minutes, RFC 5321
//     §4.5.3.2); each body write has its own (§4.5.3.2.5, go-smtp sets none
//     during the body); the reply to the final "." gets twice the timeout
//     (§4.5.3.2.6, 10 minutes by default). Cancelling ctx closes the socket,
//     which aborts whatever is blocked.
//   - SIZE (RFC 1870): a message larger than the remote's advertised limit is
//     not sent at all; every recipient gets a local 552 5.3.4 that names both
//     sizes, so the NDR can tell the sender the remote's limit (seed 000).
//   - "Too many recipients" at RCPT (x.5.3, RFC 5321 §4.5.3.1.10): no further
//     RCPT is sent; that recipient and the later ones carry the reply and
//     go in the caller's next transaction on the same Conn.
//   - TLS: opportunistic mode (RFC 7435) does STARTTLS when offered without
//     verifying the certificate and continues in plaintext only when
//     STARTTLS is not offered; a refused STARTTLS or a failed handshake
//     defers the host instead of falling back on the same connection. The
//     starttls and implicit modes verify against Target.RootCAs (system roots
//     when nil) and Target.ServerName (the host of Addr when empty). Data
//     buffered in plaintext after the 220 to STARTTLS is refused (the
//     CVE-2011-0411 injection, RFC 3207 §5).
//   - AUTH (RFC 4954) uses PLAIN, or LOGIN when only LOGIN is offered. It is
//     attempted in whatever protection the TLS mode gave: with "none" or an
//     opportunistic session without STARTTLS the password goes in clear,
//     which the operator chose with the mode.
//   - A Conn is not safe for concurrent use.
package smarthost
