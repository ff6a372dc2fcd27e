package sink

import (
	"errors"
	"testing"

	"github.com/emersion/go-smtp"
)

// A lowered limit refuses new connections beyond it and sheds the sessions
// over it at their next MAIL with 421 4.3.2, keeping as many as it allows.
func TestSetMaxConnsShedsSessionsOverTheNewLimit(t *testing.T) {
	s := start(t, Options{MaxConns: 5})
	var clients []*smtp.Client
	for range 3 {
		c, err := smtp.Dial(s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("client.test.invalid"); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	s.SetMaxConns(1)
	refused, kept := 0, 0
	for _, c := range clients {
		err := c.Mail("a@x.invalid", nil)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			kept++
		case errors.As(err, &se) && se.Code == 421 && se.EnhancedCode == (smtp.EnhancedCode{4, 3, 2}):
			refused++
		default:
			t.Fatalf("MAIL: %v", err)
		}
	}
	if refused != 2 || kept != 1 || s.Shed() != 2 {
		t.Fatalf("%d shed (counted %d), %d kept; want 2 shed and 1 kept under a limit of 1", refused, s.Shed(), kept)
	}
	if c, err := smtp.Dial(s.Addr()); err == nil {
		err = c.Hello("client.test.invalid")
		c.Close()
		if err == nil {
			t.Fatal("a new connection over the lowered limit was taken")
		}
	}
}
