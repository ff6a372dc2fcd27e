// Package faultproxy is a TCP proxy for tests that puts network faults
// between an SMTP client and its next hop: it cuts the connection after
// the final "." of a message before the reply to it gets back, stalls or
// resets a connection in the middle of the message data, or accepts a
// connection and never says a word.
//
// Contract:
//
//   - Each accepted connection gets the Fault the plan returns for its
//     index (0 for the first), decided at accept time. Pass forwards both
//     ways unchanged, and so does every other fault until it fires.
//   - The proxy reads just enough of the client's stream to know where a
//     message's data starts (after a DATA command line) and where it ends
//     (CRLF "." CRLF, RFC 5321 §4.1.1.4; a dot-stuffed ".." line is data).
//     It never changes a byte it forwards.
//   - CutAfterDot forwards the data through the final ".", so the next
//     hop gets the whole message; the next hop's reply to it is read and
//     dropped, and both connections are closed (FIN, no RST): the client
//     never learns that the message arrived, the case where at-least-once
//     delivery sends it twice.
//   - StallInData and ResetInData fire once at least Options.After bytes
//     of message data went through. A stall forwards nothing more in either
//     direction, keeps both connections open and drains what the client
//     still sends, until the client gives up and closes. A reset closes the
//     client's connection with an RST (SO_LINGER 0) and the next hop's with
//     a FIN, so the next hop has only a partial message.
//   - Silent accepts the connection and never connects on, writes nothing,
//     and closes when the client does: a next hop that never answers.
//   - Fired counts the connections on which a fault took effect, so that a
//     test can tell a fault that never happened from one that did no harm.
//   - Close stops listening, closes every connection and waits for the
//     proxy's goroutines; the proxy holds nothing after it.
package faultproxy
