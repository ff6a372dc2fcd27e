// Package cluster lets several relayq nodes share each destination's
// limits through one Redis (or Valkey) server: connection leases under the
// destination's cap, the cap learned from 421 4.3.2, message rates, the
// rate learned from a reply saying we send too many messages, and the
// cool-downs of failing hosts. Each node keeps its own queue; only limits
// are shared. Without [cluster] in the configuration this package is not
// used at all.
//
// Open builds a Client from [cluster] (nil without it). The delivery
// scheduler talks to it through Limits: Acquire before opening a
// connection (on ErrAtCap the destination waits RetryAtCap), Release when
// the connection is closed (an idle connection keeps its lease), Allow
// before each message to a paced destination (with the rate in force
// there, configured or learned), PublishCap when a 421 4.3.2 lowers the
// cap or a run of successes raises it and PublishRate likewise for the
// learned rate, LearnedCap and LearnedRate to follow the other nodes'
// lessons, Live (the leases of all nodes) to learn a cap from a 421, Share
// (the connections this node may keep: its fallback share while
// degraded), SetCooldown/Cooldown around dials. Degraded, Episodes, Nodes,
// Destinations and Held feed status, /readyz and metrics.
//
// # Keys
//
// Every key starts with relayq:{name}: (name = [cluster] name, "default"),
// a Redis Cluster hash tag, so that all keys of a cluster are in one slot
// and a script may touch several. Every key expires when unused:
//
//	dest:<id>:leases  sorted set, member node|token-seq, score = expiry (ms);
//	                  expires 2×LeaseTTL after the last Acquire or renewal
//	dest:<id>:cap     the learned cap; CapTTL (24 h) after the last publish
//	dest:<id>:learned_rate
//	                  the learned rate (messages a second, a float);
//	                  CapTTL after the last publish
//	dest:<id>:rate    GCRA's theoretical arrival time (µs); 1 s after it
//	host:<h>:cooldown end of the cool-down (ms); expires at it
//	nodes             sorted set, node → last heartbeat (ms); 2×NodeWindow
//
// # Invariants
//
//   - Shared mode: a lease is granted only by one atomic script
//     (acquireScript, run with EVALSHA) that prunes expired leases, then
//     grants only while the live leases of all nodes are below
//     min(cap, learned cap). So the connections of the nodes that reach
//     Redis never exceed the cap, except for leases registered again after
//     Redis was unreachable (below), which only delay new grants.
//   - A lease counts for LeaseTTL (30 s) after its last renewal; the
//     background loop renews every held lease every LeaseTTL/3. A node
//     that dies or loses Redis stops counting within LeaseTTL, and the
//     others then take its share.
//   - Every Redis call made for a delivery (the methods of Limits) is
//     bounded by Timeout (50 ms) and never retried; the background loop's
//     (probes, renewals, heartbeats, learned caps), status's and the
//     dialling of connections, which no delivery waits for, by
//     BackgroundTimeout (1 s). A failed call (other than by the caller's
//     own context) makes the client degraded: one warning per episode,
//     Degraded() true, and no further calls to Redis on the delivery path.
//     Nothing fails because Redis is gone: Acquire, Allow and Cooldown
//     answer from the local fallback.
//   - Degraded, the node counts every lease it holds (taken before or
//     during the episode) against max(1, min(cap, last learned cap) /
//     expected_nodes), paces messages at rate/expected_nodes, and keeps its
//     own cool-downs. With expected_nodes at least the number of nodes and
//     all of them degraded, their total stays within the cap.
//   - The switches take fallbackGrace (LeaseTTL/3 + CapRefresh + 2 ×
//     BackgroundTimeout; none with expected_nodes 1) to reach every node,
//     and meanwhile the nodes are in both modes at once. For that long a
//     node that lost Redis opens no more connections than it held when it
//     lost it (the others may still hold what Redis granted them), and one
//     that found Redis again no more than its fallback share (the others
//     may still hold fallback leases that a restarted Redis does not
//     count). Without it, the first node to switch was granted its whole
//     share or the whole cap, on top of the others'.
//   - Back to shared: the loop pings Redis every CapRefresh; when it
//     answers, every lease the node holds is written into Redis again,
//     whatever the count (a connection that exists is counted, even above
//     the cap), and shared mode resumes in the same critical section that
//     finds no lease left unregistered. From then on Redis counts every
//     connection of this node, and no node gets a new lease until the
//     total is below the cap: the excess of an episode (at most
//     cap/expected_nodes per node that was degraded while others were not)
//     only drains. A lease registered again is removed from Redis by its
//     Release even before shared mode resumes; one released while Redis was
//     unreachable stays there until its TTL, which errs towards fewer
//     connections.
//   - Learned caps: acquireScript reads the cap key itself, so a published
//     cap bounds every node's next lease at once; LearnedCap answers from a
//     cache read back every CapRefresh (500 ms) for the destinations asked
//     in the last 10 minutes. A cap published while degraded stays local.
//   - Learned rates: LearnedRate answers from the same cache (a
//     destination's cap and rate are read back in one MGET). A node's own
//     publish is in its cache at once, and a read that began before it
//     does not undo it. A rate published while degraded stays local, and
//     Redis's value (none, after a restart of Redis) replaces it once
//     Redis answers (the delivery worker then publishes its own again).
//   - Message rates: Allow runs gcraScript, one limiter per destination
//     whatever the number of nodes, at the rate the caller passes (each
//     node's rate in force: the same on all once they follow the learned
//     one). A refusal consumes nothing; it says how long to wait. Degraded,
//     a local GCRA at rate/expected_nodes answers.
//   - Clocks: lease expiries, rates and cool-downs use the nodes' clocks
//     (Options.Now), which must agree to well under LeaseTTL (NTP). A skew
//     of d moves a lease's expiry by d and a rate by d's worth of messages.
package cluster
