// Package smarthost is the outbound side of relayq: the delivery scheduler
// that joins the queue to next hops (an MX or an upstream smart host),
// routing, connection caps, the circuit breaker and the reports (NDRs).
//
// # The SMTP client (package smtpclient, courier.go)
//
// Speaking SMTP (dial, TLS, AUTH, PIPELINING, the transaction, the reply
// reader) is package smtpclient, which knows nothing of the queue; its
// invariants are stated there. This package uses it only through Courier
// (open a Session with a Target) and Session (Send a transaction, Addr,
// Close): smtpCourier is the real one, and a test may script another.
// Every error is, or wraps, a *smtpreply.Reply; Send returns exactly one
// RcptResult per recipient; a non-nil error from Send means the session is
// unusable and is closed, never reused.
//
// # Routing (route.go)
//
// ConfigRouter decides the route at every attempt, never at enqueue, so a
// configuration change (Set) applies to mail already queued: the first
// [[delivery.route]] matching the recipient domain and the envelope sender
// (routes by sender: "*@domain" or an address; the null sender matches
// none), else [delivery.smarthost] when it has hosts, else MX. The
// recipients of one message are grouped by destination and sender
// rewriting; each group is a transaction of its own.
//
//   - MX (RFC 5321 §5.1): hosts by preference, random among equal ones
//     (ConfigRouter.IntN), each host's addresses in turn, at most 10
//     addresses, port delivery.mx_port. Every lookup, the MX hosts'
//     addresses included, goes through the configured resolver
//     (delivery.dns_servers). No MX record → implicit MX on the
//     domain's own addresses; a single null MX (RFC 7505) → 556 5.1.10;
//     no such domain → 550 5.1.2; a temporary DNS failure → 451 4.4.3; MX
//     hosts none of which has an address → 451 4.4.4.
//   - MX TLS is opportunistic and unverified unless a route says otherwise;
//     the certificate name is the MX host's, never an address.
//   - A destination is "smarthost:" plus the hosts (and ";user=" and the
//     AUTH username, never the password, when the route authenticates),
//     or "mx:" plus the sorted MX host names: domains sharing MX hosts
//     share one cap, and two accounts at one provider are two
//     destinations. The circuit breaker likewise names a host with the
//     username it is used with (breakerHost): a refused AUTH cools down
//     that account at the host only.
//   - OAuth2 (auth = "xoauth2" or "oauthbearer", tokens.go): one
//     bearer.Source per account (username and token keys) of the current
//     configuration, named after its table for the log, handed to every
//     target of its routes; a reload keeps the sources of accounts whose
//     keys did not change, with their tokens, and drops the others.
//
// # Sender rewriting (rewrite.go)
//
//   - A route's Rewrite is applied to the outgoing copy at each
//     transaction, never to the queue record: reports go to the original
//     sender. The null sender is never rewritten.
//   - Rewrite.Sender replaces MAIL FROM; with From = replace or reply-to,
//     the header section (at most 64 KiB, parsed with go-message's
//     textproto) gets From: the rewritten address with the first author's
//     display name, reply-to moves the original From: field to Reply-To:
//     when there is none, and every DKIM-Signature field is dropped (each
//     signs From:). Worker.Signer then signs the rewritten header section
//     and the stored body (read once more) for the rewritten domain. All
//     other fields are sent byte for byte, in place; the body streams.
//   - The stored message is still read through the stored-size check
//     (exactReader), and SIZE= announces the rewritten size.
//
// # Scheduling (worker.go Run, sched.go)
//
//   - Due mail is taken from the queue by an incremental scan
//     (queue.DueAfter, from a cursor; from the start once a minute) into
//     the scheduler, at most maxKnown (100,000) messages at a time: an ID
//     and a counter each, never a body. Beyond that, due mail stays on
//     disk until there is room. A scan from the cursor passes over the
//     messages in the lines and in flight; when an attempt ends, the
//     message's schedule entry as it is then (left in place by an attempt
//     that wrote nothing, or written while the message was in flight) is
//     shown to the next scan by Worker.recheck (queue.Store.Recheck), so
//     nothing due waits for the scan from the start, which is only a net
//     under a recheck that failed.
//   - The scheduler keeps a line per destination and one for mail not yet
//     routed. Deliveries are started round-robin over the lines, one at a
//     time each, a line only while its destination has fewer deliveries
//     than its current cap, and all lines together at most MaxConns: each
//     destination gets its share, and a slow or capped one never holds
//     more than its cap of the MaxConns. Routing is per attempt: a
//     delivery from the routing line routes the message and delivers it
//     at once where its destination has a slot free and no line, else the
//     message joins that destination's line (and is routed again when it
//     is taken from there, so a reload applies). The message joins it with
//     the envelope the routing read, and its delivery uses that copy, not
//     a second read, if the queue's Changes is what it was before that
//     read (no hold, bounce or delete since, and the routing committed
//     nothing; a flush or a release since changes only what Update
//     reconciles); else it reads the message again.
//   - A destination with a message rate (Route.Rate: configured, or
//     learned from a reply retry classifies LowerRate) is paced by the
//     pacer (rate.go): a delivery to it starts only when the rate allows
//     one (pacer.reserve, evenly spaced, burst 1), checked after its cap.
//     A line out of rate is passed over like one at its cap and Run wakes
//     when it may send; nothing is deferred and no attempt counted for
//     waiting. Such a reply halves the rate (at least minRate), stores it
//     with the destination's state and sends the message back to the front
//     of the line (at most maxBusyRetries times in a row); a run of
//     RaiseAfter deliveries that waited for a learned rate raises it by
//     rateRaise, and it is forgotten at the configured rate.
//   - An attempt never waits for a destination's slot while holding one of
//     MaxConns: the message joins the line instead (pool.tryAcquire never
//     waits). So does a message with recipients at several destinations,
//     for each further one without a slot free; each transaction's
//     verdicts are committed before that.
//   - A destination cooling down (every host failing) has its mail
//     deferred at its next attempt as before; the line holds only due mail.
//   - A destination that takes a message again after mail was deferred
//     because it failed as a whole (no host took the connection, every
//     host cooling down) has that mail made due at once
//     (queue.ReleaseDest, in batches of 1,000): it goes through the line
//     within the cap like any other. Mail deferred for a reason of its own
//     (a 4xx in a transaction, a routing failure) keeps its backoff. A
//     released message that fails again is deferred by the backoff of its
//     attempt count so far (the count is what NDRs report; it is not
//     reset).
//
// # Delivery (attempt.go, plan.go, pool.go, breaker.go, caps.go)
//
//   - Caps are caps: a destination never gets a
//     new connection while its open ones (in use, idle and being dialled)
//     reach its current cap, nor any destination while MaxConns are open
//     (idle connections to other destinations are closed to make room).
//     Idle connections are reused for the next message to the destination
//     and closed after IdleTimeout.
//   - A 421 4.3.2 (or a 421 saying too many connections) while n
//     connections were open, the refused one included, lowers the cap to
//     n-1 (at least 1) and sends the message to the front of the
//     destination's line, to go as soon as a delivery of it ends: no
//     backoff, no attempt counted, at most 8 times in a row.
//     With no other connection open the refusal is not about our
//     concurrency: the host is failed like any 421. After RaiseAfter
//     successful transactions in a row with
//     every allowed connection in use, the cap rises by one up to
//     MaxConnsPerDest; a raise refused again doubles the run needed for
//     the next. Learned caps, their reason and time are stored (DestStore,
//     queue key d/<destination>), logged at warn when they change, loaded
//     at start, and shown by Worker.Destinations.
//   - A reload (Worker.SetMaxConnsPerDest) moves the destinations at the
//     old maximum to the new one; a lower learned cap stays. A lowered cap
//     closes idle connections beyond it and lets busy ones finish: they
//     are closed, not reused, when they come back.
//   - Circuit breaker per host: a host that fails to connect, refuses us
//     before MAIL, fails TLS or says 421 is skipped for CoolDown, doubling
//     per failure in a row up to MaxCoolDown; the next host is used. When
//     every host is cooling down the recipients are deferred with the
//     reply that put the last one there. One success closes the breaker.
//     Plan (plan.go) gives a new message for such a destination that same
//     verdict before its first commit, while the breaker still says every
//     host is cooling down, so the attempt that would try nothing is not
//     made; it never decides anything the breaker has not.
//   - A host that offered STARTTLS and failed the handshake is not tried
//     again in plaintext within the attempt.
//
// # Several nodes (cluster.go; Worker.Cluster, nil without [cluster])
//
//   - Every new connection holds a cluster lease from before its dial
//     until it is closed (sharedSession), however the pool drops it: the
//     connections of all nodes to a destination never exceed its cap while
//     they share limits. A refused lease puts the destination on hold for
//     cluster.RetryAtCap (pool.hold: only the connections open are used);
//     the message goes back to the front of its line, no attempt counted.
//   - A 421 4.3.2 counts the connections of all nodes (Cluster.Live) and
//     publishes the lowered cap; every node follows a published cap
//     (pool.follow) and holds no more connections than its share
//     (Cluster.Share: all of the cap, or cap/expected_nodes while Redis is
//     unreachable; pool.share). No raise within clusterRaiseHold of a
//     lowering. Cool-downs are published and adopted (breaker.adopt).
//   - Idle connections are kept at most clusterIdleTimeout: their leases
//     are other nodes' to take.
//   - A paced destination's rate is one limiter for all nodes
//     (Cluster.Allow, asked by clusterPaced at the start of each delivery
//     the pacer let start, outside the scheduler's lock, with the rate in
//     force). When the nodes used it, the pacer holds the destination
//     until the cluster's next turn (pacer.hold, which gives the local
//     turn back) and the recipients go back to the front of the line: no
//     deferral, no attempt counted, no backoff. A turn the cluster grants
//     re-anchors the local limiter at it (pacer.allowed), so that no node
//     comes back ahead of the others at every turn. While Redis is
//     unreachable the cluster answers at rate/expected_nodes.
//   - A learned rate is published (lowerRate, rateSucceeded) and every
//     node follows a change of the published one at its next delivery
//     there (syncRate, pacer.follow; within the cluster's 500 ms refresh).
//     While Redis is unreachable each node keeps its own lessons and
//     publishes the last one when Redis answers again.
//
// # Reports (ndr.go, attempt.go: commit, expire)
//
//   - Every verdict is committed in one synced batch with the reports it
//     calls for (one message's whole change is one batch): the NDR of the
//     bounced recipients, the "relayed" DSN of delivered ones, and the
//     delay warning. Each transaction's verdicts are committed as soon as
//     it ends, before the next transaction, another host or a wait for a
//     slot, so a crash never sends again a recipient whose 250 came. The
//     commit has a context of its own (10 s), not the attempt's: verdicts
//     reached when shutdown interrupts an attempt are still written. If a
//     commit fails, the verdicts and their reports go with the attempt's
//     next commit, or are lost with it.
//   - An operator's flush, bounce or release during an attempt wins over
//     the attempt's rescheduling (queue.Message.Scheduled). A message
//     deleted during its attempt is not sent on: its Body is not found,
//     and a body that reads longer or shorter than the stored size is
//     never ended with "." (the connection is dropped instead).
//   - RFC 3461: NOTIFY, ORCPT, RET and ENVID are passed to a next hop that
//     offers DSN (envelopeFor, Send), which then answers for them. A
//     recipient delivered to a next hop without DSN that asked
//     NOTIFY=SUCCESS gets a "relayed" DSN (§5.2.2). NOTIFY=NEVER, or a
//     NOTIFY without FAILURE / DELAY, suppresses that recipient's NDR /
//     delay warning; no NOTIFY means FAILURE,DELAY.
//   - NDRs carry the original's headers, or the whole original for
//     RET=FULL up to ReturnFullMax (1 MiB by default; above it the headers,
//     and the NDR says so). Each failing recipient's status is the one the
//     worker settled on (queue.Recipient.Status), with the remote's reply,
//     how often and how long delivery was tried, explain.Summary and
//     explain.Hint. Expiry bounces pending recipients with 4.4.7, Action
//     failed, and the last reply.
//   - Delay warning: once per message (Envelope.DelayWarned, set in the
//     same batch), at the first commit after DelayWarning (0: never), to
//     the sender about the pending recipients whose NOTIFY allows DELAY;
//     Will-Retry-Until is Received + Lifetime.
//   - Retry timings (Backoff, Lifetime, DelayWarning) can change while Run
//     goes on (Worker.SetRetry): each is read from one atomically stored
//     value where it is used, so the next attempt uses the new ones; a
//     message keeps the next-attempt time it was committed with.
//   - Never a report to <> (invariant 4): a failed recipient of a message
//     from <> is logged at error ("double bounce") and counted
//     (Worker.DoubleBounces).
package smarthost
