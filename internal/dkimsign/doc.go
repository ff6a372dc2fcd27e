// Package dkimsign signs mail at intake with the keys of [[dkim]] (RFC
// 6376, with github.com/emersion/go-msgauth/dkim), before relay queues it,
// so that a signature is computed once whatever the number of delivery
// attempts.
//
// Invariants:
//
//   - Memory does not grow with message size. A message to sign is read
//     once: each chunk goes to one go-msgauth signer per key (which keeps
//     the header section and hashes the body as it streams) and to a spool
//     that holds the first Options.Memory bytes (256 KiB) in memory and
//     the rest in an unlinked temporary file; the queue then reads the
//     signature fields and the spool. The signature covers the body, so it
//     exists only once the whole body has been read; the spool is what
//     lets it go in front of the body without holding the body in memory.
//     A message that is not signed is not spooled: only its header
//     section (at most 1 MiB) is read ahead, and the rest streams.
//   - What is signed is what is queued: the bytes after the signature
//     fields are exactly the bytes read, in order.
//   - Signature signs at delivery the copy of a message whose From: a
//     route rewrote: it reads the message once, keeps nothing, and returns
//     the fields only; the caller reads the message again to send it.
//   - A key is only ever used for the domains it is configured for: the
//     domain of the one From: field, equal to [[dkim]] domain or below it
//     with subdomains = true. A message with no From: field, or several,
//     is not signed (a second From: is how a signature would be lent to a
//     forged author).
//   - Canonicalisation is relaxed/relaxed, SHA-256; From is oversigned.
//   - Keys are read once, by New; a key that does not load (missing file,
//     not PEM, RSA under 2048 bits, another algorithm) is an error naming
//     the entry and the file, so relayq does not start with it.
package dkimsign
