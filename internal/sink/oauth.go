package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The bearer-token mechanisms a sink with Options.Bearer offers.
const (
	mechXOAuth2     = "XOAUTH2"
	mechOAuthBearer = sasl.OAuthBearer
)

// authLineLength is the AUTH line a sink with Options.Bearer accepts: RFC
// 4954 §4 asks servers for 12288 octets, room for an access token.
const authLineLength = 12288

var (
	// errTokenRefused is Microsoft 365's reply to a refused XOAUTH2 token.
	errTokenRefused = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	// errBadToken is Google's, after its error challenge.
	errBadToken = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Username and Password not accepted"}
)

// tokenError is the JSON of an error challenge (RFC 7628 §3.2.2; Google
// sends the same for XOAUTH2).
var tokenError, _ = json.Marshal(sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"})

// bearerServer returns the server side of mech (XOAUTH2 or OAUTHBEARER)
// checking tokens with ss.s.opts.Bearer.
func (ss *session) bearerServer(mech string) sasl.Server {
	check := func(user, token string) bool {
		if ss.s.opts.Bearer(user, token) {
			ss.authed = true
			return true
		}
		return false
	}
	if mech == mechOAuthBearer {
		return oauthBearerServer{sasl.NewOAuthBearerServer(func(o sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
			if !check(o.Username, o.Token) {
				return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
			}
			return nil
		})}
	}
	return &xoauth2Server{check: check, challenge: !ss.s.opts.NoBearerChallenge}
}

// oauthBearerServer is go-sasl's OAUTHBEARER server with the final failure
// reply Google gives, 535 5.7.8, where go-smtp would say 454 4.7.0.
type oauthBearerServer struct{ sasl.Server }

func (o oauthBearerServer) Next(resp []byte) ([]byte, bool, error) {
	c, done, err := o.Server.Next(resp)
	var be *sasl.OAuthBearerError
	if errors.As(err, &be) {
		err = errBadToken
	}
	return c, done, err
}

// xoauth2Server is the server side of XOAUTH2 as Google and Microsoft
// document it: the client sends "user=" user ^A "auth=Bearer " token ^A ^A.
// A refused token gets, with challenge, Google's answer (a 334 error
// challenge, an empty client response, then 535 5.7.8), else Microsoft's
// (535 5.7.3 at once).
type xoauth2Server struct {
	check     func(user, token string) bool
	challenge bool
	failed    bool
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case x.failed:
		// The client's answer to the error challenge: empty.
		if len(resp) != 0 {
			return nil, true, sasl.ErrUnexpectedClientResponse
		}
		return nil, true, errBadToken
	case resp == nil:
		return []byte{}, false, nil // no initial response: ask for it
	}
	user, token, ok := parseXOAuth2(resp)
	if ok && x.check(user, token) {
		return nil, true, nil
	}
	if !x.challenge {
		return nil, true, errTokenRefused
	}
	x.failed = true
	return tokenError, false, nil
}

func parseXOAuth2(resp []byte) (user, token string, ok bool) {
	fields := bytes.Split(resp, []byte{1})
	if len(fields) != 4 || len(fields[2]) != 0 || len(fields[3]) != 0 {
		return "", "", false
	}
	user, ok1 := strings.CutPrefix(string(fields[0]), "user=")
	auth, ok2 := strings.CutPrefix(string(fields[1]), "auth=")
	scheme, token, ok3 := strings.Cut(auth, " ")
	return user, token, ok1 && ok2 && ok3 && strings.EqualFold(scheme, "Bearer")
}
