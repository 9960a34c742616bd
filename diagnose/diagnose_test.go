package diagnose

import (
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

var t0 = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

func u(v uint64) *uint64 { return &v }

// pair builds a userspace Input whose counters grew by delta over 2 s.
func pair(mode dataplane.Mode, rows []dataplane.Resource, before, delta map[[2]string]uint64, links [2][]Link) Input {
	mk := func(m map[[2]string]uint64, add map[[2]string]uint64) []dataplane.Counter {
		var out []dataplane.Counter
		for k, v := range m {
			out = append(out, dataplane.Counter{Name: k[0], Scope: k[1], Value: v + add[k]})
		}
		return out
	}
	return Input{
		Managed: []string{"fwc", "fws"},
		Before:  Snapshot{Time: t0, Report: dataplane.ResourceReport{Mode: mode, Resources: rows, Counters: mk(before, nil)}, Links: links[0]},
		After:   Snapshot{Time: t0.Add(2 * time.Second), Report: dataplane.ResourceReport{Mode: mode, Resources: rows, Counters: mk(before, delta)}, Links: links[1]},
	}
}

func healthyLinks(rx uint64) [2][]Link {
	mk := func(n uint64) []Link {
		return []Link{{Name: "lo", Up: true, Carrier: true, Loopback: true, RXPackets: n},
			{Name: "fwc", Up: true, Carrier: true, RXPackets: 100 + n}, {Name: "fws", Up: true, Carrier: true, RXPackets: 100 + n}}
	}
	return [2][]Link{mk(0), mk(rx)}
}

func usRows(fillEmpty uint64) []dataplane.Resource {
	return []dataplane.Resource{
		{Name: "umem_frames", Scope: "global", Capacity: 8192, Used: u(4096)},
		{Name: "sessions", Scope: "global", Capacity: 65536, Used: u(10)},
		{Name: "umem_frames", Scope: "fwc/q0", Detail: true, Capacity: 4096, Used: u(2048)},
		{Name: "umem_frames", Scope: "fws/q0", Detail: true, Capacity: 4096, Used: u(2048)},
		{Name: "fill_ring_empty", Scope: "fwc/q0", Detail: true, Capacity: 2048, Used: u(fillEmpty)},
		{Name: "fill_ring_empty", Scope: "fws/q0", Detail: true, Capacity: 2048, Used: u(0)},
	}
}

func usCounters() map[[2]string]uint64 {
	return map[[2]string]uint64{
		{"forwarded", "global"}: 1000, {"dropped_policy", "global"}: 3, {"dropped_sessions_full", "global"}: 0, {"sessions_refused", "global"}: 0,
		{"shim_redirected", "fwc"}: 500, {"shim_redirected", "fws"}: 500, {"shim_drop_no_socket", "fwc"}: 0, {"shim_drop_heartbeat_stale", "fwc"}: 0,
		{"xdp_rx_fill_ring_empty_descs", "fwc/q0"}: 0, {"xdp_rx_dropped", "fwc/q0"}: 0,
		{"dropped_egress_down", "global"}: 0, {"backpressure_drops", "global"}: 0, {"tx_ring_full", "global"}: 0,
	}
}

func verdicts(r Report) map[string]Verdict {
	out := map[string]Verdict{}
	for _, c := range r.Checks {
		out[c.ID] = c.Verdict
	}
	return out
}

func TestHealthyIsAllOK(t *testing.T) {
	in := pair(dataplane.ModeUserspace, usRows(0), usCounters(),
		map[[2]string]uint64{{"forwarded", "global"}: 200, {"shim_redirected", "fwc"}: 100, {"shim_redirected", "fws"}: 100}, healthyLinks(100))
	r := Run(in)
	if r.Failed() || r.Suspect > 0 {
		for _, c := range r.Checks {
			t.Logf("%s %s %v", c.ID, c.Verdict, c.Figures)
		}
		t.Fatalf("healthy: %d failing, %d suspect", r.Failing, r.Suspect)
	}
	if v := verdicts(r)["mirror"]; v != NA {
		t.Errorf("mirror without mirroring: %s, want n/a", v)
	}
}

func TestEachFaultNamedByItsQuestion(t *testing.T) {
	tests := []struct {
		name   string
		rows   []dataplane.Resource
		delta  map[[2]string]uint64
		links  [2][]Link
		failID string
		figure string
	}{
		{"fill ring not refilled", usRows(2048), map[[2]string]uint64{{"xdp_rx_fill_ring_empty_descs", "fwc/q0"}: 900, {"shim_redirected", "fwc"}: 900},
			healthyLinks(900), "fill", "fwc/q0: fill ring 100% empty"},
		{"egress down", usRows(0), map[[2]string]uint64{{"dropped_egress_down", "global"}: 50, {"shim_redirected", "fwc"}: 50},
			func() [2][]Link { l := healthyLinks(50); l[1][2].Carrier = false; return l }(), "tx", "egress fws: link up but without carrier"},
		{"unmanaged interface", usRows(0), nil,
			func() [2][]Link {
				l := healthyLinks(0)
				l[0] = append(l[0], Link{Name: "fwk", Up: true, Carrier: true, RXPackets: 5})
				l[1] = append(l[1], Link{Name: "fwk", Up: true, Carrier: true, RXPackets: 505})
				return l
			}(), "reach", "fwk (not managed): received 500"},
		{"worker stuck", usRows(0), map[[2]string]uint64{{"shim_drop_heartbeat_stale", "fwc"}: 300, {"shim_redirected", "fwc"}: 10},
			healthyLinks(310), "reach", "fwc: 300 in 2s (150/s) dropped by the shim, a worker's heartbeat was stale"},
		{"session table full", usRows(0), map[[2]string]uint64{{"dropped_sessions_full", "global"}: 136, {"sessions_refused", "global"}: 136},
			healthyLinks(200), "sessions", "new flows dropped, table full: 136"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(pair(dataplane.ModeUserspace, tt.rows, usCounters(), tt.delta, tt.links))
			c, _ := r.Check(tt.failID)
			if c.Verdict != Failing || !strings.Contains(strings.Join(c.Figures, "\n"), tt.figure) || c.Next == "" {
				t.Errorf("%s: %s %q (next %q), want failing with %q and a next step", tt.failID, c.Verdict, c.Figures, c.Next, tt.figure)
			}
			if !r.Failed() {
				t.Error("report not failed")
			}
		})
	}
}

// The eBPF backend's LRU map evicts silently today; the check says so and
// reads the session model's counter once it exists.
func TestSessionsOnEBPF(t *testing.T) {
	rows := []dataplane.Resource{{Name: "fw_sessions_v4", Scope: "global", Capacity: 64, Used: u(64)}}
	r := Run(pair(dataplane.ModeEBPF, rows, map[[2]string]uint64{{"forwarded", "global"}: 1}, nil, healthyLinks(10)))
	c, _ := r.Check("sessions")
	if c.Verdict != Suspect || !strings.Contains(strings.Join(c.Figures, "\n"), "silently") {
		t.Errorf("full LRU without counters: %s %q, want suspect naming the silent eviction", c.Verdict, c.Figures)
	}
	r = Run(pair(dataplane.ModeEBPF, rows, map[[2]string]uint64{{dataplane.CounterSessionTableFull, "global"}: 0},
		map[[2]string]uint64{{dataplane.CounterSessionTableFull, "global"}: 7}, healthyLinks(10)))
	if c, _ := r.Check("sessions"); c.Verdict != Failing {
		t.Errorf("session_table_full growing: %s, want failing", c.Verdict)
	}
	for _, id := range []string{"bindings", "fill"} {
		if c, _ := r.Check(id); c.Verdict != NA {
			t.Errorf("%s on eBPF: %s, want n/a", id, c.Verdict)
		}
	}
}

// TestJudgeTXRing: TX backpressure is judged on growth over the window,
// not on the level at one instant.
func TestJudgeTXRing(t *testing.T) {
	const w = 2 * time.Second
	tests := []struct {
		name       string
		ring       string
		before     *uint64
		after      uint64
		want       Verdict
		wantFigure string
	}{
		{"tx idle", "tx_ring", u(0), 0, OK, ""},
		{"tx small wobble", "tx_ring", u(10), 60, OK, ""}, // below a tenth of 1024
		{"tx high but draining", "tx_ring", u(1000), 100, OK, ""},
		{"tx high at the end only, grew", "tx_ring", u(100), 900, Failing, "pending TX grew 100 -> 900 of 1024 (10% -> 88%) over 2s: the egress does not drain"},
		{"tx growing below warning", "tx_ring", u(100), 400, Suspect, "pending TX grew 100 -> 400 of 1024"},
		{"tx stuck high", "tx_ring", u(900), 900, Suspect, "stayed high 900 -> 900 of 1024"},
		{"tx new binding, high", "tx_ring", nil, 900, Suspect, "growth unknown"},
		{"tx new binding, low", "tx_ring", nil, 100, OK, ""},
		{"completions reaped", "completion_ring", u(300), 0, OK, ""},
		{"completions momentarily held", "completion_ring", u(0), 500, OK, ""},
		{"completions not reaped", "completion_ring", u(200), 300, Suspect, "completions not reaped 200 -> 300 of 1024"},
		{"completions not reaped, ring full", "completion_ring", u(850), 1000, Failing, "the process does not reap them"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, fig := judgeTXRing(ringWindow{Name: tt.ring, Scope: "fws/q0", Capacity: 1024, Before: tt.before, After: tt.after}, dataplane.Thresholds{}, w)
			if v != tt.want || (tt.wantFigure == "") != (fig == "") || !strings.Contains(fig, tt.wantFigure) {
				t.Errorf("verdict %s, figure %q; want %s with %q", v, fig, tt.want, tt.wantFigure)
			}
		})
	}
}

// The tx check reads the rings from both snapshots: a ring that was high
// and drained is ok; one that filled up during the window is failing.
func TestTXCheckJudgesGrowth(t *testing.T) {
	rows := func(tx uint64) []dataplane.Resource {
		return append(usRows(0),
			dataplane.Resource{Name: "tx_ring", Scope: "fws/q0", Detail: true, Capacity: 2048, Used: u(tx)},
			dataplane.Resource{Name: "completion_ring", Scope: "fws/q0", Detail: true, Capacity: 2048, Used: u(0)})
	}
	run := func(before, after uint64) Check {
		in := pair(dataplane.ModeUserspace, rows(before), usCounters(), map[[2]string]uint64{{"shim_redirected", "fwc"}: 100}, healthyLinks(100))
		in.After.Report.Resources = rows(after)
		c, _ := Run(in).Check("tx")
		return c
	}
	if c := run(1900, 10); c.Verdict != OK {
		t.Errorf("draining TX ring: %s %q, want ok", c.Verdict, c.Figures)
	}
	if c := run(10, 1900); c.Verdict != Failing || !strings.Contains(strings.Join(c.Figures, "\n"), "tx_ring fws/q0: pending TX grew 10 -> 1900 of 2048") || c.Next == "" {
		t.Errorf("filling TX ring: %s %q (next %q), want failing naming the growth", c.Verdict, c.Figures, c.Next)
	}
}

// On the eBPF backend the program's verdicts are counted for all
// interfaces together: the reach check compares them in total, says that
// per-interface judged counts do not exist, and judges per interface only
// what exists per interface (the kernel's received packets, and whether
// the program is attached there).
func TestReachOnEBPF(t *testing.T) {
	counters := map[[2]string]uint64{{"forwarded", "global"}: 10, {"dropped_policy", "global"}: 0, {"passed_non_ip", "global"}: 0}
	run := func(ifs []dataplane.InterfaceStatus, delta map[[2]string]uint64) Check {
		in := pair(dataplane.ModeEBPF, nil, counters, delta, healthyLinks(150))
		in.After.Report.Interfaces = ifs
		c, _ := Run(in).Check("reach")
		return c
	}
	both := []dataplane.InterfaceStatus{{Name: "fwc", Attach: dataplane.AttachedXDP}, {Name: "fws", Attach: dataplane.AttachedTC}}
	c := run(both, map[[2]string]uint64{{"forwarded", "global"}: 280, {"dropped_policy", "global"}: 15, {"passed_non_ip", "global"}: 5})
	figs := strings.Join(c.Figures, "\n")
	for _, want := range []string{"fwc: received 150", "fws: received 150", "fwc: program attached (xdp)", "fws: program attached (tc)",
		"the eBPF program judged 300 in 2s (150/s) in total, against 300 received on the managed interfaces",
		"per-interface judged counts: not available"} {
		if !strings.Contains(figs, want) {
			t.Errorf("reach figures lack %q:\n%s", want, figs)
		}
	}
	if c.Verdict != OK {
		t.Errorf("healthy eBPF reach: %s, want ok:\n%s", c.Verdict, figs)
	}

	c = run(both[:1], map[[2]string]uint64{{"forwarded", "global"}: 150})
	if figs := strings.Join(c.Figures, "\n"); c.Verdict != Failing || !strings.Contains(figs, "fws: received 150 in 2s (75/s) that no program judged") ||
		!strings.Contains(c.Next, "not attached to fws") {
		t.Errorf("fws without a program: %s %q (next %q), want failing naming fws", c.Verdict, c.Figures, c.Next)
	}

	c = run(both, nil)
	if c.Verdict != Failing || !strings.Contains(c.Next, "program sees nothing") {
		t.Errorf("program judging nothing: %s (next %q), want failing", c.Verdict, c.Next)
	}
}
