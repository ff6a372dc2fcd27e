// Package smtpreply is the SMTP reply: the one typed reply error (Reply:
// basic code, RFC 3463 enhanced code, text) that relay sends to clients,
// that smarthost makes of every remote answer and local failure, and that
// retry classifies; the parsing of a reply line (ParseReply, for config,
// the admin API and `relayq explain`), the reading of a reply from the
// wire (Read, for the outbound client), and the cleaning of text that came
// from outside (Sanitize, Truncate). It imports nothing of relayq, so every
// package can use it.
//
// # Invariants
//
//   - Reply.Error is the reply line, "451 4.3.0 text"; Status is the code
//     to report: the enhanced code when its class agrees with the basic
//     code, else the basic class with the enhanced subject and detail (the
//     basic code decides, as in "552 4.3.1").
//   - ParseEnhanced takes only RFC 3463 codes: class 2, 4 or 5, subject
//     and detail of 1-3 digits.
//   - Read and ParseReply split a line alike ("250 text", "250-text",
//     "250"); Read joins a multi-line reply with "\n" as net/textproto's
//     ReadResponse does, and holds at most MaxLine bytes a line and
//     MaxReply a reply: more is a *textproto.ProtocolError.
//   - Sanitize leaves no control character (CR and LF above all) and no
//     run of space; Truncate never splits a UTF-8 sequence.
package smtpreply
