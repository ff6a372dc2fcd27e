// Package dsn composes delivery status notifications: Report.Bytes writes
// a multipart/report (RFC 6522) with a message/delivery-status part
// (RFC 3464) for failed (an NDR; expiry is Status 4.4.7, Action failed),
// delayed (with Will-Retry-Until) and relayed (RFC 3461 §5.2.2) reports,
// and OriginalHeaders reads the header section of the message reported on.
// smarthost is its one user (ndr.go); it sits under internal/ because its
// types are relayq's own and no API to keep.
//
// # Invariants
//
//   - The human-readable part gives, per failing recipient, the Summary
//     line of its status (internal/explain), the reply (sanitised, at most
//     1 KiB), how often and how long delivery was tried and the Hint. The
//     third part is the original's header section (text/rfc822-headers),
//     or the whole original (message/rfc822) when Full is set for
//     RET=FULL.
//   - Every value that came from outside (addresses, ENVID, ORCPT, remote
//     replies, the original's Subject after RFC 2047 decoding) is stripped
//     of CR, LF and other control characters before it is written, so no
//     input can add a header line, and no line exceeds the 998 octets of
//     RFC 5322 §2.1.1. The report's own header fields never carry text from
//     the original message.
//   - The output is a pure function of the Report: with the same MessageID
//     (from which the MIME boundary derives) and Date, the same bytes. The
//     golden files under testdata/ hold them.
//   - The message/delivery-status part is ASCII: non-ASCII addresses and
//     values are written as RFC 6533 \x{HEX} escapes.
//
// # MIME
//
// mime/multipart writes the delimiter lines, each part's header section
// (a net/textproto MIMEHeader: Content-Description, Content-Transfer-Encoding
// when the part is not ASCII, Content-Type) and the closing delimiter, and
// checks a caller's Boundary (RFC 2046 §5.1.1). The boundary is derived
// from MessageID, so reports are reproducible, and checked against every
// part: a delimiter line inside the content would cut the report short.
// A part that is not ASCII is declared 8bit (RFC 6532 reports carry UTF-8
// text), and so is the whole message (RFC 2045 §6.4). The report's own
// header fields are folded here (foldHeader): neither mime nor
// net/textproto writes folded fields. mime.WordDecoder decodes the
// original's Subject.
//
// The package does no I/O beyond reading the reader OriginalHeaders is
// handed.
package dsn
