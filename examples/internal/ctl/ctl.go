// Package ctl is the operator CLI behind examples/fwctl, kept importable
// inside examples/ so the daemon's end-to-end test runs exactly the code
// an operator runs. It uses only fwplane's exported API (control, render,
// dataplane).
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/render"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
	// ExitFailing: diagnose found a failing check.
	ExitFailing = 3
)

// Usage is the help text.
const Usage = `usage: fwctl [--socket PATH] COMMAND

commands:
  show system buffers [detail] [--json]   resource utilisation (WARNING >= 80 %, CRITICAL >= 90 %;
                                          change with --warning PCT --critical PCT), with the change
                                          per minute and the time to full when the daemon keeps history
  show system buffers history NAME [--scope S] [--since D] [--json]
                                          a row's fill over time as a chart (default: the last 5 minutes;
                                          without NAME: the rows kept)
  show system buffers events [--json]     threshold events: rows entering or leaving WARNING/CRITICAL
  diagnose [--window D] [--json]          the debugging checklist against the live dataplane over D
                                          (default 2s); exit status 3 when a check is failing
  show capability [--json]                which backend runs, and why
  show sessions [--limit N] [--json]      active sessions (counts and a bounded listing)
  reload                                  make the daemon re-read and apply its config

--socket defaults to ` + control.DefaultSocket + `.
`

type args struct {
	socket     string
	thresholds dataplane.Thresholds
	json       bool
	limit      int
	scope      string
	since      time.Duration
	window     time.Duration
	words      []string
}

func parse(argv []string) (args, error) {
	a := args{socket: control.DefaultSocket}
	for i := 0; i < len(argv); i++ {
		s := argv[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(s, "-"), "=")
		if !strings.HasPrefix(s, "-") {
			a.words = append(a.words, s)
			continue
		}
		value := func() (string, error) {
			if hasVal {
				return val, nil
			}
			if i+1 >= len(argv) {
				return "", fmt.Errorf("flag %s needs a value", s)
			}
			i++
			return argv[i], nil
		}
		switch name {
		case "socket":
			v, err := value()
			if err != nil {
				return a, err
			}
			a.socket = v
		case "json":
			a.json = true
		case "detail":
			a.words = append(a.words, "detail")
		case "limit":
			v, err := value()
			if err != nil {
				return a, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > control.MaxSessionLimit {
				return a, fmt.Errorf("--limit %q: want a number from 1 to %d", v, control.MaxSessionLimit)
			}
			a.limit = n
		case "warning", "critical":
			v, err := value()
			if err != nil {
				return a, err
			}
			pct, err := strconv.ParseFloat(v, 64)
			if err != nil || pct <= 0 || pct > 100 {
				return a, fmt.Errorf("--%s %q: want a percentage above 0 and at most 100", name, v)
			}
			if name == "warning" {
				a.thresholds.Warning = pct
			} else {
				a.thresholds.Critical = pct
			}
		case "scope":
			v, err := value()
			if err != nil {
				return a, err
			}
			a.scope = v
		case "since", "window":
			v, err := value()
			if err != nil {
				return a, err
			}
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return a, fmt.Errorf("--%s %q: want a positive duration such as 90s or 10m", name, v)
			}
			if name == "since" {
				a.since = d
			} else {
				a.window = d
			}
		case "h", "help":
			return a, errHelp
		default:
			return a, fmt.Errorf("unknown flag %s", s)
		}
	}
	w, c := a.thresholds.Warning, a.thresholds.Critical
	if w == 0 {
		w = dataplane.DefaultWarningPercent
	}
	if c == 0 {
		c = dataplane.DefaultCriticalPercent
	}
	if w > c {
		return a, fmt.Errorf("--warning %g is above --critical %g", w, c)
	}
	return a, nil
}

var errHelp = errors.New("help")

// Run runs one fwctl command and returns its exit code.
func Run(ctx context.Context, argv []string, stdout, stderr io.Writer) int {
	a, err := parse(argv)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, Usage)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "fwctl: %v\n\n%s", err, Usage)
		return ExitUsage
	}
	c := control.NewClient(a.socket, nil)
	defer c.Close()

	cmd := strings.Join(a.words, " ")
	switch {
	case cmd == "show system buffers" || cmd == "show system buffers detail":
		err = buffers(ctx, c, a, stdout, strings.HasSuffix(cmd, "detail"))
	case cmd == "show system buffers events":
		err = events(ctx, c, a, stdout)
	case strings.HasPrefix(cmd, "show system buffers history"):
		name := strings.TrimSpace(strings.TrimPrefix(cmd, "show system buffers history"))
		if strings.Contains(name, " ") {
			fmt.Fprintf(stderr, "fwctl: history takes one row name, got %q\n\n%s", name, Usage)
			return ExitUsage
		}
		err = historyChart(ctx, c, a, name, stdout)
	case cmd == "diagnose":
		var failed bool
		failed, err = diagnoseCmd(ctx, c, a, stdout)
		if err == nil && failed {
			return ExitFailing
		}
	case cmd == "show capability":
		err = showCapability(ctx, c, a, stdout)
	case cmd == "show sessions":
		err = sessions(ctx, c, a, stdout)
	case cmd == "reload":
		err = reload(ctx, c, a, stdout)
	case cmd == "":
		fmt.Fprint(stderr, Usage)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "fwctl: unknown command %q\n\n%s", cmd, Usage)
		return ExitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "fwctl: %s\n", describe(err))
		return ExitError
	}
	return ExitOK
}

// describe renders an error with every problem or reason on its own line
// (the server's message joins them on one line).
func describe(err error) string {
	var e *control.Error
	if !errors.As(err, &e) {
		return err.Error()
	}
	items, head := e.Problems, ""
	lines := make([]string, 0, len(e.Problems)+len(e.Reasons))
	for _, p := range items {
		lines = append(lines, p.String())
	}
	switch {
	case len(lines) > 0:
		head = fmt.Sprintf("invalid config, %d problem%s:", len(lines), plural(len(lines)))
	case len(e.Reasons) > 0:
		lines = e.Reasons
		head = "not supported:"
	default:
		return err.Error()
	}
	// Wrappers add context in front of the server's message.
	return strings.TrimSuffix(err.Error(), e.Message) + head + "\n  " + strings.Join(lines, "\n  ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func buffers(ctx context.Context, c *control.Client, a args, w io.Writer, detail bool) error {
	r, err := c.Buffers(ctx)
	if err != nil {
		return fmt.Errorf("show system buffers: %w", err)
	}
	if a.json {
		return printJSON(w, r)
	}
	return render.Buffers(w, r.ResourceReport, &render.Options{Detail: detail, Thresholds: a.thresholds, Trends: r.Trends})
}

func showCapability(ctx context.Context, c *control.Client, a args, w io.Writer) error {
	r, err := c.Capability(ctx)
	if err != nil {
		return fmt.Errorf("show capability: %w", err)
	}
	if a.json {
		return printJSON(w, r)
	}
	_, err = io.WriteString(w, r.Explanation)
	return err
}

func sessions(ctx context.Context, c *control.Client, a args, w io.Writer) error {
	r, err := c.Sessions(ctx, a.limit)
	if err != nil {
		return fmt.Errorf("show sessions: %w", err)
	}
	if a.json {
		return printJSON(w, r)
	}
	// Translated sessions (NAT) add their tuple as it leaves and the rule.
	nat := false
	for _, s := range r.Sessions {
		nat = nat || s.TranslatedSource != ""
	}
	rows := [][]string{{"Proto", "Source", "Destination", "Packets", "Bytes", "Idle"}}
	right := []bool{false, false, false, true, true, true}
	if nat {
		rows[0] = append(rows[0], "Translated source", "Translated destination", "NAT rule")
		right = append(right, false, false, false)
	}
	for _, s := range r.Sessions {
		row := []string{s.Protocol, s.Source, s.Destination,
			strconv.FormatUint(s.Packets, 10), strconv.FormatUint(s.Bytes, 10), strconv.FormatFloat(s.IdleSeconds, 'f', 1, 64) + "s"}
		if nat {
			row = append(row, orDash(s.TranslatedSource), orDash(s.TranslatedDestination), orDash(s.NATRule))
		}
		rows = append(rows, row)
	}
	// Text left, numbers right, as in show system buffers.
	writeColumns(w, rows, right)
	fmt.Fprintf(w, "\nShowing %d of %d sessions (limit %d).\n", len(r.Sessions), r.Counts.Total, r.Limit)
	_, err = fmt.Fprintf(w, "Active sessions: IPv4 %d, IPv6 %d, total %d\n", r.Counts.IPv4, r.Counts.IPv6, r.Counts.Total)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func reload(ctx context.Context, c *control.Client, a args, w io.Writer) error {
	r, err := c.Reload(ctx)
	if err != nil {
		if errors.Is(err, dataplane.ErrInvalidConfig) || errors.Is(err, dataplane.ErrNotSupported) {
			return fmt.Errorf("reload refused, the running config is unchanged: %w", err)
		}
		return fmt.Errorf("reload: %w", err)
	}
	if a.json {
		return printJSON(w, r)
	}
	fmt.Fprintf(w, "Applied config generation %d.\n", r.Generation)
	for _, wn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	return nil
}

func writeColumns(w io.Writer, rows [][]string, right []bool) {
	width := make([]int, len(right))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-len(c))
			if right[i] {
				b.WriteString(pad + c)
			} else {
				b.WriteString(c + pad)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
