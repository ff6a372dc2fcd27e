package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"relayq/admin"
	"relayq/config"
	"relayq/queue"
)

// `relayq queue …` and `relayq status` are clients of the admin API of a
// running relayq (admin/doc.go lists the endpoints).

// adminFlags are the flags that say which relayq to talk to.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "admin", Usage: "admin API `ADDRESS` (host:port or http://host:port; default: admin.address of --config, else 127.0.0.1:8025)", EnvVars: []string{"RELAYQ_ADMIN"}},
		configFlag(),
		&cli.StringFlag{Name: "token", Usage: "admin bearer `TOKEN` (default: admin.token of --config)", EnvVars: []string{"RELAYQ_ADMIN_TOKEN"}},
	}
}

func filterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "domain", Usage: "messages with a pending recipient in `DOMAIN`"},
		&cli.StringFlag{Name: "sender", Usage: "messages from `ADDRESS` (@domain for a whole domain, <> for bounces)"},
		&cli.StringFlag{Name: "state", Usage: "active | deferred | held"},
		&cli.StringFlag{Name: "older-than", Usage: "messages received more than `AGE` ago (90m, 2h, 3d)"},
		&cli.StringFlag{Name: "message-id", Usage: "the message whose Message-ID header is `ID` (with or without <>)"},
	}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON"}
}

func queueCommand() *cli.Command {
	return &cli.Command{
		Name:  "queue",
		Usage: "list, show and act on queued messages (through the admin API of a running relayq)",
		Subcommands: []*cli.Command{
			{
				Name:   "list",
				Usage:  "list queued messages, oldest first (like mailq)",
				Flags:  append(append(adminFlags(), filterFlags()...), jsonFlag()),
				Action: queueList,
			},
			{
				Name:      "show",
				Usage:     "show one message: envelope, each recipient's state and why it is still queued; with --body, the message as queued",
				ArgsUsage: "ID",
				Flags: append(adminFlags(), jsonFlag(),
					&cli.BoolFlag{Name: "body", Usage: "print the message as queued, header fields and body, byte for byte"}),
				Action: queueShow,
			},
			actionCommand("flush", "make messages due now, ignoring their backoff; with no ID or filter, every message (postqueue -f / -i)"),
			actionCommand("hold", "keep messages from delivery until released (postsuper -h)"),
			actionCommand("release", "release held messages; they are due at once (postsuper -H)"),
			actionCommand("bounce", "return messages to their senders with an NDR (Exchange: Remove with NDR)"),
			actionCommand("delete", "remove messages without an NDR (postsuper -d)"),
		},
	}
}

func actionCommand(name, usage string) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "[ID…]",
		Flags: append(append(adminFlags(), filterFlags()...),
			&cli.BoolFlag{Name: "all", Usage: "every queued message"}),
		Action: func(c *cli.Context) error { return queueAction(c, name) },
	}
}

// adminClient talks to the admin API.
type adminClient struct {
	base  string // "http://127.0.0.1:8025"
	token string
	http  *http.Client
}

// newAdminClient finds the API: --admin, else admin.address of --config,
// else the default address; the token from --token, else the config.
func newAdminClient(c *cli.Context) (*adminClient, error) {
	addr, token := c.String("admin"), c.String("token")
	if path := c.String("config"); path != "" && (addr == "" || token == "") {
		cfg, err := config.Load(path)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("config: %v", err), 2)
		}
		if addr == "" {
			if cfg.Admin.Address == "" {
				return nil, cli.Exit(fmt.Sprintf("%s: the admin API is off (admin.address is empty)", path), 2)
			}
			addr = cfg.Admin.Address
		}
		if token == "" {
			token = cfg.Admin.Token
		}
	}
	if addr == "" {
		addr = config.Default().Admin.Address
	}
	base, err := adminBase(addr)
	if err != nil {
		return nil, cli.Exit(err.Error(), 2)
	}
	return &adminClient{base: base, token: token, http: &http.Client{Timeout: 15 * time.Minute}}, nil
}

// adminBase turns an admin address into a base URL. A listener on every
// address (":8025", "0.0.0.0:8025") is reached on loopback.
func adminBase(addr string) (string, error) {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/"), nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("admin address %q is not host:port", addr)
	}
	return "http://" + config.LoopbackFor(addr), nil
}

// do sends a request and returns a 2xx answer, whose body the caller
// closes; an error answer becomes an error carrying the API's message.
func (a *adminClient) do(ctx context.Context, method, path string, query url.Values) (*http.Response, error) {
	u := a.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the admin API at %s (is relayq serve running? see --admin, --config): %w", a.base, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API: %w", err)
	}
	var e admin.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return nil, &apiError{code: resp.StatusCode, msg: e.Error}
	}
	return nil, &apiError{code: resp.StatusCode, msg: strings.TrimSpace(string(body))}
}

// call sends a request and decodes a 2xx JSON answer into out.
func (a *adminClient) call(ctx context.Context, method, path string, query url.Values, out any) error {
	resp, err := a.do(ctx, method, path, query)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API: unexpected answer: %w", err)
	}
	return nil
}

type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.code) }

// filterFrom reads the filter flags.
func filterFrom(c *cli.Context) (queue.Filter, error) {
	q := url.Values{}
	for flag, key := range map[string]string{"domain": "domain", "sender": "sender", "state": "state", "older-than": "older_than", "message-id": "message_id"} {
		if v := c.String(flag); v != "" {
			q.Set(key, v)
		}
	}
	f, err := admin.ParseFilter(q)
	if err != nil {
		return f, cli.Exit(err.Error(), 2)
	}
	return f, nil
}

// listPage is how many messages `queue list` asks for at a time: output is
// streamed page by page, so a large queue never sits in memory.
const listPage = 500

func queueList(c *cli.Context) error {
	f, err := filterFrom(c)
	if err != nil {
		return err
	}
	client, err := newAdminClient(c)
	if err != nil {
		return err
	}
	w := c.App.Writer
	asJSON := c.Bool("json")
	now := time.Now()
	var (
		n     int
		bytes int64
		after string
	)
	for {
		q := admin.FilterQuery(f)
		q.Set("limit", fmt.Sprint(listPage))
		if after != "" {
			q.Set("after", after)
		}
		var page admin.ListResponse
		if err := client.call(c.Context, "GET", "/api/queue", q, &page); err != nil {
			return cli.Exit(err.Error(), 1)
		}
		for _, m := range page.Messages {
			if asJSON {
				sep := ",\n"
				if n == 0 {
					sep = "[\n"
				}
				b, _ := json.MarshalIndent(m, "  ", "  ")
				fmt.Fprintf(w, "%s  %s", sep, b)
			} else {
				if n == 0 {
					fmt.Fprintf(w, "%-24s  %8s  %-19s  %-8s  %-12s  %s\n", "ID", "SIZE", "ARRIVED", "STATE", "NEXT ATTEMPT", "SENDER")
				}
				printListEntry(w, m, now)
			}
			n++
			bytes += m.Size
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	switch {
	case asJSON && n == 0:
		fmt.Fprintln(w, "[]")
	case asJSON:
		fmt.Fprintln(w, "\n]")
	case n == 0 && f.IsZero():
		fmt.Fprintln(w, "Mail queue is empty")
	case n == 0:
		fmt.Fprintln(w, "No queued message matches")
	default:
		fmt.Fprintf(w, "-- %s in %d %s\n", admin.FormatBytes(bytes), n, plural(n, "message", "messages"))
	}
	return nil
}

// printListEntry prints one message as mailq does: a line for the
// message, then one per recipient with its state and last reply.
func printListEntry(w io.Writer, m admin.Message, now time.Time) {
	next := admin.FormatWhen(m.NextAttempt, now)
	if m.State == "held" {
		next = "(held)"
	}
	fmt.Fprintf(w, "%-24s  %8s  %-19s  %-8s  %-12s  %s\n", m.ID, admin.FormatBytes(m.Size),
		m.Created.Local().Format("2006-01-02 15:04:05"), m.State, next, sender(m.From))
	if m.MessageID != "" || m.Subject != "" {
		fmt.Fprintf(w, "    Message-ID: %s  Subject: %s\n", orNone(m.MessageID), orNone(m.Subject))
	}
	for _, r := range m.Recipients {
		line := "    " + r.Address + "  " + r.State
		if r.Attempts > 0 {
			line += fmt.Sprintf(", %d %s", r.Attempts, plural(r.Attempts, "attempt", "attempts"))
		}
		if r.LastReply != "" {
			line += ": " + r.LastReply
		}
		fmt.Fprintln(w, line)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func sender(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func queueShow(c *cli.Context) error {
	if c.Args().Len() != 1 {
		return cli.Exit("queue show: give one message ID", 2)
	}
	client, err := newAdminClient(c)
	if err != nil {
		return err
	}
	path := "/api/queue/" + url.PathEscape(c.Args().First())
	if c.Bool("body") {
		return printBody(c, client, path+"/body")
	}
	var m admin.Message
	if err := client.call(c.Context, "GET", path, nil, &m); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, m)
	}
	printMessage(c.App.Writer, m, time.Now())
	return nil
}

// printBody copies the queued message, streamed from the admin API, to
// the output as it is.
func printBody(c *cli.Context, client *adminClient, path string) error {
	resp, err := client.do(c.Context, "GET", path, nil)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(c.App.Writer, resp.Body); err != nil {
		return cli.Exit(fmt.Sprintf("reading the message from the admin API: %v", err), 1)
	}
	return nil
}

// printMessage prints one message for people, answering "why is this
// still queued?" with each recipient's last reply and its explanation.
func printMessage(w io.Writer, m admin.Message, now time.Time) {
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-14s%s\n", k+":", v)
		}
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Local().Format("2006-01-02 15:04:05 MST") + " (" + admin.FormatWhen(t, now) + ")"
	}
	field("ID", m.ID)
	field("From", sender(m.From))
	field("Size", fmt.Sprintf("%s (%d bytes)", admin.FormatBytes(m.Size), m.Size))
	field("Received", when(m.Created))
	field("Client", m.Client)
	field("Envelope ID", m.EnvID)
	field("Message-ID", m.MessageID)
	field("Subject", m.Subject)
	state := m.State
	if m.BounceRequested {
		state += ", bounce requested"
	}
	field("State", state)
	if m.State == "held" {
		field("Next attempt", "none while held (relayq queue release "+m.ID+")")
	} else {
		field("Next attempt", when(m.NextAttempt))
	}
	field("Last attempt", when(m.LastAttempt))
	fmt.Fprintln(w, "Recipients:")
	for _, r := range m.Recipients {
		fmt.Fprintf(w, "  %s\n", r.Address)
		sub := func(k, v string) {
			if v != "" {
				fmt.Fprintf(w, "    %-12s%s\n", k+":", v)
			}
		}
		sub("state", r.State)
		sub("attempts", fmt.Sprint(r.Attempts))
		reply := r.LastReply
		if reply != "" && r.LastHost != "" {
			reply += " (from " + r.LastHost + ")"
		}
		sub("last reply", reply)
		sub("why", r.Explain)
		sub("what to do", r.Hint)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// actionDone says what an action did to "N messages".
var actionDone = map[string]string{
	"flush": "flushed %s", "hold": "held %s", "release": "released %s", "bounce": "marked %s for bounce", "delete": "deleted %s",
}

// queueAction runs action on the IDs given, or on every message the filter
// flags (or --all) select.
func queueAction(c *cli.Context, action string) error {
	f, err := filterFrom(c)
	if err != nil {
		return err
	}
	ids := c.Args().Slice()
	all := c.Bool("all")
	if action == "flush" && len(ids) == 0 && f.IsZero() {
		// postqueue -f: a flush only brings attempts forward, so it needs
		// no --all; the actions that remove or stop mail do.
		all = true
	}
	switch {
	case len(ids) > 0 && (all || !f.IsZero()):
		return cli.Exit(fmt.Sprintf("queue %s: give message IDs or a filter (or --all), not both", action), 2)
	case len(ids) == 0 && !all && f.IsZero():
		return cli.Exit(fmt.Sprintf("queue %s: give message IDs, a filter (--domain, --sender, --state, --older-than, --message-id) or --all", action), 2)
	}
	client, err := newAdminClient(c)
	if err != nil {
		return err
	}
	q := admin.FilterQuery(f)
	for _, id := range ids {
		q.Add("id", id)
	}
	if all {
		q.Set("all", "true")
	}
	var res admin.ActionResult
	if err := client.call(c.Context, "POST", "/api/queue/"+action, q, &res); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	w := c.App.Writer
	fmt.Fprintf(w, actionDone[action], fmt.Sprintf("%d %s", res.Done, plural(res.Done, "message", "messages")))
	if res.Skipped > 0 && len(ids) == 0 {
		fmt.Fprintf(w, "; %d passed over (held, or gone meanwhile)", res.Skipped)
	}
	fmt.Fprintln(w)
	// Named IDs that could not be acted on are failures; messages a filter
	// selected but that were held or gone meanwhile are not.
	failures := 0
	for _, e := range res.Errors {
		if e.Skipped && len(ids) == 0 {
			continue
		}
		fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", e.ID, strings.TrimPrefix(e.Error, "queue: "))
		failures++
	}
	if failures > 0 || res.Done+res.Skipped < res.Matched {
		return cli.Exit("", 1)
	}
	return nil
}
