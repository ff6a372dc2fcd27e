package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relayq/internal/smtpreply"
	"relayq/retry"
)

// Mechanism is the AUTH mechanism a Target asks for (RFC 4954).
type Mechanism string

const (
	// AuthPlain (or "") is PLAIN, or LOGIN when only LOGIN is offered, with
	// Username and Password.
	AuthPlain Mechanism = "plain"
	// AuthLogin is LOGIN only (not standard, but all some servers offer).
	AuthLogin Mechanism = "login"
	// AuthXOAuth2 is Google's and Microsoft's XOAUTH2 with Username and a
	// bearer token from Target.Token.
	AuthXOAuth2 Mechanism = "xoauth2"
	// AuthOAuthBearer is OAUTHBEARER (RFC 7628) with Username and a bearer
	// token from Target.Token.
	AuthOAuthBearer Mechanism = "oauthbearer"
)

// XOAuth2 is the XOAUTH2 mechanism's name on the wire.
const XOAuth2 = "XOAUTH2"

// TokenSource supplies the bearer tokens of XOAUTH2 and OAUTHBEARER.
// Dial calls it from many connections at once. No error it returns may
// contain a token: errors go into replies and logs.
type TokenSource interface {
	// Token returns the token to authenticate with now.
	Token(ctx context.Context) (string, error)
	// Refused says that the next hop refused tok with r (a 535, or an
	// error challenge and then whatever final reply). It returns a newer
	// token to try once more on the same connection, or "" when it has
	// none newer than tok.
	Refused(ctx context.Context, tok string, r *smtpreply.Reply) (string, error)
}

// auth authenticates as t.Auth says: PLAIN, or LOGIN when only LOGIN is
// offered (RFC 4954), LOGIN alone, or a bearer token.
func (c *Conn) auth(ctx context.Context, t Target) error {
	ok, mechs := c.client.Extension("AUTH")
	if !ok {
		return localReply(530, 5, 7, 0, "AUTH configured but not offered by the next hop")
	}
	var a sasl.Client
	switch {
	case t.Auth == AuthXOAuth2 || t.Auth == AuthOAuthBearer:
		return c.bearer(ctx, t, mechs)
	case t.Auth == AuthLogin && hasWord(mechs, sasl.Login):
		a = sasl.NewLoginClient(t.Username, t.Password)
	case t.Auth == AuthLogin:
		return localReply(530, 5, 7, 0, "AUTH LOGIN configured but not offered by the next hop (offered "+mechs+")")
	case t.Auth != "" && t.Auth != AuthPlain:
		return localReply(451, 4, 3, 5, fmt.Sprintf("unknown AUTH mechanism %q", t.Auth))
	case hasWord(mechs, sasl.Plain):
		a = sasl.NewPlainClient("", t.Username, t.Password)
	case hasWord(mechs, sasl.Login):
		a = sasl.NewLoginClient(t.Username, t.Password)
	default:
		return localReply(530, 5, 7, 0, "no supported AUTH mechanism offered (have PLAIN, LOGIN; offered "+mechs+")")
	}
	return c.client.Auth(a)
}

// bearer authenticates with a token from t.Token. When the next hop
// refuses it (535, or an error challenge) and the source has a newer
// token, that one is tried once more on the same connection: the session
// is in step after a failed AUTH (RFC 4954 §4). Otherwise the next hop's
// reply is the error.
func (c *Conn) bearer(ctx context.Context, t Target, mechs string) error {
	name := strings.ToUpper(string(t.Auth))
	if t.Auth == AuthXOAuth2 {
		name = XOAuth2
	}
	if !hasWord(mechs, name) {
		return localReply(530, 5, 7, 0, "AUTH "+name+" configured but not offered by the next hop (offered "+mechs+")")
	}
	if t.Token == nil {
		return localReply(451, 4, 3, 5, "AUTH "+name+" configured without a token source")
	}
	tok, err := t.Token.Token(ctx)
	if err != nil {
		return localReply(451, 4, 7, 0, "no OAuth2 token: "+err.Error())
	}
	refused, err := c.bearerAuth(t, tok)
	if !refused {
		return err
	}
	fresh, ferr := t.Token.Refused(ctx, tok, retry.FromError(retry.StageHello, err))
	if ferr != nil || fresh == "" || fresh == tok {
		return err
	}
	_, err = c.bearerAuth(t, fresh)
	return err
}

// bearerAuth runs one AUTH exchange with tok and reports whether it failed
// because of the token: a 535, or an error challenge (RFC 7628 §3.2.2).
func (c *Conn) bearerAuth(t Target, tok string) (refused bool, err error) {
	var b *bearerClient
	if t.Auth == AuthXOAuth2 {
		b = &bearerClient{inner: xoauth2Client{user: t.Username, token: tok}, answer: []byte{}}
	} else {
		host, p, _ := net.SplitHostPort(t.Addr)
		port, _ := strconv.Atoi(p)
		if t.ServerName != "" {
			host = t.ServerName
		}
		inner := sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: t.Username, Token: tok, Host: host, Port: port})
		// RFC 7628 §3.2.3: the client answers an error challenge with a
		// lone %x01, and the server then sends its final reply.
		b = &bearerClient{inner: inner, answer: []byte{0x01}}
	}
	err = c.client.Auth(b)
	var se *smtp.SMTPError
	return err != nil && (b.challenged || errors.As(err, &se) && se.Code == 535), err
}

// bearerClient answers an error challenge (a 334 carrying a JSON error:
// the token was refused) with the mechanism's empty answer, so that the
// exchange ends with the next hop's own failure reply rather than a
// cancelled AUTH (go-smtp sends "*" when a sasl.Client returns an error,
// and go-sasl's OAUTHBEARER client does).
type bearerClient struct {
	inner      sasl.Client
	answer     []byte
	challenged bool
}

func (b *bearerClient) Start() (string, []byte, error) { return b.inner.Start() }

func (b *bearerClient) Next([]byte) ([]byte, error) {
	b.challenged = true
	return b.answer, nil
}

// xoauth2Client is the client side of XOAUTH2 as Google and Microsoft
// document it: the initial response "user=" user ^A "auth=Bearer " token
// ^A ^A. Its error challenge is answered by bearerClient.
type xoauth2Client struct{ user, token string }

func (x xoauth2Client) Start() (string, []byte, error) {
	return XOAuth2, []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x xoauth2Client) Next([]byte) ([]byte, error) {
	return nil, errors.New("XOAUTH2: unexpected challenge")
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}
