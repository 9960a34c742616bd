package diagnose

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
)

// Verdict is a check's answer.
type Verdict string

const (
	OK      Verdict = "ok"
	Suspect Verdict = "suspect"
	Failing Verdict = "failing"
	NA      Verdict = "n/a"
)

func (v Verdict) rank() int {
	switch v {
	case Failing:
		return 3
	case Suspect:
		return 2
	case OK:
		return 1
	}
	return 0
}

// Check is one question of the debugging map, answered.
type Check struct {
	ID       string  `json:"id"`
	Question string  `json:"question"`
	Verdict  Verdict `json:"verdict"`
	// Figures are the facts that decided the verdict, one per line.
	Figures []string `json:"figures,omitempty"`
	// Next says what to look at next (empty when all is ok).
	Next string `json:"next,omitempty"`
}

// Link is the kernel's view of one interface.
type Link struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Up is set when the interface is administratively up; Carrier when
	// its lower layer is up (for a veth: the peer is up).
	Up      bool `json:"up"`
	Carrier bool `json:"carrier"`
	// Loopback interfaces are ignored by the reach check.
	Loopback  bool   `json:"loopback,omitempty"`
	RXPackets uint64 `json:"rx_packets"`
	RXDropped uint64 `json:"rx_dropped"`
	TXPackets uint64 `json:"tx_packets"`
	TXDropped uint64 `json:"tx_dropped"`
	TXErrors  uint64 `json:"tx_errors"`
}

// Snapshot is one reading: the dataplane's report and its namespace's
// interfaces.
type Snapshot struct {
	Time   time.Time                `json:"time"`
	Report dataplane.ResourceReport `json:"report"`
	Links  []Link                   `json:"links"`
}

// Input is what Run judges.
type Input struct {
	// Decision is the capability decision the dataplane was opened with;
	// nil when unknown.
	Decision *capability.Decision
	// Managed names the interfaces of the config.
	Managed []string
	// Before and After are two snapshots a window apart.
	Before, After Snapshot
	// Thresholds for the resources check (80 % / 90 % by default).
	Thresholds dataplane.Thresholds
}

// Report is every check's answer.
type Report struct {
	Mode   dataplane.Mode `json:"mode"`
	Window time.Duration  `json:"window_ns"`
	Checks []Check        `json:"checks"`
	// Counts by verdict.
	OK      int `json:"ok"`
	Suspect int `json:"suspect"`
	Failing int `json:"failing"`
}

// Failed reports whether any check is failing.
func (r Report) Failed() bool { return r.Failing > 0 }

// Check returns the check with that id.
func (r Report) Check(id string) (Check, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return Check{}, false
}

// Run answers every question from in.
func Run(in Input) Report {
	d := newDeltas(in)
	rep := Report{Mode: in.After.Report.Mode, Window: in.After.Time.Sub(in.Before.Time)}
	for _, fn := range []func(*deltas) Check{checkBackend, checkReach, checkBindings, checkFill, checkTX, checkSessions, checkMirror, checkDrops, checkResources} {
		c := fn(d)
		switch c.Verdict {
		case OK:
			rep.OK++
		case Suspect:
			rep.Suspect++
		case Failing:
			rep.Failing++
		}
		rep.Checks = append(rep.Checks, c)
	}
	return rep
}

// deltas indexes the two snapshots.
type deltas struct {
	in      Input
	mode    dataplane.Mode
	window  time.Duration
	before  map[[2]string]uint64
	after   map[[2]string]uint64
	links   map[string][2]*Link
	managed map[string]bool
}

func newDeltas(in Input) *deltas {
	d := &deltas{in: in, mode: in.After.Report.Mode, window: in.After.Time.Sub(in.Before.Time),
		before: map[[2]string]uint64{}, after: map[[2]string]uint64{}, links: map[string][2]*Link{}, managed: map[string]bool{}}
	for _, c := range in.Before.Report.Counters {
		d.before[[2]string{c.Name, c.Scope}] = c.Value
	}
	for _, c := range in.After.Report.Counters {
		d.after[[2]string{c.Name, c.Scope}] = c.Value
	}
	for i := range in.Before.Links {
		l := &in.Before.Links[i]
		p := d.links[l.Name]
		p[0] = l
		d.links[l.Name] = p
	}
	for i := range in.After.Links {
		l := &in.After.Links[i]
		p := d.links[l.Name]
		p[1] = l
		d.links[l.Name] = p
	}
	for _, m := range in.Managed {
		d.managed[m] = true
	}
	return d
}

// has reports whether the report has a counter of that name (any scope).
func (d *deltas) has(name string) bool {
	for k := range d.after {
		if k[0] == name {
			return true
		}
	}
	return false
}

// delta is the growth of a counter over the window (0 if absent; a
// counter that went backwards, e.g. a reload, counts from 0).
func (d *deltas) delta(name, scope string) uint64 {
	a, ok := d.after[[2]string{name, scope}]
	if !ok {
		return 0
	}
	b := d.before[[2]string{name, scope}]
	if a < b {
		return a
	}
	return a - b
}

// scoped lists the counters of that name whose scope is not "global",
// with their deltas.
func (d *deltas) scoped(name string) map[string]uint64 {
	out := map[string]uint64{}
	for k := range d.after {
		if k[0] == name && k[1] != "global" {
			out[k[1]] = d.delta(name, k[1])
		}
	}
	return out
}

func (d *deltas) linkDelta(name string, f func(*Link) uint64) uint64 {
	p := d.links[name]
	if p[1] == nil {
		return 0
	}
	if p[0] == nil || f(p[1]) < f(p[0]) {
		return f(p[1])
	}
	return f(p[1]) - f(p[0])
}

func (d *deltas) rate(n uint64) string {
	if d.window <= 0 {
		return fmt.Sprintf("%d", n)
	}
	return fmt.Sprintf("%d in %s (%.0f/s)", n, d.window.Round(time.Millisecond), float64(n)/d.window.Seconds())
}

func (d *deltas) userspace() bool { return d.mode == dataplane.ModeUserspace }

func worst(a, b Verdict) Verdict {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func checkBackend(d *deltas) Check {
	c := Check{ID: "backend", Question: "Which backend and attach mode are in force, and why?", Verdict: OK}
	c.Figures = append(c.Figures, "backend: "+string(d.mode))
	if dec := d.in.Decision; dec != nil {
		c.Figures = append(c.Figures, fmt.Sprintf("preference %s, strict %v", dec.Request.Preference, dec.Request.Strict))
		for _, v := range dec.Verdicts {
			if v.Mode != dec.Mode && len(v.Reasons) > 0 {
				c.Figures = append(c.Figures, fmt.Sprintf("%s not chosen: %s", v.Mode, strings.Join(v.Reasons, "; ")))
			}
		}
		if dec.FellBack {
			c.Verdict = Suspect
			c.Figures = append(c.Figures, fmt.Sprintf("fell back from the preferred backend to %s", dec.Mode))
			c.Next = "fix what the preferred backend lacks (fwctl show capability), or prefer this backend explicitly"
		}
	} else {
		c.Figures = append(c.Figures, "capability decision: unknown")
	}
	ifs := d.in.After.Report.Interfaces
	if len(ifs) == 0 {
		c.Figures = append(c.Figures, "attach mode per interface: unknown (the backend does not report it)")
	}
	for _, is := range ifs {
		c.Figures = append(c.Figures, fmt.Sprintf("%s: %s (%s)", is.Name, is.Attach, is.Reason))
		if is.Attach == dataplane.AttachedXDPGeneric {
			c.Verdict = worst(c.Verdict, Suspect)
			c.Next = "generic XDP is the slow path: check the driver's XDP support (ethtool -i) and the attach reason"
		}
	}
	return c
}

// handed returns the packets the dataplane saw from a managed interface
// over the window, and whether the backend counts them per interface.
func (d *deltas) handed(name string) (uint64, bool) {
	if !d.userspace() {
		return 0, false
	}
	var n uint64
	found := false
	for _, c := range []string{"shim_redirected", "shim_pass_non_ip", "shim_pass_nd", "shim_pass_local", "shim_drop_no_socket", "shim_drop_heartbeat_stale"} {
		if _, ok := d.after[[2]string{c, name}]; ok {
			found = true
		}
		n += d.delta(c, name)
	}
	return n, found
}

// seenByProgram is the eBPF program's verdicts over the window: every
// packet it saw ends in one of these counters.
func (d *deltas) seenByProgram() uint64 {
	var n uint64
	for k := range d.after {
		if k[1] != "global" {
			continue
		}
		if k[0] == "forwarded" || strings.HasPrefix(k[0], "passed_") || strings.HasPrefix(k[0], "dropped_") {
			n += d.delta(k[0], k[1])
		}
	}
	return n
}

func checkReach(d *deltas) Check {
	c := Check{ID: "reach", Question: "Are packets reaching the dataplane, and only on the interfaces it manages?", Verdict: OK}
	if len(d.in.After.Links) == 0 {
		c.Verdict = NA
		c.Figures = append(c.Figures, "no interface statistics were read")
		return c
	}
	var managedRX uint64
	for _, name := range d.in.Managed {
		rx := d.linkDelta(name, func(l *Link) uint64 { return l.RXPackets })
		managedRX += rx
		if h, ok := d.handed(name); ok {
			c.Figures = append(c.Figures, fmt.Sprintf("%s: received %s, handed to the dataplane %d", name, d.rate(rx), h))
			if rx >= 10 && h == 0 {
				c.Verdict = Failing
				c.Next = "the shim on " + name + " passes nothing to the sockets: check its attach mode and program (bpftool net)"
			}
			if nd := d.delta("shim_drop_no_socket", name); nd > 0 {
				c.Verdict = worst(c.Verdict, Failing)
				c.Figures = append(c.Figures, fmt.Sprintf("%s: %s dropped by the shim, no socket ready on the queue", name, d.rate(nd)))
				c.Next = "bindings are not live on every queue of " + name + ": see the bindings check"
			}
			if ns := d.delta("shim_drop_heartbeat_stale", name); ns > 0 {
				c.Verdict = worst(c.Verdict, Failing)
				c.Figures = append(c.Figures, fmt.Sprintf("%s: %s dropped by the shim, a worker's heartbeat was stale (stuck or starved)", name, d.rate(ns)))
				c.Next = "a worker of " + name + " stopped making progress: see the bindings check (worker panics) and the host's CPU load"
			}
		} else {
			c.Figures = append(c.Figures, fmt.Sprintf("%s: received %s", name, d.rate(rx)))
		}
	}
	if !d.userspace() {
		d.reachEBPF(&c, managedRX)
	}
	for _, name := range sortedKeys(d.links) {
		p := d.links[name]
		if d.managed[name] || p[1] == nil || p[1].Loopback {
			continue
		}
		rx := d.linkDelta(name, func(l *Link) uint64 { return l.RXPackets })
		if rx == 0 {
			continue
		}
		c.Figures = append(c.Figures, fmt.Sprintf("%s (not managed): received %s", name, d.rate(rx)))
		v := Suspect
		if rx >= 10 {
			v = Failing
		}
		c.Verdict = worst(c.Verdict, v)
		c.Next = "traffic arrives on " + name + ", which the dataplane does not manage: the kernel forwards or drops it unfiltered; add it to the config or take it down"
	}
	return c
}

// reachEBPF adds the eBPF program's side to the reach check. The eBPF
// backend counts the program's verdicts for all interfaces together (one
// per-CPU array, no per-interface counters), so received vs handed is
// compared per interface only for what exists per interface: the
// kernel's received packets (netlink, the dataplane's namespace) and
// whether the program is attached there; the verdicts are compared in
// total, and the check says so rather than split them.
func (d *deltas) reachEBPF(c *Check, managedRX uint64) {
	attached := map[string]string{}
	for _, is := range d.in.After.Report.Interfaces {
		attached[is.Name] = is.Attach
	}
	for _, name := range d.in.Managed {
		rx := d.linkDelta(name, func(l *Link) uint64 { return l.RXPackets })
		if mode, ok := attached[name]; ok || len(attached) == 0 {
			if ok {
				c.Figures = append(c.Figures, fmt.Sprintf("%s: program attached (%s)", name, mode))
			}
			continue
		}
		c.Figures = append(c.Figures, fmt.Sprintf("%s: no program attached (not among the backend's interfaces)", name))
		if rx >= 10 {
			c.Verdict = Failing
			c.Figures = append(c.Figures, fmt.Sprintf("%s: received %s that no program judged", name, d.rate(rx)))
			c.Next = "the program is not attached to " + name + ": check the attach reasons (fwctl show capability) and bpftool net"
		}
	}
	seen := d.seenByProgram()
	c.Figures = append(c.Figures,
		fmt.Sprintf("the eBPF program judged %s in total, against %d received on the managed interfaces", d.rate(seen), managedRX),
		"per-interface judged counts: not available (the eBPF backend counts its verdicts for all interfaces together)")
	if managedRX >= 10 && seen == 0 {
		c.Verdict = Failing
		c.Next = "the managed interfaces receive but the program sees nothing: is it attached (bpftool net)?"
	}
}

func checkBindings(d *deltas) Check {
	c := Check{ID: "bindings", Question: "Are the AF_XDP bindings live on every queue?", Verdict: OK}
	for _, name := range d.in.Managed {
		p := d.links[name]
		if l := p[1]; l != nil && (!l.Up || !l.Carrier) {
			c.Verdict = Failing
			c.Figures = append(c.Figures, fmt.Sprintf("%s: link %s", name, linkState(l)))
			c.Next = "bring " + name + " (and its peer or cable) up"
		}
	}
	if !d.userspace() {
		if c.Verdict == OK {
			c.Verdict = NA
		}
		c.Figures = append(c.Figures, "no AF_XDP bindings: the eBPF backend forwards in the kernel")
		return c
	}
	live, down := 0, 0
	for _, r := range d.in.After.Report.Resources {
		if r.Name != "umem_frames" || !r.Detail {
			continue
		}
		if r.Error != "" {
			down++
			c.Verdict = Failing
			c.Figures = append(c.Figures, fmt.Sprintf("%s: %s", r.Scope, r.Error))
			c.Next = "the binding has no socket: see the daemon's log for the bind error; link flaps rebind on their own"
			continue
		}
		live++
	}
	c.Figures = append(c.Figures, fmt.Sprintf("%d binding%s live, %d down", live, plural(live), down))
	for _, ctr := range []struct {
		name string
		v    Verdict
	}{{"bind_errors", Failing}, {"worker_panics", Failing}, {"rebinds", Suspect}, {"link_down_teardowns", Suspect}} {
		if n := d.delta(ctr.name, "global"); n > 0 {
			c.Verdict = worst(c.Verdict, ctr.v)
			c.Figures = append(c.Figures, fmt.Sprintf("%s: %s", ctr.name, d.rate(n)))
			if c.Next == "" {
				c.Next = "bindings are being rebuilt: check link stability and the daemon's log"
			}
		}
	}
	return c
}

func linkState(l *Link) string {
	switch {
	case !l.Up:
		return "administratively down"
	case !l.Carrier:
		return "up but without carrier (its peer or cable is down)"
	}
	return "up"
}

func checkFill(d *deltas) Check {
	c := Check{ID: "fill", Question: "Is a fill ring draining to zero; are RX buffer allocations failing?", Verdict: OK}
	if !d.userspace() {
		c.Verdict = NA
		c.Figures = append(c.Figures, "no fill rings: the eBPF backend receives in the kernel")
		return c
	}
	th := d.in.Thresholds
	for _, r := range d.in.After.Report.Resources {
		if r.Name != "fill_ring_empty" || !r.Detail || r.Used == nil {
			continue
		}
		u, _ := r.Utilization()
		empty := d.delta("xdp_rx_fill_ring_empty_descs", r.Scope)
		dropped := d.delta("xdp_rx_dropped", r.Scope)
		lv := th.Level(r)
		switch {
		case empty > 0 || lv == dataplane.LevelCritical:
			c.Verdict = Failing
		case lv == dataplane.LevelWarning || dropped > 0:
			c.Verdict = worst(c.Verdict, Suspect)
		default:
			continue
		}
		c.Figures = append(c.Figures, fmt.Sprintf("%s: fill ring %.0f%% empty (%d of %d slots without a buffer); kernel found it empty %s; RX dropped %d",
			r.Scope, u, *r.Used, r.Capacity, d.rate(empty), dropped))
		c.Next = "the worker of " + r.Scope + " is not returning frames to the fill ring: is it stuck, or starved of CPU? (fwctl show system buffers detail: rx_ring, umem_frames by state)"
	}
	if c.Verdict == OK {
		c.Figures = append(c.Figures, "every fill ring holds buffers; no allocation failures in the window")
	}
	return c
}

func checkTX(d *deltas) Check {
	c := Check{ID: "tx", Question: "Is TX blocked: backpressure drops, completions not reaped, an egress down?", Verdict: OK}
	for _, name := range d.in.Managed {
		p := d.links[name]
		if l := p[1]; l != nil && (!l.Up || !l.Carrier) {
			c.Verdict = Failing
			c.Figures = append(c.Figures, fmt.Sprintf("egress %s: link %s", name, linkState(l)))
			c.Next = "bring " + name + " (and its peer or cable) up; frames routed to it are dropped"
		}
		if n := d.linkDelta(name, func(l *Link) uint64 { return l.TXDropped + l.TXErrors }); n > 0 {
			c.Verdict = worst(c.Verdict, Suspect)
			c.Figures = append(c.Figures, fmt.Sprintf("%s: kernel TX dropped or failed %s", name, d.rate(n)))
		}
	}
	if !d.userspace() {
		if c.Verdict == OK {
			c.Figures = append(c.Figures, "TX is the kernel's (the program redirects); no egress down, no TX drops in the window")
		}
		return c
	}
	for _, ctr := range []struct {
		name, what string
		v          Verdict
	}{
		{"dropped_egress_down", "dropped: egress down", Failing},
		{"tx_ring_full", "dropped: egress TX ring full", Failing},
		{"backpressure_drops", "dropped: no free egress frame (completions not reaped fast enough)", Failing},
		{"tx_kick_errors", "TX kick errors", Suspect},
	} {
		if n := d.delta(ctr.name, "global"); n > 0 {
			c.Verdict = worst(c.Verdict, ctr.v)
			c.Figures = append(c.Figures, fmt.Sprintf("%s: %s", ctr.what, d.rate(n)))
			if c.Next == "" {
				c.Next = "an egress does not drain: check its link, its peer, and pending_tx / completion_ring in fwctl show system buffers detail"
			}
		}
	}
	for _, rw := range d.txRings() {
		v, fig := judgeTXRing(rw, d.in.Thresholds, d.window)
		if v == OK {
			continue
		}
		c.Verdict = worst(c.Verdict, v)
		c.Figures = append(c.Figures, fig)
		if c.Next == "" {
			c.Next = "frames wait in the TX or completion ring: the egress is slow or its completions are not reaped (fwctl show system buffers detail, history pending_tx)"
		}
	}
	if c.Verdict == OK {
		c.Figures = append(c.Figures, "no TX drops, rings draining")
	}
	return c
}

// ringWindow is one ring's fill at the start and at the end of the
// diagnose window.
type ringWindow struct {
	// Name is tx_ring or pending_tx (frames waiting to be sent), or
	// completion_ring (frames sent, not yet reaped by the process).
	Name, Scope string
	Capacity    uint64
	// Before is unset when the ring was not in the first snapshot (a
	// binding that came up during the window).
	Before *uint64
	After  uint64
}

// txRings returns the userspace backend's per-binding TX and completion
// rings over the window, or its pending_tx total when the report has no
// per-binding rows.
func (d *deltas) txRings() []ringWindow {
	before := map[[2]string]dataplane.Resource{}
	for _, r := range d.in.Before.Report.Resources {
		before[[2]string{r.Name, r.Scope}] = r
	}
	var out, total []ringWindow
	for _, r := range d.in.After.Report.Resources {
		isRing := r.Detail && (r.Name == "tx_ring" || r.Name == "completion_ring")
		isTotal := !r.Detail && r.Name == "pending_tx"
		if (!isRing && !isTotal) || r.Used == nil || r.Capacity == 0 {
			continue
		}
		rw := ringWindow{Name: r.Name, Scope: r.Scope, Capacity: r.Capacity, After: *r.Used}
		if b, ok := before[[2]string{r.Name, r.Scope}]; ok && b.Used != nil && b.Capacity == r.Capacity {
			v := *b.Used
			rw.Before = &v
		}
		if isRing {
			out = append(out, rw)
		} else {
			total = append(total, rw)
		}
	}
	if len(out) == 0 {
		return total
	}
	return out
}

// judgeTXRing decides whether a TX-side ring shows backpressure over the
// window. What matters is growth, not a level: a ring that is full at one
// instant and drains is busy, not blocked.
//
//   - TX (tx_ring, pending_tx): grew by at least a tenth of its capacity
//     from the first to the last snapshot: suspect; grew and ends at or
//     above the warning level: failing (it will overflow). No growth but
//     at or above the warning level at both ends: suspect (not draining).
//   - completion_ring: holding completions at both ends, not fewer at the
//     end, at least a tenth of its capacity: completions are not reaped,
//     suspect; failing when at or above the warning level.
//   - A ring absent from the first snapshot is judged by its level only
//     (suspect at or above the warning level).
//
// It returns OK with no figure when none applies.
func judgeTXRing(rw ringWindow, th dataplane.Thresholds, window time.Duration) (Verdict, string) {
	level := func(v uint64) dataplane.Level {
		return th.Level(dataplane.Resource{Capacity: rw.Capacity, Used: &v})
	}
	pct := func(v uint64) float64 { return float64(v) * 100 / float64(rw.Capacity) }
	bar := max(1, rw.Capacity/10)
	what := "pending TX"
	if rw.Name == "completion_ring" {
		what = "completions not reaped"
	}
	if rw.Before == nil {
		if level(rw.After) >= dataplane.LevelWarning {
			return Suspect, fmt.Sprintf("%s %s %s: %d of %d (%.0f%%) at the end of the window (not in the first snapshot: growth unknown)",
				rw.Name, rw.Scope, what, rw.After, rw.Capacity, pct(rw.After))
		}
		return OK, ""
	}
	b, a := *rw.Before, rw.After
	span := fmt.Sprintf("%d -> %d of %d (%.0f%% -> %.0f%%) over %s", b, a, rw.Capacity, pct(b), pct(a), window.Round(time.Millisecond))
	if rw.Name == "completion_ring" {
		if b > 0 && a >= b && a >= bar {
			if level(a) >= dataplane.LevelWarning {
				return Failing, fmt.Sprintf("%s %s: %s %s: the process does not reap them", rw.Name, rw.Scope, what, span)
			}
			return Suspect, fmt.Sprintf("%s %s: %s %s", rw.Name, rw.Scope, what, span)
		}
		return OK, ""
	}
	switch grew := a > b && a-b >= bar; {
	case grew && level(a) >= dataplane.LevelWarning:
		return Failing, fmt.Sprintf("%s %s: %s grew %s: the egress does not drain", rw.Name, rw.Scope, what, span)
	case grew:
		return Suspect, fmt.Sprintf("%s %s: %s grew %s", rw.Name, rw.Scope, what, span)
	case level(b) >= dataplane.LevelWarning && level(a) >= dataplane.LevelWarning:
		return Suspect, fmt.Sprintf("%s %s: %s stayed high %s: not draining", rw.Name, rw.Scope, what, span)
	}
	return OK, ""
}

// Session-table counters: the session model's names, and those the
// backends count today.
var (
	tableFullCounters = []string{dataplane.CounterSessionTableFull, "dropped_sessions_full", "sessions_refused"}
	earlyDropCounters = []string{dataplane.CounterSessionEarlyDrop}
)

func checkSessions(d *deltas) Check {
	c := Check{ID: "sessions", Question: "Is the session table full or early-dropping?", Verdict: OK}
	var full, early uint64
	var names []string
	for _, n := range tableFullCounters {
		if v := d.delta(n, "global"); v > 0 {
			full = max(full, v) // the counters count the same drops: do not add
			names = append(names, fmt.Sprintf("%s %d", n, v))
		}
	}
	for _, n := range earlyDropCounters {
		early += d.delta(n, "global")
	}
	if full > 0 {
		c.Verdict = Failing
		c.Figures = append(c.Figures, "new flows dropped, table full: "+d.rate(full)+" ("+strings.Join(names, ", ")+")")
		c.Next = "raise tables.sessions, shorten timeouts, or find the flood of new flows (fwctl show sessions)"
	}
	if early > 0 {
		c.Verdict = worst(c.Verdict, Suspect)
		c.Figures = append(c.Figures, "unassured sessions evicted for new flows: "+d.rate(early))
		if c.Next == "" {
			c.Next = "the table is near full: early drop is protecting established flows; raise tables.sessions"
		}
	}
	counted := false
	for _, n := range tableFullCounters {
		if d.has(n) {
			counted = true
		}
	}
	// A table that evicts without counting (an LRU map) still shows in
	// the counters it has: sessions created in the window that neither
	// stayed in the table nor expired were evicted.
	if !counted {
		if ev, fig, ok := d.evicted(); ok && ev > 0 {
			c.Verdict = Failing
			c.Figures = append(c.Figures, fig)
			c.Next = "sessions are evicted to make room for new flows (their replies are then judged as new flows): raise tables.sessions, or find the flood of new flows"
		}
	}
	th := d.in.Thresholds
	for _, r := range d.in.After.Report.Resources {
		if r.Detail || !isSessionRow(r.Name) {
			continue
		}
		u, ok := r.Utilization()
		if !ok {
			continue
		}
		c.Figures = append(c.Figures, fmt.Sprintf("%s: %d of %d (%.1f%%)", r.Name, *r.Used, r.Capacity, u))
		if lv := th.Level(r); lv >= dataplane.LevelWarning {
			c.Verdict = worst(c.Verdict, Suspect)
			if !counted && lv == dataplane.LevelCritical {
				c.Figures = append(c.Figures, "this backend does not count refused or evicted flows: an LRU table at capacity evicts the least recently used session for each new flow, silently")
			}
			if c.Next == "" {
				c.Next = "the session table is filling: raise tables.sessions or find the source of new flows"
			}
		}
	}
	if s := d.in.After.Report.Sessions; s != nil && s.EarlyAging {
		c.Figures = append(c.Figures, "early aging on: unassured timeouts are shortened")
	}
	return c
}

// evicted estimates the sessions that left the table in the window other
// than by expiry, a reload or a clear: created - growth - expired - ended.
// ok is false when the backend does not count creations.
func (d *deltas) evicted() (uint64, string, bool) {
	if !d.has("sessions_created_ipv4") {
		return 0, "", false
	}
	b, a := d.in.Before.Report.Sessions, d.in.After.Report.Sessions
	if b == nil || a == nil {
		return 0, "", false
	}
	created := d.delta("sessions_created_ipv4", "global") + d.delta("sessions_created_ipv6", "global")
	gone := d.delta("sessions_expired", "global") + d.delta("sessions_reaped", "global") +
		d.delta(dataplane.CounterSessionsEndedByPolicy, "global") + d.delta(dataplane.CounterSessionsCleared, "global")
	in := int64(a.Total) - int64(b.Total) + int64(gone)
	ev := int64(created) - in
	// Counters and counts are read a moment apart: a few sessions of
	// slack, and 1 % of the table.
	var capacity uint64
	for _, r := range d.in.After.Report.Resources {
		if !r.Detail && isSessionRow(r.Name) {
			capacity += r.Capacity
		}
	}
	if ev <= max(10, int64(capacity/100)) {
		return 0, "", true
	}
	return uint64(ev), fmt.Sprintf("about %s sessions evicted without being counted: %d created, the table went from %d to %d, %d expired or ended",
		d.rate(uint64(ev)), created, b.Total, a.Total, gone), true
}

func isSessionRow(name string) bool {
	return name == "sessions" || strings.HasPrefix(name, "fw_sessions")
}

func checkMirror(d *deltas) Check {
	c := Check{ID: "mirror", Question: "Is port mirroring shedding clones?", Verdict: OK}
	shed := map[string]uint64{}
	any := false
	for k := range d.after {
		if strings.HasPrefix(k[0], "mirror_") {
			any = true
		}
		if strings.HasPrefix(k[0], "mirror_dropped_") {
			if n := d.delta(k[0], k[1]); n > 0 {
				shed[strings.TrimPrefix(k[0], "mirror_dropped_")+" ("+k[1]+")"] += n
			}
		}
	}
	if !any {
		c.Verdict = NA
		c.Figures = append(c.Figures, "no port mirroring configured")
		return c
	}
	if len(shed) == 0 {
		c.Figures = append(c.Figures, "no clone dropped in the window")
		return c
	}
	c.Verdict = Suspect
	for _, k := range sortedKeys(shed) {
		c.Figures = append(c.Figures, fmt.Sprintf("clones dropped, %s: %s", k, d.rate(shed[k])))
	}
	c.Next = "mirroring is lossy by design and gives way to forwarding; primary_backlog means the ingress is saturated, output_down/tx_full the mirror port"
	return c
}

// expectedDrop are drops a healthy firewall makes: the policy's, and
// traffic addressed to the firewall itself that is not forwarded.
var expectedDrop = map[string]bool{"dropped_policy": true, "dropped_local": true}

func checkDrops(d *deltas) Check {
	c := Check{ID: "drops", Question: "What is dropped, by reason (largest first)?", Verdict: OK}
	type drop struct {
		name string
		n    uint64
	}
	var ds []drop
	for k := range d.after {
		if k[1] != "global" {
			continue
		}
		n := k[0]
		if strings.HasPrefix(n, "mirror_") || !(strings.HasPrefix(n, "dropped_") || strings.HasPrefix(n, "drop_") ||
			strings.HasSuffix(n, "_drops") || n == dataplane.CounterSessionTableFull || n == "tx_ring_full") {
			continue
		}
		if v := d.delta(k[0], k[1]); v > 0 {
			ds = append(ds, drop{n, v})
		}
	}
	slices.SortFunc(ds, func(a, b drop) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.name, b.name)) })
	for _, x := range ds {
		c.Figures = append(c.Figures, fmt.Sprintf("%s: %s", x.name, d.rate(x.n)))
		if !expectedDrop[x.name] {
			c.Verdict = Suspect
		}
	}
	if len(ds) == 0 {
		c.Figures = append(c.Figures, "nothing dropped in the window")
	} else if c.Verdict == Suspect {
		c.Next = "drops other than by policy or to the firewall itself: the checks above name the usual causes; counters in fwctl show system buffers detail"
	}
	return c
}

func checkResources(d *deltas) Check {
	c := Check{ID: "resources", Question: "Is any bounded resource at WARNING or above, or unreadable?", Verdict: OK}
	th := d.in.Thresholds
	for _, r := range d.in.After.Report.Resources {
		if r.Error != "" {
			c.Verdict = worst(c.Verdict, Suspect)
			c.Figures = append(c.Figures, fmt.Sprintf("%s %s: unavailable: %s", r.Name, r.Scope, r.Error))
			continue
		}
		lv := th.Level(r)
		if lv < dataplane.LevelWarning {
			continue
		}
		u, _ := r.Utilization()
		v := Suspect
		if lv == dataplane.LevelCritical {
			v = Failing
		}
		c.Verdict = worst(c.Verdict, v)
		c.Figures = append(c.Figures, fmt.Sprintf("%s %s: %.1f%% (%s)", r.Name, r.Scope, u, lv))
	}
	if c.Verdict == OK {
		c.Figures = append(c.Figures, fmt.Sprintf("all %d rows below the warning threshold", len(d.in.After.Report.Resources)))
	} else {
		c.Next = "fwctl show system buffers detail (and history NAME for the trend)"
	}
	return c
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
