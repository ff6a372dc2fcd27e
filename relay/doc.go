// Package relay is the inbound side of relayq: a go-smtp Backend and Session
// that accept mail over SMTP and hand each message to the queue, with the
// intake protection around them: listener modes and TLS, AUTH, connection
// caps, the relay policy, message limits and back pressure.
//
// Invariants (docs/design.md; each is proven by a test in this package):
//
//   - 250 only after an fsync'd commit. The reply to DATA is
//     "250 2.0.0 OK queued as <id>" only after Queue.Put returned nil, and Put
//     returns nil only once envelope and body are committed with pebble.Sync
//     (docs/design.md "Invariants" 1). Shutdown waits for a transaction in flight to
//     get its reply before it closes the connection.
//   - 451 4.3.0 on store failure. A Put that fails for a storage reason
//     gives exactly 451 4.3.0, an unwrapped *smtp.SMTPError: go-smtp
//     type-asserts the error, and anything else would reach the client as
//     451 4.0.0 or a permanent 554 5.0.0 and make the sender bounce mail it
//     should retry. A Put refused for want of room (diskspace.ErrNoRoom: the
//     volume is down to the queue's reserve) is the mail system being full
//     (RFC 3463 X.3.1): 452 4.3.1 naming the queue disk, and back pressure
//     goes to high at once. A storage error Pebble cannot go on from (a
//     failed WAL write or sync) gets no reply at all: the process exits
//     (queue/fatal.go) and the client's connection drops.
//   - No open relay (invariant 6). RCPT is refused with 550 5.7.1 unless the
//     session has authenticated, or the client's address is in
//     Config.AllowedNetworks and the listener is not a submission listener.
//     The policy is checked before the address is looked at, so no way of
//     writing an address changes the answer for a client that may not relay.
//   - What is queued is what is delivered. A recipient whose local part
//     holds routing (user%host@relay, host!user@relay, "user@host"@relay,
//     x@y@z, and full-width look-alikes of % ! @) is refused from everyone
//     with 501 5.1.3, so no next hop can read it as a route elsewhere; a
//     source route (@a,@b:user@host) is dropped by go-smtp as RFC 5321
//     §4.1.1.3 allows, and only the mailbox is queued.
//   - One message in, one message out. The body is streamed (never held
//     whole in memory) through one reader pass that turns every bare LF and
//     bare CR into CRLF (or, with BareReject, refuses the message with
//     550 5.5.2), so no byte sequence a client sends inside DATA can become
//     an end-of-data marker at the next hop (SMTP smuggling, RFC 5321 §2.3.8
//     and §4.1.1.4). The same pass enforces the size limit (552 5.3.4,
//     RFC 1870) and the Received hop limit (554 5.4.6, RFC 5321 §6.3); any
//     of them makes the reader fail, so Put stores nothing. It also reads
//     the Message-ID and Subject fields from the first 64 KiB of the header
//     section (headerscan.go, holding only those two values) into the
//     envelope, for operators; they never change what is queued.
//   - Signed once, before the queue (sign.go). With Config.Signer (DKIM),
//     that reader's output goes through the signer, which reads a message
//     it signs to its end (keeping it in a spool of bounded memory) before
//     Put reads the signature fields and the message back; Put sees what
//     the signer hashed, so a signature never covers other bytes than those
//     queued. A signer error is a failure to store (451 4.3.0).
//   - AUTH only over TLS (RFC 4954 §4) unless a listener allows insecure
//     AUTH; every attempt is one bcrypt comparison, against a dummy hash for
//     unknown users (no user enumeration by timing); the third failure on a
//     connection closes it; failures per source are rate-limited.
//   - Back pressure never stops delivery. It refuses MAIL only; the queue
//     and the delivery worker are not touched.
//
// Where a limit is checked, and what the client sees:
//
//	connect  over MaxConnections / MaxConnectionsPerSource   421 4.3.2, closed (before the greeting)
//	idle     no command for ReadTimeout (5 min)               421 4.4.2, closed (go-smtp)
//	AUTH     plaintext without AllowInsecureAuth              523 5.7.10
//	AUTH     wrong user or password                           535 5.7.8
//	AUTH     third failure on the connection                  421 4.7.0, closed
//	AUTH     source over AuthFailuresPerSource in the window  454 4.7.0
//	AUTH     inside a transaction                             503 5.5.1
//	MAIL     submission listener before AUTH                 530 5.7.0
//	MAIL     back pressure high, or medium for a client
//	         that may not relay                               452 4.3.1 Insufficient system resources (<resource>)
//	MAIL     SIZE= above MaxMessageSize                       552 5.3.4 (RFC 1870 §6.2)
//	MAIL     user or source over its hourly message limit     450 4.7.1 (ratelimit.go)
//	RCPT     not allowed to relay                             550 5.7.1
//	RCPT     address syntax                                   501 5.1.3 (go-smtp: 501 5.5.2 if unparseable)
//	RCPT     routing in the local part                        501 5.1.3
//	RCPT     more than MaxRecipients                          452 4.5.3 (RFC 5321 §4.5.3.1.10)
//	RCPT     user over its hourly recipient limit             450 4.7.1
//	DATA     body above MaxMessageSize                        552 5.3.4
//	DATA     Received fields above MaxHops                    554 5.4.6
//	DATA     bare CR or LF with BareReject                    550 5.5.2
//	DATA     client stalls for ReadTimeout                    451 4.4.2, connection closed
//	DATA     queue cannot store                               451 4.3.0
//	DATA     queue's volume down to its reserve               452 4.3.1 Insufficient system resources (queue disk space)
//
// The hop count is of the Received fields the message arrived with, in its
// header section; relayq's own is not counted.
//
// The size limit counts the octets the client transmits after the 354,
// CRLFs included, minus dot-stuffing and the final ".", as RFC 1870 §3
// defines message size; the Received header relayq adds and the CRs it
// inserts are not counted. A message of exactly MaxMessageSize octets, the
// SIZE advertised, is accepted and one more octet is not, whichever reader
// takes the body: the fast path, or go-smtp's, which relayq builds from a
// copy patched for this (third_party/go-smtp: v0.25.1 refused exactly the
// limit, its budget spent before it saw the end-of-data line).
//
// # Connections
//
// Server.Serve wraps each accepted connection itself (conn.go): the caps are
// counted there, since go-smtp has no hook before its greeting, and a
// connection counts against its source only until its client has quit (the
// 221, seen in the clear) or closed its side (its FIN, seen in the socket's
// TCP state by the next connection from that source over the cap; after a
// look that finds none closed, the next is at least probeInterval later), not
// until relay has finished tearing it down, and against the total until
// relay has closed it. At most MaxConnectionsPerSource of a source's
// connections are let off so at once, so a source never holds more than
// twice its cap (a client that closes its side right after pipelining a
// transaction, or stops reading, keeps relay busy after its FIN); the read
// deadline slides during DATA; a multi-line reply, which go-smtp writes line
// by line, goes out in one write; control characters go-smtp would echo
// from client input are replaced; Shutdown can close idle connections; and
// a DATA body is read by the fast path (fastdata.go) only when go-smtp holds
// none of it: the wrapper never hands go-smtp bytes past a DATA command
// line in the same read, and arms the fast path at the 354 only if nothing
// after that line has been read from the socket.
// Implicit TLS (ModeSMTPS) is layered on top of that wrapper with
// tls.Server, so that go-smtp sees a *tls.Conn (ESMTPS, AUTH). Inside TLS
// the wrapper sees records only: coalescing and cleaning apply to
// plaintext.
//
// # Reload
//
// Server.SetPolicy changes, while serving and without closing a
// connection, the allowed networks, the users, the recipient and hop
// limits, bare line-ending handling, the connection caps and the sending
// limits (Policy; the limiter's buckets take new limits at once). The
// policy is one immutable value behind an atomic pointer: the listener
// loads it once per connection it admits, a session once per command,
// and a transaction keeps the one it loaded at MAIL until it ends, so
// that no message is judged half by one policy and half by another.
// Lowered caps close nothing: they refuse new connections until the open
// ones fall below. MaxMessageSize and TLS stay as New got them: go-smtp
// advertises SIZE and offers STARTTLS from fields of its own server that
// cannot change while it serves. (The back-pressure thresholds change in
// package pressure: Monitor.SetThresholds.)
//
// # Sending limits
//
// RateLimits (ratelimit.go) are token buckets per authenticated user and
// per source (an IPv4 address, an IPv6 /64), kept in the Server with the
// clock of Config.Now: a token is taken when MAIL (RCPT) is accepted, never
// otherwise; the first refusal of an episode is logged once at warn;
// SetPolicy applies new limits to the existing buckets at once; a bucket
// full again is dropped, so memory follows the keys of the last hour (at
// most maxTrackedSources, beyond which new keys are not limited).
//
// # Back pressure
//
// Back pressure is package pressure's (its Monitor samples the resources
// and keeps the level; the running instance owns it, samples it before
// serving and stops it). The server only asks, through the small Pressure
// interface: Level at every MAIL, and NoRoom when a Put is refused for
// want of room. The overall level decides:
//
//	normal  accept
//	medium  accept from allowed networks and authenticated clients; others 452 4.3.1 at MAIL
//	high    452 4.3.1 at MAIL for everyone; delivery of queued mail goes on
//
// The 452 names the resource that sets the level (Resource.Describe).
// relay depends on neither the queue's storage nor Pebble: it names
// messages with package queued's types, and knows a refusal for want of
// room by diskspace.ErrNoRoom.
package relay
