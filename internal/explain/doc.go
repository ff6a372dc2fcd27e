// Package explain is the status-code knowledge base: what each RFC 3463
// enhanced status code means, what usually causes it and what the sender or
// an operator can do, written in our own words from RFC 3463, the later
// IANA registrations (X.1.10, X.7.8-X.7.27) and Exchange's table of
// enhanced status codes. It is the one source of the Status and "What to
// do" lines of NDRs (Summary, Hint), of the explanation the admin API gives
// next to a stored reply, and of `relayq explain` (Text).
//
// It lives apart from retry because it is reference text, not a decision:
// nothing in it changes what happens to a message. It sits under internal/
// because only relayq's own packages (cmd, admin, smarthost and the DSN
// composer) read it; the table's shape is no API to keep.
//
// # Invariants
//
//   - The table (codes_*.go) is keyed by subject and detail only: 4.1.1 and
//     5.1.1 mean the same thing, the class only says "for now" or "for
//     good". A pair is defined once; a second definition panics at start-up.
//   - Lookup never fails: an unknown detail falls back to its subject, an
//     unknown subject to its class, and Known says which.
//   - Summary is one line starting with the code; Hint is one sentence, ""
//     for the zero code and for success. Neither holds a control character.
//   - Text takes the status relayq reports for a reply and whether a 421
//     lowers a destination's cap from retry.Classify, so `relayq explain`
//     and the delivery worker read a reply alike.
//
// The package does no I/O and holds no state but the table.
package explain
