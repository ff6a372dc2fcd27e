package config

import (
	"net"
	"path/filepath"
)

// Sendmail configures `relayq sendmail` and the maildrop ([sendmail]).
type Sendmail struct {
	// Server is where sendmail submits over SMTP; "" means SubmitAddress's
	// default: the first relay listener, reached on loopback.
	Server string `toml:"server"`
	// Maildrop is the directory where sendmail leaves what relayq did not
	// take, and that relayq serve picks up; "" means <data_dir>/maildrop.
	Maildrop string `toml:"maildrop"`
	// MaildropGroup is the group that may write to the maildrop (relayq
	// serve gives the directory this group and mode 1730); "" leaves the
	// group relayq serve created it with: its own.
	MaildropGroup string `toml:"maildrop_group"`
}

// MaildropDir returns the maildrop directory: sendmail.maildrop, else
// "maildrop" in data_dir.
func (c *Config) MaildropDir() string {
	if c.Sendmail.Maildrop != "" {
		return c.Sendmail.Maildrop
	}
	return filepath.Join(c.DataDir, "maildrop")
}

// SubmitAddress returns where `relayq sendmail` submits: sendmail.server,
// else the address of the first listener in relay mode, an unspecified
// host ("", 0.0.0.0, ::) replaced by loopback. It returns "" when neither
// exists: sendmail then leaves every message in the maildrop.
func (c *Config) SubmitAddress() string {
	if c.Sendmail.Server != "" {
		return c.Sendmail.Server
	}
	for _, l := range c.Listeners {
		if l.Mode == ModeRelay || l.Mode == "" {
			return LoopbackFor(l.Address)
		}
	}
	return ""
}

// LoopbackFor returns the address at which a local client reaches a
// listener bound to addr: a listener on every address ("", 0.0.0.0, ::) is
// reached on 127.0.0.1 or ::1; any other address is returned unchanged.
func LoopbackFor(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		return net.JoinHostPort("127.0.0.1", port)
	case "::":
		return net.JoinHostPort("::1", port)
	}
	return addr
}

func (c *Config) validateSendmail(p *problems) {
	if s := c.Sendmail.Server; s != "" {
		if err := checkHostPort(s, false); err != nil {
			p.add("sendmail.server", "%v", err)
		}
	}
}
