package retry

import "relayq/internal/smtpreply"

// The reply type and its codes live in internal/smtpreply, which relay,
// smarthost and retry all use. These names keep code written against
// retry's compiling while it moves.
//
// transition: remove once nothing uses retry.Reply, retry.EnhancedCode,
// retry.ParseReply, retry.ParseEnhanced or retry.Code*; new code uses
// smtpreply.

type (
	Reply        = smtpreply.Reply
	EnhancedCode = smtpreply.EnhancedCode
)

// ParseReply is smtpreply.ParseReply.
func ParseReply(line string) (*Reply, error) { return smtpreply.ParseReply(line) }

// ParseEnhanced is smtpreply.ParseEnhanced.
func ParseEnhanced(s string) (EnhancedCode, error) { return smtpreply.ParseEnhanced(s) }

var (
	CodeOK               = smtpreply.CodeOK
	CodeTempLocal        = smtpreply.CodeTempLocal
	CodeTempResources    = smtpreply.CodeTempResources
	CodeTooManyConns     = smtpreply.CodeTooManyConns
	CodeNoAnswer         = smtpreply.CodeNoAnswer
	CodeConnDropped      = smtpreply.CodeConnDropped
	CodeDNSTemp          = smtpreply.CodeDNSTemp
	CodeExpired          = smtpreply.CodeExpired
	CodeTooManyRcpts     = smtpreply.CodeTooManyRcpts
	CodeBadMailbox       = smtpreply.CodeBadMailbox
	CodeBadDomain        = smtpreply.CodeBadDomain
	CodeBadSyntax        = smtpreply.CodeBadSyntax
	CodeNullMX           = smtpreply.CodeNullMX
	CodeTooBig           = smtpreply.CodeTooBig
	CodeMailboxFull      = smtpreply.CodeMailboxFull
	CodeLoop             = smtpreply.CodeLoop
	CodeRelayDenied      = smtpreply.CodeRelayDenied
	CodePermGeneric      = smtpreply.CodePermGeneric
	CodeTempGeneric      = smtpreply.CodeTempGeneric
	CodeSyntaxError      = smtpreply.CodeSyntaxError
	CodeTooManyRcptsPerm = smtpreply.CodeTooManyRcptsPerm
)
