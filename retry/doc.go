// Package retry decides what happens after a delivery attempt: it classifies
// SMTP replies (remote or made up locally), computes the backoff schedule
// and tells when a message has expired. Of relayq it imports only
// internal/smtpreply, the reply it classifies, and config, for the default
// backoff; it does no I/O, so every decision is a pure function of its
// inputs and can be tested row by row.
//
// # Reply classification (the contract; docs/design.md "Reply classification")
//
// Classify(stage, reply) returns a Decision; its Action is one of Deliver,
// Defer, RetryNow, Split or Bounce. RetryNow comes with LowerCap or
// LowerRate: what the delivery side lowers before it sends again.
//
//	what happened                                 outcome
//	--------------------------------------------  -------------------------------------------------
//	2xx                                           Deliver
//	421 (any stage)                               Defer, CloseConn (no QUIT), NextHost; if 4.3.2 or
//	                                              the text says "too many connections", "maximum
//	                                              number of concurrent connections" or "connection
//	                                              limit": RetryNow + LowerCap (as an Exchange server that allows 20 per source says it: lower the
//	                                              destination's cap, retry as soon as a slot frees,
//	                                              no attempt counted); else if the text says a rate
//	                                              (below): RetryNow + LowerRate, CloseConn
//	4xx whose text says "rate limit", "sending    RetryNow + LowerRate: lower the destination's
//	rate", "message rate", "rate exceeded", "too  rate of messages; the message waits for it in
//	many messages", "sender thread limit" (as     the destination's line, no attempt counted, no
//	Exchange Online's 432 4.3.2 says it)          backoff, no other host tried
//	4xx or 5xx at RCPT with x.5.3 or text         Split: not a failure, send the remaining
//	"too many recipients"                         recipients in a new transaction (RFC 3463 X.5.3
//	                                              says such a message "should" be split, whatever
//	                                              the class; this takes in "552 5.5.3" at RCPT)
//	other 4xx                                     Defer with backoff
//	530, 534, 535, 538 or x.7.8 to AUTH (hello)   Defer 4.x.x: the relay's credentials or OAuth2
//	                                              token were refused (RFC 4954 §6), not the mail
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
// retry also makes the decisions for recipients no reply decided, so that
// the delivery side never builds or amends a Decision itself: Unreached
// (no host of the destination reached: always Defer, with Classify's status
// for the last failure made transient: a 535 5.7.8 to AUTH is recorded as
// 4.7.8), Unsplit (a "too many recipients" split off by a
// peer that took no recipient: Defer, not another split) and
// OperatorBounce (`relayq queue bounce`: Bounce 5.0.0).
//
// # Backoff and expiry
//
// Backoff.Delay doubles from Min to Max with jitter; it never overflows and
// never leaves [Min, Max]. Expired compares a message's age with the
// configured lifetime (max_queue_lifetime).
//
// # DSNs and the status-code knowledge base
//
// Composing delivery status notifications is internal/dsn's; what each
// enhanced code means (the Status and "What to do" lines of an NDR,
// `relayq explain`) is internal/explain's, which reads Classify to say what
// relayq does with a reply. retry imports neither.
package retry
