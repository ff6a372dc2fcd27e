// Package sink is a scripted SMTP sink: a real go-smtp server on a loopback
// port that accepts, records and optionally stores what it is sent. Tests use
// it as the next hop of the outbound client and of the whole relay, and
// `relayq sink` runs it as a local development destination.
//
// Contract:
//
//   - Messages are recorded in arrival order; Messages returns copies, so a
//     caller can never change what the server recorded.
//   - A message is counted (and Wait woken) only after the OnData hook
//     accepted it and, when Options.Dir is set, after its file was written.
//     A rejected message is never counted or stored.
//   - Hooks return an *smtp.SMTPError to reply with exactly that reply (go-smtp
//     turns any other error into a generic 451/554); nil accepts. They can be
//     swapped at run time with SetHooks, so a test can flip a sink from
//     failing to accepting.
//   - MaxConns is enforced in a wrapping net.Listener, because go-smtp has no
//     connect hook: an extra connection gets "421 4.3.2 ..." instead of the
//     greeting and is closed (RFC 5321 §3.1 allows 421 in place of 220), the
//     reply of an Exchange server over its per-source connection limit.
//   - With Users or Bearer set, MAIL before a successful AUTH gets 530
//     5.7.0 (RFC 4954 §6); go-smtp itself never requires AUTH. Bearer
//     offers XOAUTH2 and OAUTHBEARER, refusing a token the way Google (an
//     error challenge, then 535 5.7.8) or Microsoft (535 5.7.3) does.
//   - MaxSize is advertised with SIZE and enforced by go-smtp (552 5.3.4);
//     MaxRecipients gives "452 4.5.3 Too many recipients" (RFC 5321
//     §4.5.3.1.10: 452 is the code for a full recipient buffer).
//
// SelfSigned makes a throwaway certificate for STARTTLS and implicit-TLS
// sinks, with a pool that trusts it for clients that verify.
//
// The sink holds every message in memory: it is a test and development tool,
// never a production destination.
package sink
