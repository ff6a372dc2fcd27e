package retry

// Short cause-and-fix hints for the codes senders meet most, keyed by subject
// and detail (the class only says "for now" or "for good"). RFC 3463 §3 and
// seed 003.
var hints = map[[2]int]string{
	{1, 1}:  "The mailbox does not exist at the destination; check the address for typos.",
	{1, 2}:  "The recipient's domain does not exist or has no mail server (no MX, A or AAAA record); check the domain for typos.",
	{1, 3}:  "The address is not valid; check its syntax.",
	{1, 10}: "The recipient's domain publishes a null MX (RFC 7505): it accepts no mail at all.",
	{2, 1}:  "The recipient's mailbox is disabled and accepts no mail.",
	{2, 2}:  "The recipient's mailbox is full; the recipient must make room.",
	{2, 3}:  "The message is larger than the recipient's server accepts; send a smaller message or share large files another way.",
	{3, 1}:  "The receiving server is short of resources (disk, memory or queue space) and refused the message for now.",
	{3, 2}:  "The receiving server limits concurrent connections; delivery is retried with fewer connections.",
	{3, 4}:  "The message is larger than the receiving server accepts; send a smaller message or share large files another way.",
	{4, 1}:  "The receiving server did not answer or refused the connection; it may be down or blocking us.",
	{4, 2}:  "The connection to the receiving server broke off during delivery.",
	{4, 3}:  "Looking up the destination in DNS failed; check the domain's DNS servers if this persists.",
	{4, 6}:  "The message passed through too many mail servers; a forwarding loop is likely, check the forwarding setup.",
	{4, 7}:  "The message could not be delivered within the queue lifetime; the last reply shows why.",
	{5, 3}:  "The message had more recipients than the receiving server takes in one go.",
	{7, 1}:  "The receiving server refused the message by policy (relaying denied, sender or content not allowed); ask its postmaster.",
}

// Hints by subject alone (RFC 3463 §3.1-3.8), when the exact code has none.
var subjectHints = map[int]string{
	0: "The receiving server gave no further detail; the reply text above may say more.",
	1: "There is a problem with the recipient's address.",
	2: "There is a problem with the recipient's mailbox.",
	3: "There is a problem with the receiving mail system.",
	4: "There is a network or routing problem between the mail servers.",
	5: "The mail servers did not understand each other (an SMTP protocol problem).",
	6: "There is a problem with the message content or its encoding.",
	7: "The message was refused for security or policy reasons.",
}

// Hint returns a one-line cause-and-fix hint for an enhanced status code, ""
// when there is nothing useful to say (the zero code, success).
func Hint(c EnhancedCode) string {
	if c.IsZero() || c.Class() == 2 {
		return ""
	}
	if h, ok := hints[[2]int{c[1], c[2]}]; ok {
		return h
	}
	return subjectHints[c[1]]
}
