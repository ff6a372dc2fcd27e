// Package retry decides what happens after a delivery attempt: it classifies
// SMTP replies (remote or made up locally), computes the backoff schedule,
// tells when a message has expired, and composes RFC 3464 delivery status
// notifications. It imports no other package of relayq and does no I/O
// beyond reading a reader it is handed, so every decision is a pure function
// of its inputs and can be tested row by row.
//
// # Reply classification (the contract; docs/design.md "Reply classification")
//
// Classify(stage, reply) returns a Decision; its Action is one of Deliver,
// Defer, RetryNow, Split or Bounce.
//
//	what happened                                 outcome
//	--------------------------------------------  -------------------------------------------------
//	2xx                                           Deliver
//	421 (any stage)                               Defer, CloseConn (no QUIT), NextHost; if 4.3.2 or
//	                                              the text says "too many connections", "maximum
//	                                              number of concurrent connections" or "connection
//	                                              limit": RetryNow + LowerCap (as an Exchange server that allows 20 per source says it: lower the
//	                                              destination's cap, retry as soon as a slot frees,
//	                                              no attempt counted)
//	4xx or 5xx at RCPT with x.5.3 or text         Split: not a failure, send the remaining
//	"too many recipients"                         recipients in a new transaction (RFC 3463 X.5.3
//	                                              says such a message "should" be split, whatever
//	                                              the class; this takes in "552 5.5.3" at RCPT)
//	other 4xx                                     Defer with backoff
//	552 at RCPT                                   Defer (RFC 5321 §4.5.3.1.10: it is temporary)
//	552 5.3.4 / 5.2.3 after the final "."         Bounce with that status (the remote's size limit)
//	552 after the final "." saying "size exceeds" Bounce 5.3.4, whatever its enhanced code (Exchange:
//	or "too big/large"                            "552 4.3.1 Message size exceeds fixed maximum …")
//	other 5xx                                     Bounce that recipient
//	local 4.4.1 / 4.4.2 (connect, TLS, dropped)   Defer + NextHost
//	local 4.4.3 (DNS temporary failure)           Defer
//	local 5.1.2 (no MX, no A) / 5.1.10 (null MX)  Bounce
//	anything else (1xx, 3xx out of place)         Defer 4.5.0, CloseConn: the dialogue is out of step
//	message older than its lifetime (Expired)     Bounce 4.4.7, DSN Action "failed"
//
// When the basic and the enhanced code disagree in class ("552 4.3.1"), the
// basic code decides; Decision.Status is Reply.Status() (the basic class with
// the enhanced subject and detail) and Decision.Note says so, for the log.
//
// Deliver at a stage before StageBody only means "go on"; a recipient is
// delivered when the reply after the final "." is 2xx. FromError turns any
// error of the outbound side (a *Reply, a go-smtp *smtp.SMTPError, net, TLS,
// DNS and context errors) into a *Reply, so that
// Classify(stage, FromError(stage, err)) is total; a nil error classifies as
// Deliver.
//
// # Backoff and expiry
//
// Backoff.Delay doubles from Min to Max with jitter; it never overflows and
// never leaves [Min, Max]. Expired compares a message's age with the
// configured lifetime (max_queue_lifetime).
//
// # DSNs
//
// DSN.Bytes composes a multipart/report (RFC 6522) with a
// message/delivery-status part (RFC 3464): failed (an NDR; expiry is Status
// 4.4.7, Action failed), delayed (with Will-Retry-Until) and relayed
// (RFC 3461 §5.2.2) reports. The human-readable part gives, per failing
// recipient, the Summary line of its status, the reply (sanitised, at most
// 1 KiB), how often and how long delivery was tried and the Hint. The third
// part is the original's header section, or the whole original
// (message/rfc822) when Full is set for RET=FULL. Every value that came
// from outside (addresses, ENVID, ORCPT, remote replies, the original's
// Subject after RFC 2047 decoding) is stripped of CR, LF and other control
// characters before it is written, so no input can add a header line, and
// no line exceeds the 998 octets of RFC 5322 §2.1.1. The report's own
// header fields never carry text from the original message.
//
// # The status-code knowledge base
//
// Explain(code) says what an enhanced status code means: a one-line
// Summary ("5.1.1 Bad destination mailbox address: the recipient does not
// exist at the destination"), likely causes and fixes, for every RFC 3463
// subject/detail pair, the later IANA registrations (X.1.10, X.7.8-X.7.27)
// and Exchange's table of enhanced status codes; unknown codes fall back to
// their class and subject. Hint, used in NDRs, and ExplainText, printed by
// `relayq explain`, read the same table (codes_*.go), which is keyed by
// subject and detail: the class only says "for now" or "for good".
package retry
