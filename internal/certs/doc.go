// Package certs holds relayq's TLS certificates: the listener's pair, read
// from files and reloaded while relayq serves, and the self-signed pairs
// that `relayq cert` writes and the test sinks present.
//
// Invariants:
//
//   - A File always serves a whole, valid pair: a new pair replaces the one
//     served in one atomic step, and only after it parsed and its key
//     matched its certificate. A pair that fails to load is reported and
//     the one served before stays.
//   - A reload closes nothing: connections keep the handshake they made;
//     each new handshake (a STARTTLS, an implicit-TLS connection) reads the
//     pair in force when it starts.
//   - Watch notices a changed file by its modification time, size and
//     inode, polled (no file-notification dependency): a renewal by
//     certbot or an internal CA takes effect within one poll interval.
package certs
