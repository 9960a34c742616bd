// Command lab is fwplane's one-command lab: it builds a client / firewall /
// server topology (plus a mirror sink) of network namespaces and veths,
// runs a dataplane in the firewall namespace through fwplane.Open, drives
// real traffic through it, prints `show system buffers` and a verdict, and
// removes everything on exit or Ctrl-C.
//
//	sudo go run ./examples/lab [--backend auto|ebpf|userspace] [--flows N]
//	    [--duration D] [--veth-defaults] [--detail] [--json] [--hold] [--socket PATH] [--pin]
//
// Traffic: N allowed flows (UDP and TCP, IPv4 and IPv6, one session each)
// that must get their echo back, denied flows (to ports that have a server
// but no allowing policy) that must not, and a flood of one allowed UDP
// flow for --duration, counted where it arrives at the server. The exit
// status is 0 only when allowed flows passed, denied flows were blocked,
// the flood was forwarded and the session count equals the flows.
//
// --veth-defaults keeps every veth as the kernel makes it (GRO off, TX
// checksum offload and TSO on), as in containers, instead of the lab's
// settings (GRO on, TX checksum offload off; see internal/netlab), and
// attaches nothing to the client's and server's veths until the flows are
// done: what a user's namespaces look like. The verdict then also says
// which veth dropped frames and which receiver counted checksum errors.
//
// Every start first removes what labs of dead processes left behind
// (namespaces named with their owner's pid; see netlab.Sweep).
//
// --hold keeps the dataplane running after the verdict and serves the
// control socket (package control), so fwctl works against it:
//
//	go run ./examples/fwctl --socket /run/fwplane/lab.sock show system buffers
//
// --pin pins the dataplane (fwplane.Options.PinDir) in a directory named
// with the lab's pid, as fwd does by default: kill -9 the lab while it
// holds and the dataplane keeps enforcing in its namespaces (see
// docs/failure-model.md); the next lab start removes both.
//
// The lab lives in examples/ and so may use fwplane's internal/netlab to
// build the topology; the dataplane itself is driven through exported API
// only.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fwplane/fwplane"
	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/render"
)

// Ports the lab uses on the server.
const (
	udpAllowed = 7000
	udpDenied  = 7001
	udpFlood   = 7099
	tcpAllowed = 8000
	tcpDenied  = 8001
)

// DefaultSocket is where --hold serves the control API.
const DefaultSocket = "/run/fwplane/lab.sock"

type options struct {
	backend  capability.Preference
	flows    int
	duration time.Duration
	detail   bool
	json     bool
	hold     bool
	socket   string
	// pin pins the dataplane under netlab.PinRoot (owner-named).
	pin bool
	// vethDefaults keeps the kernel's veth defaults.
	vethDefaults bool

	out io.Writer // the report (table or JSON)
	log io.Writer // progress lines
	// held, when set, is called with the socket path once --hold serves
	// (tests).
	held func(socket string)
}

func main() {
	o := options{out: os.Stdout, log: os.Stderr}
	var backend string
	fs := flag.NewFlagSet("lab", flag.ExitOnError)
	fs.StringVar(&backend, "backend", "auto", "preferred backend: auto, ebpf or userspace (a named backend is strict: no fallback)")
	fs.IntVar(&o.flows, "flows", 32, "allowed flows to run (UDP/TCP, IPv4/IPv6)")
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "how long to flood one allowed flow")
	fs.BoolVar(&o.vethDefaults, "veth-defaults", false, "keep the kernel's veth defaults (GRO off, TX checksum offload and TSO on), as in containers")
	fs.BoolVar(&o.detail, "detail", false, "show the detailed buffers view")
	fs.BoolVar(&o.json, "json", false, "print a machine-readable summary and the resource report")
	fs.BoolVar(&o.hold, "hold", false, "keep running after the verdict and serve the control socket until interrupted")
	fs.StringVar(&o.socket, "socket", DefaultSocket, "control socket for --hold")
	fs.BoolVar(&o.pin, "pin", false, "pin the dataplane so that it outlives the lab process (as fwd does): kill -9 the lab and it keeps enforcing")
	fs.Parse(os.Args[1:])
	pref, err := capability.ParsePreference(backend)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(2)
	}
	o.backend = pref

	// Cleanup must finish even if Ctrl-C is pressed again: the context
	// keeps catching the signals until run has returned.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	sum, err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
	if !sum.Verdict.Pass {
		os.Exit(1)
	}
}

// Summary is what --json prints.
type Summary struct {
	Backend   dataplane.Mode `json:"backend"`
	FellBack  bool           `json:"fell_back"`
	Decision  string         `json:"decision"`
	Mirroring string         `json:"mirroring"`
	// Namespaces the lab created (all removed when run returns).
	Namespaces []string `json:"namespaces"`

	Allowed FlowResult  `json:"allowed"`
	Denied  FlowResult  `json:"denied"`
	Flood   FloodResult `json:"flood"`
	// Mirror is nil when the backend does not mirror.
	Mirror   *MirrorResult `json:"mirror,omitempty"`
	Sessions struct {
		Expected uint64  `json:"expected"`
		Seen     *uint64 `json:"seen"` // nil: the backend could not count them
	} `json:"sessions"`
	// Veths is "lab" or "kernel defaults" (--veth-defaults).
	Veths string `json:"veths"`
	// Path is what the kernel counted while the allowed and denied flows
	// ran: packets the receivers dropped for a bad checksum and frames
	// the firewall's veths could not hand to their peers.
	Path    PathResult               `json:"path"`
	Verdict Verdict                  `json:"verdict"`
	Report  dataplane.ResourceReport `json:"report"`
}

// FlowResult counts flows; for allowed flows OK means echoed, for denied
// flows OK means blocked.
type FlowResult struct {
	Flows    int      `json:"flows"`
	OK       int      `json:"ok"`
	Failed   int      `json:"failed"`
	Failures []string `json:"failures,omitempty"`
	Seconds  float64  `json:"seconds"`
}

// FloodResult is the flood, counted at both ends.
type FloodResult struct {
	Sent        uint64  `json:"sent"`
	Received    uint64  `json:"received"`
	Seconds     float64 `json:"seconds"`
	SentPPS     float64 `json:"sent_pps"`
	ReceivedPPS float64 `json:"received_pps"`
}

// MirrorResult is the flood's clones: what the dataplane's counters say it
// made and lost (deltas over the flood, rule scope), and what the sink
// counted.
type MirrorResult struct {
	Rule string `json:"rule"`
	// Selected: frames the rule picked for cloning (rate 1: every frame
	// that reached the dataplane); Mirrored: clones handed to the output.
	Selected uint64 `json:"selected"`
	Mirrored uint64 `json:"mirrored"`
	// Dropped by reason (the counters named mirror_dropped_*), and by the
	// output's driver after the hand-over (xdp_xmit_errors), where known.
	Dropped map[string]uint64 `json:"dropped,omitempty"`
	// AtSink: flood frames that arrived at the sink.
	AtSink uint64 `json:"at_sink"`
}

// PathResult is the kernel's own counts of loss on the lab's path, as
// deltas over the flows.
type PathResult struct {
	ClientChecksumErrors netlab.ChecksumErrors `json:"client_checksum_errors"`
	ServerChecksumErrors netlab.ChecksumErrors `json:"server_checksum_errors"`
	// ToClientDrops and ToServerDrops: frames the firewall's veth towards
	// the client (server) dropped instead of delivering them.
	ToClientDrops netlab.VethDrops `json:"to_client_drops"`
	ToServerDrops netlab.VethDrops `json:"to_server_drops"`
	// ClientIPReceived and ServerIPReceived: packets their IP stacks
	// received (Ip InReceives + Ip6InReceives).
	ClientIPReceived uint64 `json:"client_ip_received"`
	ServerIPReceived uint64 `json:"server_ip_received"`
	// ClientNAPI and ServerNAPI: whether the client's (server's) veth
	// runs NAPI (GRO on or an XDP program), which frames XDP redirects
	// into the firewall's end of the pair need; read after the flows.
	ClientNAPI bool `json:"client_napi"`
	ServerNAPI bool `json:"server_napi"`
}

// pathCounters reads the counters PathResult is made of.
func pathCounters(l *netlab.Lab) (PathResult, error) {
	var p PathResult
	var err error
	if p.ClientChecksumErrors, err = netlab.ReadChecksumErrors(l.Client); err != nil {
		return p, err
	}
	if p.ServerChecksumErrors, err = netlab.ReadChecksumErrors(l.Server); err != nil {
		return p, err
	}
	if p.ToClientDrops, err = netlab.ReadVethDrops(l.Firewall, l.FwClientIf, l.Client, l.ClientIf); err != nil {
		return p, err
	}
	if p.ToServerDrops, err = netlab.ReadVethDrops(l.Firewall, l.FwServerIf, l.Server, l.ServerIf); err != nil {
		return p, err
	}
	for _, x := range []struct {
		ns   *netlab.NS
		to   *uint64
		napi *bool
		ifc  string
	}{{l.Client, &p.ClientIPReceived, &p.ClientNAPI, l.ClientIf}, {l.Server, &p.ServerIPReceived, &p.ServerNAPI, l.ServerIf}} {
		err := x.ns.Do(func() error {
			snmp, err := netlab.ReadSNMP()
			*x.to = snmp["IpInReceives"] + snmp["Ip6InReceives"]
			return err
		})
		if err != nil {
			return p, err
		}
		if *x.napi, err = netlab.RunsNAPI(x.ns, x.ifc); err != nil {
			return p, err
		}
	}
	return p, nil
}

func (p PathResult) sub(o PathResult) PathResult {
	return PathResult{p.ClientChecksumErrors.Sub(o.ClientChecksumErrors), p.ServerChecksumErrors.Sub(o.ServerChecksumErrors),
		p.ToClientDrops.Sub(o.ToClientDrops), p.ToServerDrops.Sub(o.ToServerDrops),
		p.ClientIPReceived - o.ClientIPReceived, p.ServerIPReceived - o.ServerIPReceived, p.ClientNAPI, p.ServerNAPI}
}

// Verdict is the lab's pass/fail.
type Verdict struct {
	AllowedOK      bool `json:"allowed_ok"`
	DeniedBlocked  bool `json:"denied_blocked"`
	FloodForwarded bool `json:"flood_forwarded"`
	// FloodMirrored: the sink received clones of the flood, no more than
	// the dataplane says it made (true when the backend does not mirror).
	FloodMirrored bool `json:"flood_mirrored"`
	SessionsMatch bool `json:"sessions_match"`
	// NoChecksumErrors: no receiver dropped a packet of the flows for a
	// bad checksum.
	NoChecksumErrors bool `json:"no_checksum_errors"`
	Pass             bool `json:"pass"`
}

// labConfig is the firewall's config: the client side is "inside", the
// server side "outside"; inside may reach the allowed ports, nothing
// else is allowed (default deny).
func labConfig(l *netlab.Lab) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "inside"}, {Name: l.FwServerIf, Zone: "outside"}},
		Zones:      []dataplane.Zone{{Name: "inside"}, {Name: "outside"}},
		Policies: []dataplane.Policy{
			{Name: "udp-echo", FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP,
				DestinationPorts: []dataplane.PortRange{{First: udpAllowed, Last: udpAllowed}, {First: udpFlood, Last: udpFlood}},
				Action:           dataplane.ActionAllow},
			{Name: "tcp-echo", FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoTCP,
				DestinationPorts: []dataplane.PortRange{{First: tcpAllowed, Last: tcpAllowed}}, Action: dataplane.ActionAllow},
		},
	}
}

// supports reports whether the backend of mode m declares feature f.
func supports(m dataplane.Mode, f dataplane.Feature) bool {
	for _, b := range fwplane.Backends() {
		if b.Mode == m && b.Unavailable == "" {
			return slices.Contains(b.Features, f)
		}
	}
	return false
}

type flow struct {
	proto    string
	src, dst netip.AddrPort
}

func (f flow) String() string { return fmt.Sprintf("%s %s -> %s", f.proto, f.src, f.dst) }

func run(ctx context.Context, o options) (sum Summary, err error) {
	if o.flows < 1 {
		return sum, errors.New("--flows must be at least 1")
	}
	if o.out == nil {
		o.out = io.Discard
	}
	if o.log == nil {
		o.log = io.Discard
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.log, format+"\n", args...) }

	// A queue per CPU on every veth, like a multi-queue NIC (see
	// netlab.Options.Queues): the eBPF mirror stage sends from another CPU.
	l, err := netlab.New(ctx, &netlab.Options{MirrorSink: true, Queues: runtime.NumCPU(), KernelVethDefaults: o.vethDefaults})
	if err != nil {
		if errors.Is(err, syscall.EPERM) {
			err = fmt.Errorf("%w (the lab creates network namespaces and loads BPF: run it as root, e.g. sudo go run ./examples/lab)", err)
		}
		return sum, fmt.Errorf("build lab: %w", err)
	}
	// Everything below is undone in reverse order, whatever happens.
	var cleanups []func() error
	defer func() {
		cleanups = append(cleanups, l.Close)
		var errs []error
		for i := len(cleanups) - 1; i >= 0; i-- {
			errs = append(errs, cleanups[i]())
		}
		if cerr := errors.Join(errs...); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up lab: %w", cerr))
		} else {
			logf("lab removed: namespaces, veths and programs are gone")
		}
	}()
	for _, ns := range []*netlab.NS{l.Client, l.Firewall, l.Server, l.Sink} {
		sum.Namespaces = append(sum.Namespaces, ns.Name)
	}
	if !l.Swept.Empty() {
		logf("removed what dead labs left: namespaces %v, processes %v, pin dirs %v", l.Swept.Namespaces, l.Swept.Processes, l.Swept.PinDirs)
	}
	if l.SweepErr != nil {
		logf("warning: could not remove everything dead labs left: %v", l.SweepErr)
	}
	logf("lab %s: client %s | firewall %s | server %s | sink %s", l.Suffix, l.Client.Name, l.Firewall.Name, l.Server.Name, l.Sink.Name)
	sum.Veths = "lab (GRO on, TX checksum offload off)"
	if o.vethDefaults {
		sum.Veths = "kernel defaults (GRO off, TX checksum offload and TSO on)"
	}
	logf("veths: %s", sum.Veths)

	if err := l.ResolveNeighbors(ctx); err != nil {
		return sum, err
	}
	// A veth end only receives XDP-forwarded frames while it runs NAPI: a
	// pass-through counter on each receiving end guarantees it. The server
	// one also counts (and drops) the flood; the mirror sink's counts the
	// flood's clones (everything else mirrored there reaches its stack,
	// which ignores it). With the kernel's veth defaults nothing is
	// attached before the flows have run, as in a user's namespaces.
	var sc, mc *netlab.Counter
	attachCounters := func() error {
		if !o.vethDefaults {
			cc, err := netlab.AttachCounter(l.Client, l.ClientIf, nil)
			if err != nil {
				return err
			}
			cleanups = append(cleanups, cc.Close)
		}
		if sc, err = netlab.AttachCounter(l.Server, l.ServerIf, &netlab.CounterOptions{Proto: 17, DstPort: udpFlood, Drop: true}); err != nil {
			return err
		}
		cleanups = append(cleanups, sc.Close)
		if mc, err = netlab.AttachCounter(l.Sink, l.SinkIf, &netlab.CounterOptions{Proto: 17, DstPort: udpFlood, Drop: true}); err != nil {
			return err
		}
		cleanups = append(cleanups, mc.Close)
		return nil
	}
	if !o.vethDefaults {
		if err := attachCounters(); err != nil {
			return sum, err
		}
	}

	for _, a := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		for _, p := range []uint16{udpAllowed, udpDenied} {
			stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				return sum, err
			}
			cleanups = append(cleanups, func() error { stop(); return nil })
		}
		for _, p := range []uint16{tcpAllowed, tcpDenied} {
			stop, err := netlab.TCPEcho(ctx, l.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				return sum, err
			}
			cleanups = append(cleanups, func() error { stop(); return nil })
		}
	}

	cfg := labConfig(l)
	fwOpts := &fwplane.Options{Backend: o.backend, Strict: o.backend != capability.PreferAuto, NetNS: l.Firewall.Path}
	d, err := fwplane.Decide(ctx, cfg, fwOpts)
	if err != nil {
		return sum, fmt.Errorf("decide backend: %w\n%s", err, d.Explain())
	}
	if supports(d.Mode, dataplane.FeaturePortMirroring) {
		cfg.PortMirroring = []dataplane.MirrorRule{{Input: l.FwClientIf, Output: l.FwSinkIf, Rate: 1}}
		sum.Mirroring = fmt.Sprintf("client ingress %s mirrored to the sink (%s)", l.FwClientIf, l.FwSinkIf)
	} else {
		sum.Mirroring = fmt.Sprintf("omitted: the %s backend does not implement port mirroring yet, so the sink stays idle", d.Mode)
	}

	if o.pin {
		dir, err := netlab.MakePinDir()
		if err != nil {
			return sum, fmt.Errorf("pin directory: %w", err)
		}
		// Close removes what is pinned; the (then empty) directory goes
		// after it.
		cleanups = append(cleanups, func() error {
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		})
		fwOpts.PinDir = dir
		logf("pinned in %s: a lab killed with kill -9 leaves the dataplane enforcing; the next lab start removes it", dir)
	}
	dp, res, err := fwplane.Open(ctx, cfg, fwOpts)
	d = res.Decision
	if err != nil {
		return sum, fmt.Errorf("open dataplane: %w\n%s", err, d.Explain())
	}
	cleanups = append(cleanups, dp.Close)
	for _, w := range res.Applied.Warnings {
		logf("warning: %s", w)
	}
	sum.Backend, sum.FellBack, sum.Decision = dp.Mode(), d.FellBack, d.Explain()
	logf("dataplane: %s backend in %s (preference %s%s)", dp.Mode(), l.Firewall.Name, d.Request.Preference, map[bool]string{true: ", fell back"}[d.FellBack])
	logf("port mirroring: %s", sum.Mirroring)

	path0, err := pathCounters(l)
	if err != nil {
		return sum, err
	}
	// Allowed flows: each its own source port, so each is one session.
	var allowed []flow
	for i := range o.flows {
		src, dst := l.ClientAddr4, l.ServerAddr4
		if (i/2)%2 == 1 {
			src, dst = l.ClientAddr6, l.ServerAddr6
		}
		f := flow{proto: "udp", src: netip.AddrPortFrom(src, uint16(20000+i)), dst: netip.AddrPortFrom(dst, udpAllowed)}
		if i%2 == 1 {
			f.proto, f.dst = "tcp", netip.AddrPortFrom(dst, tcpAllowed)
		}
		allowed = append(allowed, f)
	}
	sum.Allowed = runFlows(ctx, l, allowed, 2*time.Second, true, func(done, failed int) {
		logf("allowed flows: %d/%d done, %d failed", done, len(allowed), failed)
	})
	if err := ctx.Err(); err != nil {
		return sum, err
	}

	var denied []flow
	for i, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		src := l.ClientAddr4
		if dst.Is6() {
			src = l.ClientAddr6
		}
		denied = append(denied,
			flow{proto: "udp", src: netip.AddrPortFrom(src, uint16(40000+2*i)), dst: netip.AddrPortFrom(dst, udpDenied)},
			flow{proto: "tcp", src: netip.AddrPortFrom(src, uint16(40001+2*i)), dst: netip.AddrPortFrom(dst, tcpDenied)})
	}
	sum.Denied = runFlows(ctx, l, denied, 500*time.Millisecond, false, nil)
	logf("denied flows: %d/%d blocked", sum.Denied.OK, sum.Denied.Flows)
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	path1, err := pathCounters(l)
	if err != nil {
		return sum, err
	}
	sum.Path = path1.sub(path0)
	if o.vethDefaults {
		if err := attachCounters(); err != nil {
			return sum, err
		}
	}

	var before dataplane.ResourceReport
	var sink0 uint64
	if len(cfg.PortMirroring) > 0 {
		if before, err = dp.ResourceStats(ctx); err != nil {
			return sum, fmt.Errorf("read resources: %w", err)
		}
		if sink0, _, err = mc.Read(); err != nil {
			return sum, err
		}
	}
	if o.vethDefaults {
		// The live-frames generator's frames reach the firewall only if
		// its client-facing veth runs NAPI; a dataplane in TC mode
		// attaches no XDP program there, so GRO goes on for the flood.
		napi, err := netlab.RunsNAPI(l.Firewall, l.FwClientIf)
		if err != nil {
			return sum, err
		}
		if !napi {
			restore, err := netlab.EnsureNAPI(l.Firewall, l.FwClientIf)
			if err != nil {
				return sum, err
			}
			cleanups = append(cleanups, func() error { restore(); return nil })
			logf("flood: %s runs no XDP program (TC mode): GRO turned on there so the generator's frames are received", l.FwClientIf)
		}
	}
	sum.Flood, err = flood(ctx, l, sc, o.duration)
	if err != nil {
		return sum, err
	}
	logf("flood: %d frames sent in %.2fs (%.0f pps); %d counted at the server (%.0f pps, %.1f%%)",
		sum.Flood.Sent, sum.Flood.Seconds, sum.Flood.SentPPS, sum.Flood.Received, sum.Flood.ReceivedPPS,
		100*float64(sum.Flood.Received)/max(1, float64(sum.Flood.Sent)))
	if len(cfg.PortMirroring) > 0 {
		after, err := dp.ResourceStats(ctx)
		if err != nil {
			return sum, fmt.Errorf("read resources: %w", err)
		}
		sink1, _, err := mc.Read()
		if err != nil {
			return sum, err
		}
		r := cfg.PortMirroring[0]
		sum.Mirror = mirrorResult(before, after, "mirror "+r.Input+"->"+r.Output, "mirror_output "+r.Output)
		sum.Mirror.AtSink = sink1 - sink0
		logf("mirror: %d clones of the flood at the sink; the dataplane selected %d, mirrored %d, dropped %v",
			sum.Mirror.AtSink, sum.Mirror.Selected, sum.Mirror.Mirrored, sum.Mirror.Dropped)
	}

	sum.Report, err = dp.ResourceStats(ctx)
	if err != nil {
		return sum, fmt.Errorf("read resources: %w", err)
	}
	// Every allowed flow is one session, and so is the flood's flow.
	sum.Sessions.Expected = uint64(o.flows) + 1
	if s := sum.Report.Sessions; s != nil {
		sum.Sessions.Seen = dataplane.Uint64(s.Total)
	}
	v := &sum.Verdict
	v.AllowedOK = sum.Allowed.OK == sum.Allowed.Flows
	v.DeniedBlocked = sum.Denied.OK == sum.Denied.Flows
	v.FloodForwarded = sum.Flood.Received > 0
	v.FloodMirrored = sum.Mirror == nil || (sum.Mirror.AtSink > 0 && sum.Mirror.AtSink <= sum.Mirror.Mirrored)
	v.SessionsMatch = sum.Sessions.Seen != nil && *sum.Sessions.Seen == sum.Sessions.Expected
	v.NoChecksumErrors = sum.Path.ClientChecksumErrors.Total() == 0 && sum.Path.ServerChecksumErrors.Total() == 0
	v.Pass = v.AllowedOK && v.DeniedBlocked && v.FloodForwarded && v.FloodMirrored && v.SessionsMatch && v.NoChecksumErrors

	if o.json {
		enc := json.NewEncoder(o.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return sum, err
		}
	} else {
		fmt.Fprintln(o.out)
		fmt.Fprintln(o.out, "> show system buffers"+map[bool]string{true: " detail"}[o.detail])
		if err := render.Buffers(o.out, sum.Report, &render.Options{Detail: o.detail}); err != nil {
			return sum, err
		}
		printVerdict(o.out, &sum)
	}

	if o.hold {
		return sum, hold(ctx, o, dp, d, cfg, logf)
	}
	return sum, nil
}

func printVerdict(w io.Writer, s *Summary) {
	mark := func(ok bool) string {
		if ok {
			return "ok  "
		}
		return "FAIL"
	}
	seen := "unavailable"
	if s.Sessions.Seen != nil {
		seen = fmt.Sprint(*s.Sessions.Seen)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Verdict:")
	fmt.Fprintf(w, "  %s allowed flows answered:  %d/%d\n", mark(s.Verdict.AllowedOK), s.Allowed.OK, s.Allowed.Flows)
	for _, f := range s.Allowed.Failures {
		fmt.Fprintf(w, "         %s\n", f)
	}
	fmt.Fprintf(w, "  %s denied flows blocked:    %d/%d\n", mark(s.Verdict.DeniedBlocked), s.Denied.OK, s.Denied.Flows)
	for _, f := range s.Denied.Failures {
		fmt.Fprintf(w, "         %s\n", f)
	}
	fmt.Fprintf(w, "  %s flood forwarded:         %d of %d frames\n", mark(s.Verdict.FloodForwarded), s.Flood.Received, s.Flood.Sent)
	if m := s.Mirror; m != nil {
		lost := ""
		for _, k := range slices.Sorted(maps.Keys(m.Dropped)) {
			lost += fmt.Sprintf(", %s %d", k, m.Dropped[k])
		}
		fmt.Fprintf(w, "  %s flood mirrored:          %d clones at the sink; %d selected, %d mirrored%s\n",
			mark(s.Verdict.FloodMirrored), m.AtSink, m.Selected, m.Mirrored, lost)
	}
	fmt.Fprintf(w, "  %s sessions seen = flows:   %s, expected %d (%d flows + the flood's)\n", mark(s.Verdict.SessionsMatch), seen, s.Sessions.Expected, s.Allowed.Flows)
	p := s.Path
	fmt.Fprintf(w, "  %s checksum errors:         client %s; server %s\n", mark(s.Verdict.NoChecksumErrors), p.ClientChecksumErrors, p.ServerChecksumErrors)
	if !s.Verdict.Pass {
		explain(w, s)
	}
	if s.Verdict.Pass {
		fmt.Fprintf(w, "PASS (%s backend)\n", s.Backend)
	} else {
		fmt.Fprintf(w, "FAIL (%s backend)\n", s.Backend)
	}
}

// explain says, after a failed verdict, what the kernel saw on the path.
func explain(w io.Writer, s *Summary) {
	p := s.Path
	fmt.Fprintf(w, "\nWhat the kernel counted while the flows ran (veths: %s):\n", s.Veths)
	for _, d := range []struct {
		to       string
		v        netlab.VethDrops
		received uint64
		napi     bool
	}{{"client", p.ToClientDrops, p.ClientIPReceived, p.ClientNAPI}, {"server", p.ToServerDrops, p.ServerIPReceived, p.ServerNAPI}} {
		drops := "nothing dropped"
		if d.v.Total() > 0 {
			drops = fmt.Sprintf("dropped %d frames (XDP transmit errors %d, receive-ring drops %d, other transmit drops %d)",
				d.v.Total(), d.v.XDPXmitErrors, d.v.RxQueueDrops, d.v.TxDropped)
		}
		napi := "runs NAPI"
		if !d.napi {
			napi = "runs no NAPI (GRO off, no XDP program)"
		}
		fmt.Fprintf(w, "  firewall -> %s veth: %s; the %s's end %s; its IP stack received %d packets\n", d.to, drops, d.to, napi, d.received)
	}
	if p.ClientChecksumErrors.Total()+p.ServerChecksumErrors.Total() > 0 {
		fmt.Fprintln(w, "  Receivers dropped packets with bad checksums: their senders left L4 checksums to the")
		fmt.Fprintln(w, "  veth's TX checksum offload (partial sums), and the dataplane forwarded them without")
		fmt.Fprintln(w, "  completing them.")
	}
	if s.Allowed.Failed > 0 && (!p.ClientNAPI || !p.ServerNAPI) {
		fmt.Fprintln(w, "  A veth whose peer runs no NAPI refuses the frames XDP redirects into it (it does not")
		fmt.Fprintln(w, "  offer ndo_xdp_xmit then): a dataplane that forwards by XDP redirect loses them there,")
		fmt.Fprintln(w, "  before any veth counter sees them.")
	}
	if strings.HasPrefix(s.Veths, "kernel defaults") && (s.Allowed.Failed > 0 || !s.Verdict.NoChecksumErrors) {
		fmt.Fprintf(w, "  The %s backend does not forward correctly on veths with the kernel's defaults yet.\n", s.Backend)
	}
}

// mirrorResult is the rule's counter deltas between two reports. Both
// backends count mirrored_packets; the selection counter is the backend's
// own (mirror_selected for userspace, mirror_input_packets for eBPF at
// rate 1) and drops are every mirror_dropped_* counter plus the output
// driver's xdp_xmit_errors.
func mirrorResult(before, after dataplane.ResourceReport, scope, outScope string) *MirrorResult {
	delta := func(name, sc string) (uint64, bool) {
		a, ok := after.Counter(name, sc)
		if !ok {
			return 0, false
		}
		b, _ := before.Counter(name, sc)
		return a - b, true
	}
	m := &MirrorResult{Rule: scope, Dropped: map[string]uint64{}}
	m.Mirrored, _ = delta("mirrored_packets", scope)
	if v, ok := delta("mirror_selected", scope); ok {
		m.Selected = v
	} else if v, ok := delta("mirror_input_packets", scope); ok {
		m.Selected = v
	}
	for _, c := range after.Counters {
		if c.Scope == scope && strings.HasPrefix(c.Name, "mirror_dropped_") {
			if v, _ := delta(c.Name, scope); v > 0 {
				m.Dropped[strings.TrimPrefix(c.Name, "mirror_dropped_")] = v
			}
		}
	}
	if v, ok := delta("xdp_xmit_errors", outScope); ok && v > 0 {
		m.Dropped["xdp_xmit_errors"] = v
	}
	return m
}

// runFlows runs one echo round trip per flow, a few at a time. For allowed
// flows success is an intact echo; for denied flows it is no answer
// within timeout.
func runFlows(ctx context.Context, l *netlab.Lab, flows []flow, timeout time.Duration, wantEcho bool, progress func(done, failed int)) FlowResult {
	res := FlowResult{Flows: len(flows)}
	start := time.Now()
	var mu sync.Mutex
	var done, failed atomic.Int64
	stopTicker := make(chan struct{})
	tickerDone := make(chan struct{})
	go func() {
		defer close(tickerDone)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if progress != nil {
					progress(int(done.Load()), int(failed.Load()))
				}
			case <-stopTicker:
				return
			}
		}
	}()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, f := range flows {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			payload := fmt.Appendf(nil, "fwplane lab flow %d", i)
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var got []byte
			var err error
			if f.proto == "udp" {
				got, err = netlab.UDPRoundTrip(rctx, l.Client, f.src, f.dst, payload)
			} else {
				got, err = netlab.TCPRoundTrip(rctx, l.Client, f.src, f.dst, payload)
			}
			echoed := err == nil && string(got) == string(payload)
			ok := echoed == wantEcho
			mu.Lock()
			defer mu.Unlock()
			switch {
			case ok:
				res.OK++
			case wantEcho:
				res.Failures = append(res.Failures, fmt.Sprintf("%s: %v", f, err))
			default:
				res.Failures = append(res.Failures, fmt.Sprintf("%s: answered although denied", f))
			}
			if !ok {
				failed.Add(1)
			}
			done.Add(1)
		}()
	}
	wg.Wait()
	close(stopTicker)
	<-tickerDone
	res.Failed = res.Flows - res.OK
	res.Seconds = time.Since(start).Seconds()
	slices.Sort(res.Failures)
	if progress != nil {
		progress(int(done.Load()), int(failed.Load()))
	}
	return res
}

// flood sends one allowed UDP flow from the client for d and counts what
// reaches the server.
func flood(ctx context.Context, l *netlab.Lab, sc *netlab.Counter, d time.Duration) (FloodResult, error) {
	var res FloodResult
	frame, err := packet.Build(packet.Spec{
		SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, 30000), Dst: netip.AddrPortFrom(l.ServerAddr4, udpFlood),
		PayloadLen: 18,
	}, packet.ProtoUDP)
	if err != nil {
		return res, fmt.Errorf("build flood frame: %w", err)
	}
	before, _, err := sc.Read()
	if err != nil {
		return res, err
	}
	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	fr, err := netlab.Flood{NS: l.Client, Iface: l.ClientIf, Frame: frame, Count: 1 << 40}.Run(fctx)
	if err != nil && !(errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil) {
		return res, fmt.Errorf("flood: %w", err)
	}
	// Let the last frames drain through the veth rings.
	time.Sleep(50 * time.Millisecond)
	after, _, err := sc.Read()
	if err != nil {
		return res, err
	}
	res.Sent, res.Received, res.Seconds = fr.Sent, after-before, fr.Elapsed.Seconds()
	if res.Seconds > 0 {
		res.SentPPS = float64(res.Sent) / res.Seconds
		res.ReceivedPPS = float64(res.Received) / res.Seconds
	}
	return res, nil
}

// hold serves the control socket until ctx ends.
func hold(ctx context.Context, o options, dp dataplane.DataPlane, d capability.Decision, cfg *dataplane.Config, logf func(string, ...any)) error {
	var mu sync.Mutex
	srv, err := control.Serve(o.socket, &control.Service{
		DataPlane: dp,
		Decision:  func() capability.Decision { return d },
		// The lab has no file: a reload re-applies the lab's config.
		Reload: func(ctx context.Context) (dataplane.ApplyResult, error) {
			mu.Lock()
			defer mu.Unlock()
			return dp.Apply(ctx, cfg)
		},
	})
	if err != nil {
		return fmt.Errorf("serve control socket: %w", err)
	}
	defer srv.Close()
	logf("holding: control socket %s", srv.Path())
	logf("  try: go run ./examples/fwctl --socket %s show system buffers", srv.Path())
	logf("  press Ctrl-C to remove the lab")
	if o.held != nil {
		o.held(srv.Path())
	}
	<-ctx.Done()
	logf("interrupted: removing the lab")
	return nil
}
