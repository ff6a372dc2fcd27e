// Package relay is the inbound side of relayq: a go-smtp Backend and Session
// that accept mail over SMTP and hand each message to the queue.
//
// Invariants (DESIGN.md; each is proven by a test in this package):
//
//   - 250 only after an fsync'd commit. The reply to DATA is
//     "250 2.0.0 OK queued as <id>" only after Queue.Put returned nil, and Put
//     returns nil only once envelope and body are committed with pebble.Sync
//     (DESIGN.md invariant 1). Shutdown waits for a transaction in flight to
//     get its reply before it closes the connection.
//   - 451 4.3.0 on store failure. A Put that fails for a storage reason gives
//     exactly 451 4.3.0, an unwrapped *smtp.SMTPError: go-smtp type-asserts
//     the error, and anything else would reach the client as 451 4.0.0 or a
//     permanent 554 5.0.0 and make the sender bounce mail it should retry.
//   - No open relay (invariant 6). RCPT is refused with 550 5.7.1 unless the
//     client's address is in Config.AllowedNetworks or the session has
//     authenticated. There is no other way to get a recipient accepted.
//   - One message in, one message out. The body is streamed (never held
//     whole in memory) through one reader pass that turns every bare LF and
//     bare CR into CRLF, so no byte sequence a client sends inside DATA can
//     become an end-of-data marker at the next hop (SMTP smuggling,
//     RFC 5321 §2.3.8 and §4.1.1.4). The same pass enforces the size limit
//     (552 5.3.4, RFC 1870) and the Received hop limit (554 5.4.6,
//     RFC 5321 §6.3); either makes the reader fail, so Put stores nothing.
//
// Where a limit is checked:
//
//	MAIL  SIZE= above MaxMessageSize       552 5.3.4 (RFC 1870 §6.2)
//	RCPT  address syntax                   501 5.1.3
//	RCPT  not allowed to relay             550 5.7.1
//	RCPT  more than MaxRecipients          452 4.5.3 (RFC 5321 §4.5.3.1.10)
//	DATA  body above MaxMessageSize        552 5.3.4
//	DATA  Received fields above MaxHops    554 5.4.6
//	DATA  client stalls for ReadTimeout    451 4.4.2, connection closed
//	DATA  queue cannot store               451 4.3.0
//
// The hop count is of the Received fields the message arrived with, in its
// header section; relayq's own is not counted.
//
// The size limit counts the octets the client transmits after the 354, minus
// dot-stuffing, as RFC 1870 §3 defines message size; the Received header
// relayq adds and the CRs it inserts are not counted. go-smtp v0.25.1
// refuses a message of exactly MaxMessageSize octets (its DATA reader errs
// once its budget reaches zero, before it sees the end marker), so in effect
// the largest accepted message is one octet smaller than the advertised SIZE.
package relay
