// Command fwd is fwplane's reference daemon: it runs a dataplane from a
// JSON config file, serves the control API (package control) on a Unix
// socket for fwctl, exports Prometheus metrics, reloads on SIGHUP and
// detaches everything on SIGTERM or SIGINT.
//
//	fwd --config FILE [--backend auto|ebpf|userspace] [--strict]
//	    [--netns PATH] [--socket PATH] [--metrics ADDR]
//	    [--name NAME] [--pin=false] [--pin-dir DIR] [--keep-dataplane]
//	    [--history-interval D] [--history-retention D]
//	fwd --remove NAME [--pin-dir DIR]
//
// The dataplane is pinned by default (--name NAME, default "default",
// pins under /sys/fs/bpf/fwplane/NAME; --pin-dir names another
// directory), so a fwd that dies (kill -9, OOM, a crash) never opens the
// firewall: the eBPF backend keeps enforcing the last config with its
// sessions, the userspace backend's shims drop transit traffic and keep
// the box reachable. A fwd started with the same name adopts it (see
// docs/failure-model.md). SIGTERM and SIGINT remove it (Close), unless
// --keep-dataplane: then fwd releases it, still enforcing, for an upgrade.
// `fwd --remove NAME` removes an orphaned pinned dataplane of either
// backend and exits; it refuses one a live fwd holds, naming its pid.
// --pin=false pins nothing: the dataplane then leaves with the process,
// and the kernel forwards unfiltered after a crash.
//
// The daemon samples the resource report every --history-interval
// (default 1s; 0 turns history off) and keeps a bounded history (package
// history): trends and time to full in `fwctl show system buffers`, charts
// in `... history NAME`, threshold events (logged once, counted in
// fwplane_threshold_events_total, listed by `... events`). `fwctl
// diagnose` runs the debugging checklist (package diagnose) here, where
// the dataplane's namespace is.
//
// A config with problems is refused with every problem, at start (exit
// status 1) and on reload (the running config stays). Logs are structured
// (log/slog, logfmt) on standard error.
//
// fwd uses only fwplane's exported API: it is what an embedder writes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fwplane/fwplane"
	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
	"github.com/fwplane/fwplane/metrics"
)

// DefaultMetrics is where metrics are served unless --metrics says
// otherwise.
const DefaultMetrics = "127.0.0.1:9430"

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	err := run(context.Background(), os.Args[1:], &env{stderr: os.Stderr, signals: sig})
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(1)
	}
}

// env is what run needs from the process; tests provide their own.
type env struct {
	stderr  io.Writer
	signals <-chan os.Signal
	// ready, when set, is called once the daemon serves.
	ready func(readyInfo)
}

type readyInfo struct {
	dp      dataplane.DataPlane
	socket  string
	metrics string // listening address, "" when disabled
}

type options struct {
	config, backend, netns, socket, metrics string
	strict                                  bool
	historyInterval, historyRetention       time.Duration
	// Pinning: the dataplane's name, whether to pin, the directory
	// (default fwplane.PinDirFor(name)), release instead of close on
	// SIGTERM, and --remove's name.
	name, pinDir, remove string
	pin, keep            bool
}

// DefaultName is the dataplane's name unless --name says otherwise.
const DefaultName = "default"

func parseFlags(args []string, stderr io.Writer) (options, capability.Preference, error) {
	var o options
	fs := flag.NewFlagSet("fwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.config, "config", "", "JSON config file (required)")
	fs.StringVar(&o.backend, "backend", "auto", "preferred backend: auto, ebpf or userspace")
	fs.BoolVar(&o.strict, "strict", false, "never fall back from the preferred backend")
	fs.StringVar(&o.netns, "netns", "", "network namespace path to run the dataplane in (default: the current one)")
	fs.StringVar(&o.socket, "socket", control.DefaultSocket, "control socket path")
	fs.StringVar(&o.metrics, "metrics", DefaultMetrics, `Prometheus listen address ("" disables)`)
	fs.DurationVar(&o.historyInterval, "history-interval", history.DefaultInterval, "resource history sampling interval (0 disables history); trends are fitted over max(1m, 12 intervals), capped at 300 intervals")
	fs.DurationVar(&o.historyRetention, "history-retention", history.DefaultRetention, "how far back the per-minute history goes")
	fs.StringVar(&o.name, "name", DefaultName, "the dataplane's name: it is pinned under "+fwplane.DefaultPinRoot+"/NAME")
	fs.BoolVar(&o.pin, "pin", true, "pin the dataplane so that it outlives fwd (a crash never opens the firewall; a restart adopts it)")
	fs.StringVar(&o.pinDir, "pin-dir", "", "pin directory (default "+fwplane.DefaultPinRoot+"/NAME)")
	fs.BoolVar(&o.keep, "keep-dataplane", false, "on SIGTERM/SIGINT release the pinned dataplane (it keeps enforcing) instead of removing it")
	fs.StringVar(&o.remove, "remove", "", "remove the orphaned pinned dataplane NAME (either backend) and exit")
	if err := fs.Parse(args); err != nil {
		return o, "", err
	}
	if fs.NArg() > 0 {
		return o, "", fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.remove != "" {
		o.name = o.remove
	}
	if o.pinDir == "" {
		dir, err := fwplane.PinDirFor(o.name)
		if err != nil {
			return o, "", fmt.Errorf("--name: %w", err)
		}
		o.pinDir = dir
	}
	if o.remove != "" {
		return o, "", nil
	}
	if o.config == "" {
		return o, "", errors.New("--config is required")
	}
	if o.keep && !o.pin {
		return o, "", errors.New("--keep-dataplane needs a pinned dataplane: drop --pin=false")
	}
	pref, err := capability.ParsePreference(o.backend)
	return o, pref, err
}

// removePinned is `fwd --remove NAME`.
func removePinned(o options, stderr io.Writer) error {
	mode, err := fwplane.RemovePinned(o.pinDir)
	if err != nil {
		fmt.Fprintf(stderr, "fwd: remove %s: %v\n", o.pinDir, err)
		return err
	}
	fmt.Fprintf(stderr, "fwd: removed the pinned %s dataplane %s (%s): its interfaces carry none of its programs now\n", mode, o.name, o.pinDir)
	return nil
}

// readConfig reads and validates the config file.
func readConfig(path string) (*dataplane.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return dataplane.ParseConfig(b)
}

// problems lists what is wrong with a refused config, one entry per
// problem or reason.
func problems(err error) []string {
	var ce *dataplane.ConfigError
	var nse *dataplane.NotSupportedError
	switch {
	case errors.As(err, &ce):
		out := make([]string, len(ce.Problems))
		for i, p := range ce.Problems {
			out[i] = p.String()
		}
		return out
	case errors.As(err, &nse) && len(nse.Reasons) > 0:
		return nse.Reasons
	}
	return []string{err.Error()}
}

func run(ctx context.Context, args []string, e *env) error {
	o, pref, err := parseFlags(args, e.stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(e.stderr, "fwd: %v\n", err)
		}
		return err
	}
	if o.remove != "" {
		return removePinned(o, e.stderr)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))

	cfg, err := readConfig(o.config)
	if err != nil {
		ps := problems(err)
		fmt.Fprintf(e.stderr, "fwd: config %s refused (%d problem%s):\n", o.config, len(ps), plural(len(ps)))
		for _, p := range ps {
			fmt.Fprintf(e.stderr, "  %s\n", p)
		}
		return err
	}

	// Claim the socket before touching the dataplane, so a second fwd
	// stops here instead of re-attaching over the first one's programs.
	ln, err := control.Listen(o.socket)
	if err != nil {
		log.Error("cannot serve the control socket", "socket", o.socket, "err", err)
		return err
	}
	defer ln.Close()

	fo := &fwplane.Options{Backend: pref, Strict: o.strict, NetNS: o.netns}
	if o.pin {
		fo.PinDir = o.pinDir
	}
	opened := time.Now()
	dp, d, err := fwplane.Open(ctx, cfg, fo)
	if err != nil {
		log.Error("cannot start the dataplane", "err", err, "reasons", strings.Join(problems(err), "; "))
		if len(d.Verdicts) > 0 {
			fmt.Fprint(e.stderr, d.Explain())
		}
		return err
	}
	log.Info("dataplane running", "mode", d.Mode, "fell_back", d.FellBack, "preference", d.Request.Preference,
		"strict", d.Request.Strict, "reasons", strings.Join(reasons(d.Decision), "; "), "netns", o.netns,
		"pin_dir", fo.PinDir, "adopted", d.Adopted, "generation", d.Applied.Generation, "open_took", time.Since(opened).Round(time.Millisecond))

	for _, w := range d.Applied.Warnings {
		log.Warn("config applied with a warning", "field", w.Field, "warning", w.Message)
	}
	dm := &daemon{log: log, file: o.config, dp: dp, generation: d.Applied.Generation, turn: make(chan struct{}, 1), managed: names(cfg),
		pinDir: fo.PinDir, keep: o.keep}

	var rec *history.Recorder
	histDone := make(chan struct{})
	histCtx, stopHist := context.WithCancel(ctx)
	defer stopHist()
	if o.historyInterval > 0 {
		rec = history.New(history.FromDataPlane(dp), &history.Options{Interval: o.historyInterval, Retention: o.historyRetention, Logger: log})
		go func() {
			defer close(histDone)
			rec.Run(histCtx)
		}()
		hs := rec.Stats()
		log.Info("history on", "interval", o.historyInterval, "retention", o.historyRetention, "fine_samples", hs.Fine,
			"max_rows", hs.MaxRows, "bytes_per_row", 8*hs.Fine+32*int((o.historyRetention+time.Minute-1)/time.Minute))
	} else {
		close(histDone)
	}
	dm.stopHistory = func() { stopHist(); <-histDone }

	svc := &control.Service{
		DataPlane: dp,
		Decision:  func() capability.Decision { return d.Decision },
		Reload:    dm.reload,
		Logger:    log,
		Diagnose: func(ctx context.Context, window time.Duration) (diagnose.Report, error) {
			in, err := diagnose.Gather(ctx, dp, &diagnose.GatherOptions{Window: window, NetNS: o.netns})
			if err != nil {
				return diagnose.Report{}, err
			}
			in.Decision, in.Managed = &d.Decision, dm.managedNow()
			return diagnose.Run(in), nil
		},
	}
	if rec != nil {
		svc.History = rec
	}
	srv := control.ServeListener(ln, svc)
	log.Info("control socket listening", "socket", ln.Addr().String())

	var msrv *http.Server
	var maddr string
	if o.metrics != "" {
		reg := prometheus.NewRegistry()
		if err := reg.Register(metrics.NewCollector(dp.ResourceStats, nil)); err != nil {
			return dm.stop(srv, nil, fmt.Errorf("register metrics: %w", err))
		}
		if rec != nil {
			if err := reg.Register(metrics.NewHistoryCollector(rec, nil)); err != nil {
				return dm.stop(srv, nil, fmt.Errorf("register history metrics: %w", err))
			}
		}
		mln, err := net.Listen("tcp", o.metrics)
		if err != nil {
			log.Error("cannot serve metrics", "addr", o.metrics, "err", err)
			return dm.stop(srv, nil, fmt.Errorf("listen for metrics: %w", err))
		}
		maddr = mln.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go msrv.Serve(mln)
		log.Info("metrics listening", "addr", maddr, "path", "/metrics")
	}

	if e.ready != nil {
		e.ready(readyInfo{dp: dp, socket: ln.Addr().String(), metrics: maddr})
	}
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "cause", ctx.Err())
			return dm.stop(srv, msrv, nil)
		case s := <-e.signals:
			switch s {
			case syscall.SIGHUP:
				log.Info("SIGHUP: reloading", "config", o.config)
				dm.reload(ctx)
			case syscall.SIGTERM, syscall.SIGINT:
				log.Info("shutting down", "signal", s.String())
				return dm.stop(srv, msrv, nil)
			}
		}
	}
}

// reasons lists why backends other than the chosen one were not chosen.
func reasons(d capability.Decision) []string {
	var out []string
	for _, v := range d.Verdicts {
		for _, r := range v.Reasons {
			out = append(out, string(v.Mode)+": "+r)
		}
	}
	return out
}

type daemon struct {
	log  *slog.Logger
	file string
	dp   dataplane.DataPlane

	// turn serialises reloads (SIGHUP and the control socket) and lets a
	// waiting one give up with its context: a reload whose client went
	// away never runs later.
	turn       chan struct{}
	generation uint64

	mu      sync.Mutex // guards managed
	managed []string   // interfaces of the config in force

	stopHistory func()

	// pinDir is where the dataplane is pinned ("" = not pinned); keep
	// makes stop release it instead of closing it.
	pinDir string
	keep   bool
}

// names lists the interfaces of cfg.
func names(cfg *dataplane.Config) []string {
	out := make([]string, len(cfg.Interfaces))
	for i, it := range cfg.Interfaces {
		out[i] = it.Name
	}
	return out
}

func (dm *daemon) managedNow() []string {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.managed
}

// reload re-reads the config file and applies it; a refused config leaves
// the running one in force, and every problem is logged.
func (dm *daemon) reload(ctx context.Context) (dataplane.ApplyResult, error) {
	select {
	case dm.turn <- struct{}{}:
	case <-ctx.Done():
		return dataplane.ApplyResult{}, fmt.Errorf("reload not run: %w", ctx.Err())
	}
	defer func() { <-dm.turn }()
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, fmt.Errorf("reload not run: %w", err)
	}
	refuse := func(err error) (dataplane.ApplyResult, error) {
		ps := problems(err)
		for _, p := range ps {
			dm.log.Warn("reload refused", "config", dm.file, "problem", p)
		}
		dm.log.Warn("reload refused: the running config is unchanged", "config", dm.file,
			"problems", len(ps), "generation", dm.generation, "err", err)
		return dataplane.ApplyResult{}, err
	}
	cfg, err := readConfig(dm.file)
	if err != nil {
		return refuse(err)
	}
	res, err := dm.dp.Apply(ctx, cfg)
	if err != nil {
		return refuse(err)
	}
	dm.generation = res.Generation
	dm.mu.Lock()
	dm.managed = names(cfg)
	dm.mu.Unlock()
	for _, w := range res.Warnings {
		dm.log.Warn("config applied with a warning", "generation", res.Generation, "field", w.Field, "warning", w.Message)
	}
	dm.log.Info("config applied", "config", dm.file, "generation", res.Generation, "warnings", len(res.Warnings))
	return res, nil
}

// stop shuts everything down in order: no new control requests, no more
// scrapes, then the dataplane (closed: its programs detached and its pins
// removed; or released, see below); the socket is removed by the control
// server.
func (dm *daemon) stop(srv *control.Server, msrv *http.Server, cause error) error {
	errs := []error{cause}
	errs = append(errs, srv.Close())
	if dm.stopHistory != nil {
		dm.stopHistory()
	}
	if msrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, msrv.Shutdown(ctx))
		cancel()
	}
	// A pinned dataplane is released, still enforcing, when asked to
	// (--keep-dataplane) and when fwd fails after starting it: a daemon
	// that cannot serve must not open the firewall on its way out.
	released := false
	if r, ok := dm.dp.(dataplane.Releaser); ok && dm.pinDir != "" && (dm.keep || cause != nil) {
		if err := r.Release(); err != nil {
			errs = append(errs, fmt.Errorf("release dataplane: %w", err))
		}
		released = true
	} else if err := dm.dp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close dataplane: %w", err))
	}
	err := errors.Join(errs...)
	switch {
	case err != nil && cause == nil:
		dm.log.Error("stopped with errors", "err", err)
	case cause != nil && released:
		dm.log.Error("stopped on an error: the pinned dataplane was released and keeps enforcing its config", "pin_dir", dm.pinDir, "err", cause)
	case cause != nil:
	case released:
		dm.log.Info("stopped: dataplane released, still enforcing its config (a fwd with the same --name adopts it; fwd --remove removes it), control socket removed",
			"pin_dir", dm.pinDir)
	default:
		dm.log.Info("stopped: dataplane closed, control socket removed")
	}
	return err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
