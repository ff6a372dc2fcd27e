package explain

// Subjects 0 (other), 1 (addressing) and 2 (mailbox) of the knowledge base
// (explain.go). RFC 3463 §3.1-3.3, RFC 3886, RFC 7505; Exchange usage from
// Exchange's table of enhanced status codes.
var addressCodes = map[[2]int]info{
	{0, 0}: {
		name:  "Other or undefined status",
		means: "the server reported a problem without saying what kind",
		hint:  "The receiving server gave no detail; the reply text above is the best clue.",
		causes: []string{
			"the receiving software has no better code for the problem, or uses this one for everything",
			"no route matched the address (an Exchange connector without a matching address space)",
			"an authoritative DNS answer named a host that could not be found",
			"an SMTP protocol error that the server did not classify",
		},
		fixes: []string{
			"read the reply text: it usually names the real problem",
			"operators: check the receiving server's logs for the time of the attempt",
			"operators of the sending side: check routing (connectors, smart host, MX) and DNS for the domain",
		},
	},

	{1, 0}: {
		name:  "Other address status",
		means: "something about an address is wrong, not further specified",
		hint:  "Check the recipient's address for typos and send again.",
		causes: []string{
			"the address or one of its directory attributes could not be resolved (Exchange: a contact without targetAddress, a failed homeMDB lookup)",
			"a reply to an old message saved offline, carrying an internal address that no longer resolves",
		},
		fixes: []string{
			"check the recipient's address and send again, typed fresh rather than from an old message",
			"operators: check that the recipient resolves in the directory and has the attributes mail routing needs",
		},
	},
	{1, 1}: {
		name:  "Bad destination mailbox address",
		means: "the recipient does not exist at the destination",
		hint:  "Check the recipient's address for typos; if it is right, the mailbox no longer exists and the recipient needs to give you a current address.",
		causes: []string{
			"a typo in the part of the address before the @",
			"the mailbox was removed or renamed, for example when the person left",
			"a stale entry in an address book or autocomplete list (Exchange: an old-style address after a mailbox moved between sites)",
		},
		fixes: []string{
			"check the spelling of the address and send again",
			"ask the recipient, by another channel, for their current address, and fix the address book entry",
			"operators of the destination: check that the mailbox or an alias exists and that directory synchronisation has run",
		},
	},
	{1, 2}: {
		name:  "Bad destination system address",
		means: "the recipient's domain does not exist or cannot receive mail",
		hint:  "Check the domain part of the address (after the @) for typos; the domain has no mail server.",
		causes: []string{
			"a typo in the domain, after the @",
			"the domain has expired or was never registered",
			"the domain has no MX record and no A/AAAA record to fall back on",
		},
		fixes: []string{
			"check the spelling of the domain and send again",
			"look the domain up (dig MX example.org) to see whether it publishes a mail server",
			"the domain's owner must publish an MX record for it",
		},
	},
	{1, 3}: {
		name:  "Bad destination mailbox address syntax",
		means: "the recipient's address is not a valid address",
		hint:  "The address is not valid: check for spaces, missing or doubled @ signs and stray punctuation.",
		causes: []string{
			"spaces, quotes, a missing @, two @ signs or a trailing dot in the address",
			"a display name pasted in place of an address",
			"a directory entry whose target address has no address type (Exchange contacts)",
		},
		fixes: []string{
			"write the address as local-part@domain and send again",
			"operators: fix the directory entry or contact that produced the address",
		},
	},
	{1, 4}: {
		name:  "Destination mailbox address ambiguous",
		means: "the address matches more than one recipient at the destination",
		hint:  "The address matches more than one mailbox at the destination; ask the recipient for an exact address.",
		causes: []string{
			"two directory objects carry the same proxy address",
			"a partial name or alias that several people share",
		},
		fixes: []string{
			"use the recipient's full, exact address",
			"operators of the destination: find and remove the duplicate address in the directory",
		},
	},
	{1, 5}: {
		name:  "Destination address valid",
		means: "the recipient's address was accepted",
		hint:  "",
		causes: []string{
			"a success code: the server accepted the recipient",
		},
		fixes: []string{"nothing to do"},
	},
	{1, 6}: {
		name:  "Destination mailbox has moved, no forwarding address",
		means: "the recipient's mailbox used to exist here but has moved, and no new address is known",
		hint:  "The recipient has moved and left no forwarding address; ask them for their new address.",
		causes: []string{
			"the person changed employer or provider",
			"a directory entry is missing attributes that routing needs (Exchange: homeMDB or msExchHomeServerName missing or corrupt)",
		},
		fixes: []string{
			"find the recipient's new address by another channel",
			"operators of the destination: repair the recipient's directory attributes and let address policies run again",
		},
	},
	{1, 7}: {
		name:  "Bad sender's mailbox address syntax",
		means: "the sender's address (MAIL FROM) is not valid",
		hint:  "The sender address of the message is not valid; fix the From address configured in the sending application.",
		causes: []string{
			"an application sending with a malformed envelope sender (spaces, no domain, a bare name)",
			"the sender's directory object has a missing or malformed mail attribute (Exchange)",
		},
		fixes: []string{
			"set a complete sender address (user@domain) in the sending application or device",
			"operators: fix the sender's mail attribute in the directory",
		},
	},
	{1, 8}: {
		name:  "Bad sender's system address",
		means: "the sender's domain does not exist or cannot receive replies",
		hint:  "The destination checks that the sender's domain can receive mail, and it cannot; use a sender address in a real, mail-enabled domain.",
		causes: []string{
			"the sender address uses a domain that does not resolve (a typo, an internal-only name such as .local)",
			"the sender's domain has no MX or A record, so replies and bounces could not come back",
		},
		fixes: []string{
			"send from an address in a public domain that has MX records",
			"operators: publish MX records for the sending domain, or rewrite internal sender addresses",
		},
	},
	{1, 9}: {
		name:  "Message relayed to non-compliant mailer",
		means: "the message was passed to a system that cannot say whether the address is valid",
		hint:  "",
		causes: []string{
			"the next system does not support delivery status notifications (RFC 3886)",
		},
		fixes: []string{"nothing to do: this reports a relay, not a failure"},
	},
	{1, 10}: {
		name:  "Recipient address has null MX",
		means: "the recipient's domain declares that it accepts no mail at all (RFC 7505)",
		hint:  "The recipient's domain publishes a null MX: it receives no mail. Check the address, or use another one.",
		causes: []string{
			"the domain is used for web or other services only and says so with a null MX record (MX 0 .)",
			"a typo that happens to hit such a domain",
		},
		fixes: []string{
			"check the address; ask the recipient for an address that can receive mail",
			"the domain's owner must replace the null MX with real MX records if the domain should receive mail",
		},
	},

	{2, 0}: {
		name:  "Other or undefined mailbox status",
		means: "the recipient's mailbox exists but something about it is wrong",
		hint:  "There is a problem with the recipient's mailbox; the recipient or their mail administrator needs to look at it.",
		causes: []string{
			"a mailbox state the server has no better code for (locked, being migrated, greylisted)",
		},
		fixes: []string{
			"for a 4.2.0: nothing, delivery is retried",
			"for a 5.2.0: tell the recipient by another channel; their administrator needs to check the mailbox",
		},
	},
	{2, 1}: {
		name:  "Mailbox disabled, not accepting messages",
		means: "the recipient's mailbox exists but is switched off for incoming mail",
		hint:  "The recipient's mailbox is disabled; contact the recipient by another channel.",
		causes: []string{
			"the account was suspended or disabled, for example after the person left",
			"the mailbox accepts mail only from certain senders",
			"Exchange also uses 5.2.1 for a message too large for the recipient, or a recipient missing its security identifier",
		},
		fixes: []string{
			"reach the recipient by another channel and ask for a working address",
			"operators of the destination: re-enable the mailbox or check its delivery restrictions and size limits",
		},
	},
	{2, 2}: {
		name:  "Mailbox full",
		means: "the recipient's mailbox is over its storage quota",
		hint:  "The recipient's mailbox is full; the recipient must make room (or have the quota raised) before mail can be delivered.",
		causes: []string{
			"the recipient has not deleted old mail, or large attachments filled the quota",
			"an abandoned mailbox that nobody empties",
			"older Exchange versions sent 4.2.2 for what later ones report as 5.2.2",
		},
		fixes: []string{
			"tell the recipient by another channel; they must delete or archive mail",
			"operators of the destination: raise the mailbox quota",
			"for a 4.2.2 nothing needs doing at once: delivery is retried until the queue lifetime runs out",
		},
	},
	{2, 3}: {
		name:  "Message length exceeds administrative limit",
		means: "the message is larger than the recipient's mailbox or domain accepts",
		hint:  "The message is larger than the recipient accepts; send it without the large attachments and share big files by a link.",
		causes: []string{
			"a per-recipient or per-domain size limit lower than the server's general one",
			"attachments grow by about a third when encoded for mail (base64)",
		},
		fixes: []string{
			"send a smaller message: remove or compress attachments, share large files by a link",
			"operators of the destination: raise the recipient's maximum incoming message size",
		},
	},
	{2, 4}: {
		name:  "Mailing list expansion problem",
		means: "the recipient is a mailing list that could not be expanded",
		hint:  "The address is a mailing list that could not be expanded; tell the list's owner.",
		causes: []string{
			"the list is empty, broken or its membership could not be read",
			"a list member's address is invalid and the list server reports it to you",
		},
		fixes: []string{
			"tell the list's owner (often owner-LIST@domain)",
		},
	},
}
