package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"relayq/admin"
	"relayq/pressure"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:   "status",
		Usage:  "show back pressure, queue totals, destinations and recent deferrals of a running relayq",
		Flags:  append(adminFlags(), jsonFlag()),
		Action: status,
	}
}

func status(c *cli.Context) error {
	client, err := newAdminClient(c)
	if err != nil {
		return err
	}
	var st admin.Status
	if err := client.call(c.Context, "GET", "/api/status", nil, &st); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, st)
	}
	printStatus(c.App.Writer, st)
	return nil
}

// printStatus prints the status for people: what an operator asks first
// (is intake refused, and why; is mail stuck, and where) comes first.
func printStatus(out io.Writer, st admin.Status) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	title := "relayq"
	if st.Hostname != "" {
		title += " on " + st.Hostname
	}
	if st.Version != "" {
		title += " (" + st.Version + ")"
	}
	fmt.Fprintf(w, "%s, up %s\n\n", title, admin.FormatAge(st.Time.Sub(st.Started)))

	q := st.Queue
	queued := fmt.Sprintf("%s %s, %s", admin.FormatCount(q.Messages), plural(int(q.Messages), "message", "messages"), admin.FormatBytes(q.Bytes))
	if !q.Oldest.IsZero() {
		queued += fmt.Sprintf("; oldest received %s ago (%s)", admin.FormatAge(st.Time.Sub(q.Oldest)), q.OldestID)
	}
	fmt.Fprintf(w, "Queue:\t%s\n", queued)

	if bp := st.BackPressure; bp == nil {
		fmt.Fprintf(w, "Back pressure:\tnot monitored\n")
	} else {
		line := bp.Level.String()
		switch bp.Level {
		case pressure.Medium:
			line += ": intake slowed; " + admin.DescribePressure(*bp)
		case pressure.High:
			line += ": new mail refused with 452 4.3.1; " + admin.DescribePressure(*bp)
		}
		fmt.Fprintf(w, "Back pressure:\t%s\n", line)
		for _, r := range bp.Resources {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", r.Name, admin.FormatValue(r.Reading, r.Unit), thresholds(r), r.Level)
		}
	}

	fmt.Fprintf(w, "Rate limited:\t%s\n", rateLimitedLine(st))
	if st.Cluster != nil {
		printCluster(w, *st.Cluster, st.Time)
	}

	fmt.Fprintln(w)
	if len(st.Destinations) == 0 {
		fmt.Fprintln(w, "Destinations:\tnone tried yet")
	} else {
		fmt.Fprintln(w, "Destinations:")
		fmt.Fprintln(w, "  NAME\tSTATE\tOPEN/CAP\tLEARNED CAP\tWAITING\tRATE\tNEXT ATTEMPT\tLAST REPLY")
		for _, d := range st.Destinations {
			learned := "-"
			if d.LearnedCap > 0 {
				learned = fmt.Sprint(d.LearnedCap)
				if d.CapReason != "" {
					learned += " (" + d.CapReason + ")"
				}
			}
			next := admin.FormatWhen(d.NextAttempt, st.Time)
			fmt.Fprintf(w, "  %s\t%s\t%d/%d\t%s\t%d\t%s\t%s\t%s\n", d.Name, dash(d.State), d.Open, d.Cap, learned, d.Waiting, rateColumn(d), dash(next), dash(d.LastReply))
		}
	}

	fmt.Fprintln(w)
	if len(st.Recent) == 0 {
		fmt.Fprintln(w, "Recent deferrals and bounces:\tnone")
		return
	}
	fmt.Fprintln(w, "Recent deferrals and bounces (newest first):")
	w.Flush()
	for _, e := range st.Recent {
		fmt.Fprintf(out, "  %s  %-8s  %s  %s  %s\n", e.Time.Local().Format(time.TimeOnly), e.Kind, e.ID, e.Rcpt, e.Reply)
		if e.MessageID != "" || e.Subject != "" {
			fmt.Fprintf(out, "      Message-ID: %s  Subject: %s\n", orNone(e.MessageID), orNone(e.Subject))
		}
		if e.Explain != "" {
			fmt.Fprintf(out, "      %s\n", e.Explain)
		}
	}
}

func thresholds(r admin.Resource) string {
	if r.Medium == 0 && r.High == 0 {
		return "(no thresholds)"
	}
	cmp := "above"
	if r.Falling {
		cmp = "below"
	}
	return fmt.Sprintf("medium %s %s, high %s %s", cmp, admin.FormatValue(r.Medium, r.Unit), cmp, admin.FormatValue(r.High, r.Unit))
}

// rateColumn is a destination's message rate: the configured one, and the
// learned one with the reply that set it ("-" for none).
func rateColumn(d admin.Destination) string {
	s := dash(d.RateLimit)
	if d.LearnedRate != "" {
		s += ", learned " + d.LearnedRate
		if d.RateReason != "" {
			s += " (" + d.RateReason + ")"
		}
	}
	return s
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// rateLimitedLine lists the users and addresses over a sending limit now
// ([limits] max_…_per_hour_…), whose MAIL or RCPT gets 450 4.7.1.
func rateLimitedLine(st admin.Status) string {
	if len(st.RateLimited) == 0 {
		return "none"
	}
	parts := make([]string, len(st.RateLimited))
	for i, l := range st.RateLimited {
		parts[i] = fmt.Sprintf("%s (%s, %d/h; since %s ago, %d refused)",
			l.Key, l.Limit, l.PerHour, admin.FormatAge(st.Time.Sub(l.Since)), l.Refused)
	}
	return strings.Join(parts, ", ")
}
