// Package bearer supplies the OAuth2 bearer tokens relayq authenticates
// with to a smart host (AUTH XOAUTH2 or OAUTHBEARER): one Source per
// [delivery.smarthost] or [[delivery.route]] that says auth = "xoauth2" or
// "oauthbearer", from its token_file or its token_command. A Source
// implements smtpclient.TokenSource.
//
// Invariants:
//
//   - A token is never logged and never part of an error: errors and
//     warnings name the route (Options.Name), the file or the command and
//     what went wrong. A token is one word of printable ASCII; anything
//     else read from the file or printed by the command is refused without
//     being quoted.
//   - token_file: the file is read again whenever its modification time or
//     size changed since the last read (a stat per use), and always after
//     the next hop refused the token, in case it was rewritten within the
//     same second. Keeping the file fresh is someone else's job.
//   - token_command: the command runs when there is no token yet, when the
//     token is older than Options.Lifetime, and when the next hop refused
//     the current one. Concurrent deliveries that need a new token share
//     one run (no thundering herd), and a refusal of a token that has
//     already been replaced returns the newer one without running the
//     command again. A run gets Options.Timeout (default 30 s) whoever
//     waits for it; a caller whose ctx ends stops waiting, not the run.
//     The command is run directly (argv), never through a shell unless it
//     is one; its trimmed standard output is the token; its standard error
//     is logged, trimmed and truncated, when it fails.
//   - A refusal by the next hop is logged as a warning naming the route,
//     with the next hop's reply.
package bearer
