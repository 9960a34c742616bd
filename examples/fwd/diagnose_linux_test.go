package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// diagnoseVia runs `fwctl diagnose --json` against the daemon while
// traffic runs, and returns the report and fwctl's exit status.
func diagnoseVia(t *testing.T, sock string, window time.Duration, traffic func(stop <-chan struct{})) (diagnose.Report, int) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		if traffic != nil {
			traffic(stop)
		}
	}()
	out, errOut, code := fwctl(t, "--socket", sock, "diagnose", "--window", window.String(), "--json")
	close(stop)
	<-done
	var r diagnose.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("fwctl diagnose: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	return r, code
}

func explain(r diagnose.Report) string {
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-8s %-9s %s\n", c.Verdict, c.ID, strings.Join(c.Figures, " | "))
	}
	return b.String()
}

// sendFlows sends one datagram from each of n source ports (fire and
// forget: every one is a new flow) from ns's address src to dst.
func sendFlows(t *testing.T, ns *netlab.NS, src netip.Addr, firstPort uint16, n int, dst netip.AddrPort) {
	t.Helper()
	err := ns.Do(func() error {
		for i := range n {
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, firstPort+uint16(i))), net.UDPAddrFromAddrPort(dst))
			if err != nil {
				return err
			}
			_, err = c.Write([]byte("flow"))
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send flows: %v", err)
	}
}

// trickle sends a datagram every 10 ms on one flow until stop.
func trickle(l *netlab.Lab, ns *netlab.NS, src, dst netip.AddrPort) func(stop <-chan struct{}) {
	return func(stop <-chan struct{}) {
		ns.Do(func() error {
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
			if err != nil {
				return err
			}
			defer c.Close()
			tk := time.NewTicker(10 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return nil
				case <-tk.C:
					c.Write([]byte("trickle"))
				}
			}
		})
	}
}

var backends = []string{"ebpf", "userspace"}

// A healthy lab with traffic: every check ok (or n/a), exit status 0.
func TestIntegrationDiagnoseHealthy(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t, 7000)
			ri, _ := startDaemon(t, l, labConfig(l, 7000), "--backend", be)
			if err := roundTrip(l, 7000); err != nil {
				t.Fatal(err)
			}
			r, code := diagnoseVia(t, ri.socket, time.Second, func(stop <-chan struct{}) {
				for {
					select {
					case <-stop:
						return
					default:
					}
					roundTrip(l, 7000)
					time.Sleep(20 * time.Millisecond)
				}
			})
			if code != 0 || r.Failing+r.Suspect > 0 || string(r.Mode) != be {
				t.Errorf("healthy %s lab: exit %d, %d failing, %d suspect:\n%s", be, code, r.Failing, r.Suspect, explain(r))
			}
			if c, _ := r.Check("reach"); !strings.Contains(strings.Join(c.Figures, " "), "received") {
				t.Errorf("reach check without figures: %+v", c)
			}
			// The eBPF backend has no per-interface verdict counters: the
			// check must say so, and name the program attached per
			// interface, from the real backend's report.
			if c, _ := r.Check("reach"); be == "ebpf" && (!strings.Contains(strings.Join(c.Figures, " "), "per-interface judged counts: not available") ||
				!strings.Contains(strings.Join(c.Figures, " "), l.FwClientIf+": program attached")) {
				t.Errorf("eBPF reach check: %+v, want the attach per interface and per-interface judged counts named unavailable", c)
			}
		})
	}
}

// Traffic arriving on an interface the dataplane does not manage (the
// sink link, left out of the config) is named by the reach question.
func TestIntegrationDiagnoseUnmanagedInterface(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, &netlab.Options{MirrorSink: true})
	ri, _ := startDaemon(t, l, labConfig(l, 7000))
	// The sink sends to the firewall over a link the config leaves out.
	r, code := diagnoseVia(t, ri.socket, time.Second,
		trickle(l, l.Sink, netip.AddrPortFrom(l.SinkAddr4, 5555), netip.AddrPortFrom(l.FwSinkAddr4, 9)))
	c, _ := r.Check("reach")
	if c.Verdict != diagnose.Failing || !strings.Contains(strings.Join(c.Figures, "\n"), l.FwSinkIf+" (not managed)") || code != 3 {
		t.Errorf("unmanaged traffic: exit %d, reach %s, want failing naming %s:\n%s", code, c.Verdict, l.FwSinkIf, explain(r))
	}
}

// An egress whose peer link is down: the userspace backend drops what it
// routes there, and the TX question says so.
func TestIntegrationDiagnoseEgressDown(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t, 7000)
			ri, _ := startDaemon(t, l, labConfig(l, 7000), "--backend", be)
			if err := roundTrip(l, 7000); err != nil {
				t.Fatal(err)
			}
			if err := l.Server.SetLinkUp(l.ServerIf, false); err != nil {
				t.Fatal(err)
			}
			r, code := diagnoseVia(t, ri.socket, time.Second,
				trickle(l, l.Client, netip.AddrPortFrom(l.ClientAddr4, 5556), netip.AddrPortFrom(l.ServerAddr4, 7000)))
			c, _ := r.Check("tx")
			if c.Verdict != diagnose.Failing || !strings.Contains(strings.Join(c.Figures, "\n"), "egress "+l.FwServerIf) || code != 3 {
				t.Errorf("egress down: exit %d, tx %s, want failing naming %s:\n%s", code, c.Verdict, l.FwServerIf, explain(r))
			}
		})
	}
}

// A session table too small for the flows offered: failing on both, from
// the backend's own count of refused flows (session_table_full on the
// eBPF backend's session model, dropped_sessions_full on the userspace
// one). A backend that counted none would be judged by inferred evictions
// (sessions created that neither stayed nor expired): the eBPF backend's
// former LRU maps evicted that way, before they were even full.
func TestIntegrationDiagnoseSessionTableFull(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			l := newLab(t, 7000)
			cfg := labConfig(l, 7000)
			cfg.Tables.Sessions = 256
			cfg.Timeouts.UDP = dataplane.Duration(10 * time.Minute)
			cfg.Timeouts.UDPUnreplied = dataplane.Duration(10 * time.Minute)
			ri, _ := startDaemon(t, l, cfg, "--backend", be)
			dst := netip.AddrPortFrom(l.ServerAddr4, 7000)
			sendFlows(t, l.Client, l.ClientAddr4, 20000, 300, dst)
			r, code := diagnoseVia(t, ri.socket, time.Second, func(stop <-chan struct{}) {
				// New flows keep arriving while the table is full.
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
					sendFlows(t, l.Client, l.ClientAddr4, uint16(30000+i*10), 10, dst)
				}
			})
			c, _ := r.Check("sessions")
			rep, err := ri.dp.ResourceStats(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			figs := strings.Join(c.Figures, "\n")
			want := "table full"
			if _, counted := rep.Counter("dropped_sessions_full", "global"); !counted {
				if _, counted := rep.Counter(dataplane.CounterSessionTableFull, "global"); !counted {
					want = "evicted without being counted"
				}
			}
			if c.Verdict != diagnose.Failing || !strings.Contains(figs, want) || code != 3 {
				t.Errorf("%s, table full: exit %d, sessions %s, want failing with %q:\n%s", be, code, c.Verdict, want, explain(r))
			}
		})
	}
}
