package explain

// Subjects 3 (mail system) and 4 (network and routing) of the knowledge
// base (explain.go). RFC 3463 §3.4-3.5, RFC 6710, and the Exchange
// transport reports of docs/design.md "The operator stories".
var systemCodes = map[[2]int]info{
	{3, 0}: {
		name:  "Other or undefined mail system status",
		means: "the receiving mail system has a problem it does not describe further",
		hint:  "The receiving mail system has a problem; if this persists its operators need to fix it.",
		causes: []string{
			"a configuration or resource problem on the receiving side",
			"Exchange 2003: a message routed to the MTA while the MTA is switched off",
		},
		fixes: []string{
			"read the reply text; try again later",
			"operators of the destination: check the transport logs and the routing topology",
		},
	},
	{3, 1}: {
		name:  "Mail system full",
		means: "the receiving server is short of disk, memory or queue space",
		hint:  "The receiving server is short of resources (disk, memory or queue space); delivery is retried, nothing needs doing for now.",
		causes: []string{
			"the disk holding the receiving server's queue is (nearly) full: Exchange back pressure stops intake below a free-space threshold",
			"memory pressure, or too many open files for the mail service",
			"the queue is on a file system that cannot hold it (Exchange: a FAT partition)",
		},
		fixes: []string{
			"senders: nothing, a 4.3.1 is retried until the queue lifetime runs out",
			"operators of the destination: free disk space on the queue volume or move the queue to a larger one; check memory and file-handle limits",
			"operators of the destination: review back-pressure thresholds so that they match the disk",
			"relayq itself answers 452 4.3.1 while its own back pressure is high; `relayq status` names the resource",
		},
	},
	{3, 2}: {
		name:  "System not accepting network messages",
		means: "the receiving server is not taking mail right now",
		hint:  "The receiving server is not accepting mail right now (shutting down, maintenance, or too many connections); delivery is retried.",
		causes: []string{
			"the server is shutting down or in maintenance",
			"with 421: a per-source limit on concurrent connections was reached (Exchange: \"421 4.3.2 The maximum number of concurrent connections has exceeded a limit\"); relayq then lowers that destination's connection cap",
			"Exchange 2000 SP1 and later: an administrator stopped the message in the queue viewer",
		},
		fixes: []string{
			"senders: nothing, delivery is retried",
			"operators of the sending side: lower delivery.max_connections_per_destination for that destination if it recurs",
			"operators of the destination: raise the per-source connection limit, or check why the service is not accepting mail",
		},
	},
	{3, 3}: {
		name:  "System not capable of selected features",
		means: "the message needs a feature the receiving server does not offer",
		hint:  "The receiving server lacks a feature the message needs; its operators need to look at it.",
		causes: []string{
			"the message needs 8BITMIME, SMTPUTF8 or BINARYMIME and the server does not offer it",
			"Exchange: the remote server ran out of disk space while receiving with BDAT, or another protocol error",
		},
		fixes: []string{
			"send the message as plain 7-bit text or with an ASCII address",
			"operators of the destination: check free disk space and the SMTP protocol log",
		},
	},
	{3, 4}: {
		name:  "Message too big for system",
		means: "the message is larger than the receiving server accepts at all",
		hint:  "The message is larger than the receiving server accepts; send it without the large attachments and share big files by a link.",
		causes: []string{
			"the message exceeds the next hop's maximum message size (Exchange: \"552 5.3.4 Message size exceeds fixed maximum message size\")",
			"attachments grow by about a third when encoded for mail, so a 20 MB file needs about 27 MB",
			"relayq saw the next hop advertise a SIZE limit smaller than the message and did not send it; the reply states both sizes",
		},
		fixes: []string{
			"send a smaller message: remove or compress attachments, share large files by a link",
			"operators of the destination: raise the maximum message size (Exchange: the connector and the organisation limits)",
			"relayq's own limit is limits.max_message_size",
		},
	},
	{3, 5}: {
		name:  "System incorrectly configured",
		means: "the receiving mail system is misconfigured, for example it would send the message to itself",
		hint:  "The receiving mail system is misconfigured; tell its postmaster.",
		causes: []string{
			"a server configured to relay a domain to itself, so the message loops back",
			"several virtual SMTP servers on one host sharing ports or catch-all addresses",
		},
		fixes: []string{
			"tell the postmaster of the receiving domain",
			"operators: check connectors, smart host and MX settings for a route that points back to the same server",
		},
	},
	{3, 6}: {
		name:   "Requested priority was changed",
		means:  "the message was accepted, with a different priority than asked for (RFC 6710)",
		hint:   "",
		causes: []string{"the server's policy limits message priorities"},
		fixes:  []string{"nothing to do"},
	},

	{4, 0}: {
		name:  "Other or undefined network or routing status",
		means: "a network or routing problem, not described further",
		hint:  "There is a network or routing problem between the mail servers; if it persists, tell the operators.",
		causes: []string{
			"DNS did not give an authoritative answer for the destination",
			"a smart host configured with a wrong name or address",
			"the sending server's own name could not be resolved",
		},
		fixes: []string{
			"operators: look the destination up (dig MX domain) from the sending server",
			"operators: check smart host names and addresses and the DNS servers used (delivery.dns_servers)",
		},
	},
	{4, 1}: {
		name:  "No answer from host",
		means: "the receiving server did not answer or refused the connection",
		hint:  "The receiving server did not answer or refused the connection; delivery is retried, nothing needs doing for now.",
		causes: []string{
			"the server or its network is down, or a firewall drops the connection",
			"port 25 outbound is blocked by the sending network's provider",
			"a TLS handshake failed (relayq reports TLS failures as 4.4.1 too)",
		},
		fixes: []string{
			"senders: nothing, delivery is retried until the queue lifetime runs out",
			"operators: test the connection from the relay (nc -v host 25) and check firewalls",
			"operators: when routing through a smart host, check delivery.smarthost.hosts and its TLS mode",
		},
	},
	{4, 2}: {
		name:  "Bad connection",
		means: "the connection to the receiving server broke off during delivery",
		hint:  "The connection broke off during delivery; it is retried, nothing needs doing for now.",
		causes: []string{
			"network trouble between the servers",
			"the receiving server crashed, restarted or timed out the session",
			"a firewall or SMTP proxy cutting long transfers",
		},
		fixes: []string{
			"senders: nothing, delivery is retried",
			"operators: if it recurs for large messages, look for proxies or timeouts on the path",
		},
	},
	{4, 3}: {
		name:  "Directory server failure",
		means: "a directory (usually DNS) lookup needed for routing failed",
		hint:  "Looking up the destination in DNS failed; delivery is retried. If this persists, the domain's DNS servers are at fault.",
		causes: []string{
			"the destination domain's DNS servers do not answer or answer SERVFAIL",
			"the relay's own resolver is down or unreachable",
		},
		fixes: []string{
			"senders: nothing, delivery is retried",
			"operators: query the domain from the relay (dig MX domain) and check delivery.dns_servers",
		},
	},
	{4, 4}: {
		name:  "Unable to route",
		means: "no route to the destination could be found",
		hint:  "No route to the destination was found; check the domain, or tell the operators if the domain is right.",
		causes: []string{
			"the domain has no MX and no A/AAAA records",
			"Exchange: routing groups without a connector between them, so the next hop is unknown",
		},
		fixes: []string{
			"check the recipient's domain",
			"operators: add the missing connector or route (delivery.route in relayq)",
		},
	},
	{4, 5}: {
		name:  "Mail system congestion",
		means: "the mail system is too busy to take the message now",
		hint:  "The mail system is congested; delivery is retried, nothing needs doing for now.",
		causes: []string{
			"a receiving server under load rate-limits senders",
			"go-smtp based servers answer 421 4.4.5 when all connection slots are in use",
		},
		fixes: []string{
			"senders: nothing, delivery is retried",
			"operators: spread sending over time, or lower the connections per destination",
		},
	},
	{4, 6}: {
		name:  "Routing loop detected",
		means: "the message passed through too many mail servers, which usually means it is going round in circles",
		hint:  "The message passed through too many mail servers; a forwarding loop is likely. Check forwarding rules and routes.",
		causes: []string{
			"two servers or two mailboxes forward to each other",
			"a smart host route that points back to the sending server",
			"the Received header count exceeded the hop limit (relayq: limits.max_hops, default 30; Exchange 2003: 30)",
		},
		fixes: []string{
			"check forwarding rules and alternate recipients on both sides",
			"operators: check routes, connectors and MX records for a cycle; raise the hop limit only for genuinely long paths",
		},
	},
	{4, 7}: {
		name:  "Delivery time expired",
		means: "the message could not be delivered before its time in the queue ran out",
		hint:  "Delivery was retried until the queue lifetime ran out; the last reply shows why it kept failing. Check the address, then send again.",
		causes: []string{
			"the receiving server was unreachable or kept answering with temporary errors for the whole lifetime",
			"the destination refused connections because of too many from us (421 4.3.2)",
			"a header or protocol limit on the remote server made every attempt time out",
		},
		fixes: []string{
			"read the last reply in the report: it names the problem that persisted",
			"verify the recipient's address, then send again; if the destination is back, it will be delivered",
			"operators: retry.max_queue_lifetime sets how long relayq tries (default 120h)",
		},
	},
	{4, 8}: {
		name:  "Routing loop (Exchange)",
		means: "a looping condition detected by the router; not defined by RFC 3463, Microsoft Exchange uses it",
		hint:  "The destination's mail system detected a routing loop; tell its postmaster.",
		causes: []string{
			"Exchange: a recipient policy lists a domain that equals the fully qualified name of an Exchange server",
		},
		fixes: []string{
			"operators of the destination: remove the recipient-policy entry that matches a server's name",
		},
	},
	{4, 9}: {
		name:  "Routing error (Exchange)",
		means: "a temporary routing error or a bad routing setup; not defined by RFC 3463, Microsoft Exchange uses it",
		hint:  "The destination's mail system could not route the message; tell its postmaster if this persists.",
		causes: []string{
			"an SMTP connector that uses DNS without a smart host for a non-SMTP address space",
			"a recipient in a routing group that has been deleted",
		},
		fixes: []string{
			"operators of the destination: review connectors, address spaces and routing groups",
		},
	},
}
