package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"relayq/config"
	"relayq/internal/maildrop"
)

// `relayq sendmail` is the sendmail command line (Postfix's sendmail(1)
// and postdrop) for programs that hand mail to /usr/sbin/sendmail. Its
// flags are sendmail's, not urfave/cli's ("-oi", "-fsender", "-ti"): main
// hands its arguments to runSendmail before urfave/cli sees them, also
// when the binary runs under the name sendmail or mailq.

// Exit statuses of sysexits.h.
const (
	exUsage       = 64 // EX_USAGE: bad flags, no recipient
	exNoInput     = 66 // EX_NOINPUT: the message cannot be read
	exUnavailable = 69 // EX_UNAVAILABLE: refused for good
	exTempFail    = 75 // EX_TEMPFAIL: not sent, and the maildrop write failed
	exNoPerm      = 77 // EX_NOPERM: refused for good with a 5.7.x status (policy)
	exConfig      = 78 // EX_CONFIG: the config file cannot be loaded
)

// systemConfig is the config file sendmail reads when neither --config nor
// RELAYQ_CONFIG names one, if it exists.
const systemConfig = "/etc/relayq/relayq.toml"

// sendmailTimeout bounds the connection and each reply when sendmail
// submits: past it, the message goes to the maildrop.
const sendmailTimeout = 30 * time.Second

const sendmailUsage = `usage: relayq sendmail [-t] [-i] [-f sender] [-F "Full Name"] [-v] [--server host:port] [--config file] [recipient ...]
       relayq sendmail -bp   (list the queue, as mailq)
       relayq sendmail -q    (flush the queue)`

// sendmailCommand lists sendmail in `relayq help`. main dispatches
// `relayq sendmail …` before urfave/cli parses it; this Action only runs
// when something comes before the word sendmail.
func sendmailCommand() *cli.Command {
	return &cli.Command{
		Name:            "sendmail",
		Usage:           "the sendmail command line: read a message on stdin and submit it (also as /usr/sbin/sendmail)",
		ArgsUsage:       "[-t] [-i] [-f sender] [-F name] [recipient…]",
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if code := runSendmail(c.Context, c.Args().Slice(), os.Stdin, c.App.Writer, c.App.ErrWriter); code != 0 {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}

// sendmailArgs returns the arguments for runSendmail when the process is a
// sendmail invocation: argv[0] named sendmail (a symlink), mailq (which is
// sendmail -bp), or `relayq sendmail …`.
func sendmailArgs(argv []string) ([]string, bool) {
	if len(argv) == 0 {
		return nil, false
	}
	switch filepath.Base(argv[0]) {
	case "sendmail":
		return argv[1:], true
	case "mailq":
		return append([]string{"-bp"}, argv[1:]...), true
	}
	if len(argv) > 1 && argv[1] == "sendmail" {
		return argv[2:], true
	}
	return nil, false
}

type sendmailMode int

const (
	modeDeliver sendmailMode = iota // -bm
	modeList                        // -bp
	modeFlush                       // -q
	modeHelp                        // --help
)

// sendmailOptions is what sendmail's arguments say.
type sendmailOptions struct {
	mode       sendmailMode
	extract    bool   // -t: recipients from To, Cc, Bcc
	ignoreDots bool   // -i, -oi: a line "." is not the end of the input
	from       string // -f, -r
	hasFrom    bool
	fullName   string // -F
	verbose    bool   // -v: print the SMTP dialogue on stderr
	server     string // --server
	config     string // --config
	rcpts      []string
}

// parseSendmailArgs reads sendmail's arguments the way its getopt does:
// one-letter flags may be grouped ("-ti"), a flag's value may be glued to
// it ("-fme@x", "-oi") or be the next argument ("-f me@x"); "--" ends the
// flags. Flags that only tune sendmail's own delivery are accepted and
// ignored: -B, -N, -R, -V, -o* (but -oi), -m.
func parseSendmailArgs(args []string) (*sendmailOptions, error) {
	o := &sendmailOptions{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			o.rcpts = append(o.rcpts, args[i+1:]...)
			return o, nil
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			if name == "help" {
				o.mode = modeHelp
				continue
			}
			if name != "server" && name != "config" {
				return nil, fmt.Errorf("unknown option %s", a)
			}
			if !hasVal {
				if i++; i == len(args) {
					return nil, fmt.Errorf("option --%s needs a value", name)
				}
				val = args[i]
			}
			if name == "server" {
				o.server = val
			} else {
				o.config = val
			}
		case len(a) > 1 && a[0] == '-':
			var err error
			if i, err = o.parseFlags(args, i); err != nil {
				return nil, err
			}
		default:
			o.rcpts = append(o.rcpts, a)
		}
	}
	return o, nil
}

// parseFlags reads the group of one-letter flags args[i] and returns the
// index of the last argument it used.
func (o *sendmailOptions) parseFlags(args []string, i int) (int, error) {
	a := args[i]
	for j := 1; j < len(a); j++ {
		c := a[j]
		switch c {
		case 't':
			o.extract = true
			continue
		case 'i':
			o.ignoreDots = true
			continue
		case 'v':
			o.verbose = true
			continue
		case 'm': // "me too": sendmail's alias expansion, none here
			continue
		case 'q': // -q, -q1h, -qR…: the rest is its argument
			o.mode = modeFlush
			return i, nil
		case 'B', 'b', 'F', 'f', 'N', 'o', 'R', 'r', 'V':
		default:
			return i, fmt.Errorf("unknown option -%c", c)
		}
		val := a[j+1:]
		if val == "" {
			if i++; i == len(args) {
				return i, fmt.Errorf("option -%c needs a value", c)
			}
			val = args[i]
		}
		return i, o.set(c, val)
	}
	return i, nil
}

// set applies a flag that takes a value.
func (o *sendmailOptions) set(flag byte, val string) error {
	switch flag {
	case 'b':
		switch val {
		case "m":
			o.mode = modeDeliver
		case "p":
			o.mode = modeList
		default:
			return fmt.Errorf("-b%s is not supported (only -bm, -bp)", val)
		}
	case 'f', 'r':
		o.from, o.hasFrom = strings.TrimSuffix(strings.TrimPrefix(val, "<"), ">"), true
	case 'F':
		o.fullName = val
	case 'o':
		o.ignoreDots = o.ignoreDots || val == "i"
	}
	return nil // -B, -N, -R, -V: accepted, ignored
}

// runSendmail is `relayq sendmail args…` and returns the exit status.
func runSendmail(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseSendmailArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "relayq sendmail: %v\n%s\n", err, sendmailUsage)
		return exUsage
	}
	if o.mode == modeHelp {
		fmt.Fprintln(stdout, sendmailUsage)
		return 0
	}
	cfg, cfgPath, err := sendmailConfig(o.config)
	if err != nil {
		fmt.Fprintf(stderr, "relayq sendmail: config: %v\n", err)
		return exConfig
	}
	switch o.mode {
	case modeList, modeFlush:
		cmd := []string{"relayq", "queue", "list"}
		if o.mode == modeFlush {
			cmd[2] = "flush" // with no IDs: every message
		}
		if cfgPath != "" {
			cmd = append(cmd, "--config", cfgPath)
		}
		if err := newApp().RunContext(ctx, cmd); err != nil {
			fmt.Fprintln(stderr, "relayq:", err)
			return 1
		}
		return 0
	}
	return deliverSendmail(ctx, o, cfg, stdin, stderr)
}

// sendmailConfig loads the config file named by --config, else
// RELAYQ_CONFIG, else /etc/relayq/relayq.toml if it exists; without one,
// the defaults. It returns the path it read ("" for the defaults).
func sendmailConfig(path string) (*config.Config, string, error) {
	if path == "" {
		path = os.Getenv("RELAYQ_CONFIG")
	}
	if path == "" {
		if _, err := os.Stat(systemConfig); err != nil {
			return config.Default(), "", nil
		}
		path = systemConfig
	}
	cfg, err := config.Load(path)
	return cfg, path, err
}

// deliverSendmail reads the message, submits it, and leaves what relayq
// did not take for now in the maildrop.
func deliverSendmail(ctx context.Context, o *sendmailOptions, cfg *config.Config, stdin io.Reader, stderr io.Writer) int {
	host := cfg.Hostname
	raw, err := readSendmailInput(stdin, o.ignoreDots, int64(cfg.Limits.MaxMessageSize))
	switch {
	case errors.Is(err, errTooBig):
		fmt.Fprintf(stderr, "relayq sendmail: the message is larger than limits.max_message_size (%s)\n", cfg.Limits.MaxMessageSize)
		return exUnavailable
	case err != nil:
		fmt.Fprintf(stderr, "relayq sendmail: reading the message: %v\n", err)
		return exNoInput
	}
	env := maildrop.Envelope{From: qualify(o.from, host)}
	if !o.hasFrom {
		env.From = qualify(loginName(), host)
	}
	msg, headerRcpts := composeMessage(raw, composeOptions{
		from: env.From, fullName: o.fullName, host: host, extract: o.extract, now: time.Now(),
	})
	env.To = recipients(append(o.rcpts, headerRcpts...), host)
	if len(env.To) == 0 {
		fmt.Fprintf(stderr, "relayq sendmail: no recipient: give addresses as arguments, or -t to take them from To, Cc and Bcc\n%s\n", sendmailUsage)
		return exUsage
	}

	server := o.server
	if server == "" {
		server = os.Getenv("RELAYQ_SUBMIT")
	}
	if server == "" {
		server = cfg.SubmitAddress()
	}
	var subErr error = errors.New("no server to submit to: no relay listener in the config, and no --server")
	if server != "" {
		sub := &smtpSubmitter{server: server, ehlo: host, timeout: sendmailTimeout, transcript: io.Discard}
		if o.verbose {
			sub.transcript = stderr
		}
		_, subErr = sub.Submit(ctx, env, bytes.NewReader(msg), int64(len(msg)))
	}
	res := maildrop.Sort(env, subErr)
	if len(res.Later) > 0 {
		dir := cfg.MaildropDir()
		path, err := maildrop.Write(dir, maildrop.Envelope{From: env.From, To: res.Later}, bytes.NewReader(msg), int64(len(msg)))
		if err != nil {
			fmt.Fprintf(stderr, "relayq sendmail: relayq did not take the message (%v), and it cannot be left in the maildrop %s: %v\n", subErr, dir, err)
			return exTempFail
		}
		if o.verbose {
			fmt.Fprintf(stderr, "relayq sendmail: relayq did not take the message for now (%v); left in the maildrop as %s for relayq to pick up\n", subErr, path)
		}
	}
	return reportRefused(stderr, res, len(env.To))
}

// reportRefused prints the recipients refused for good and returns the
// exit status: 0 when none was, 77 when every refusal has a 5.7.x (policy)
// status, else 69.
func reportRefused(stderr io.Writer, res maildrop.Result, total int) int {
	if len(res.Refused) == 0 {
		return 0
	}
	code := exNoPerm
	for _, r := range res.Refused {
		fmt.Fprintf(stderr, "relayq sendmail: <%s>: %v\n", r.Rcpt, r.Reply)
		if r.Reply.Status()[1] != 7 {
			code = exUnavailable
		}
	}
	if len(res.Refused) < total {
		fmt.Fprintln(stderr, "relayq sendmail: the message went to the other recipients")
	}
	return code
}

// loginName is the submitting user's name: $USER, $LOGNAME, else the
// account of the real user ID.
func loginName() string {
	for _, v := range []string{"USER", "LOGNAME"} {
		if name := os.Getenv(v); name != "" {
			return name
		}
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return fmt.Sprintf("uid%d", os.Getuid())
}

// qualify adds @host to an address without a domain ("root", as cron
// writes it), as Postfix's myorigin does; "" (the null sender) stays.
func qualify(addr, host string) string {
	if addr == "" || strings.Contains(addr, "@") {
		return addr
	}
	return addr + "@" + host
}

// recipients qualifies and deduplicates the recipients, in order.
func recipients(addrs []string, host string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range addrs {
		for _, addr := range parseAddressArg(a) {
			addr = qualify(addr, host)
			if !seen[addr] {
				seen[addr] = true
				out = append(out, addr)
			}
		}
	}
	return out
}

// errTooBig is readSendmailInput's error for input over the size limit.
var errTooBig = errors.New("message too big")
