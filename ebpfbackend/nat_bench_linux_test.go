package ebpfbackend

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

// NAT benchmarks (issue 16, "Speed"): established source-NAT forwarding
// against plain forwarding, new translated connections against new plain
// ones, and ResourceStats with a 90 %-held 64 512-port pool.
// scripts/bench-nat-ebpf.sh runs them and prints the table recorded in
// docs/benchmarks.md.

const (
	natSinkPort   = 7777
	natAcceptPort = 9090
)

// natBenchConfig allows UDP to the sink and TCP to the acceptor, ends
// closed TCP sessions after 1 s (a run of short connections neither fills
// the table nor the pool), and, when nat is set, masquerades the client's
// own address (rule "out"); other sources stay untranslated.
func natBenchConfig(l *netlab.Lab, nat bool) *dataplane.Config {
	c := netlabConfig(l)
	c.Policies[1].DestinationPorts[0].First, c.Policies[1].DestinationPorts[0].Last = natSinkPort, natSinkPort
	c.Policies = append(c.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP,
		DestinationPorts: []dataplane.PortRange{{First: natAcceptPort, Last: natAcceptPort}}, Action: dataplane.ActionAllow})
	c.Tables.Sessions = 1 << 17
	c.Timeouts.TCPClosed = dataplane.Duration(time.Second)
	if nat {
		c.NAT = []dataplane.NATRule{{Name: "out", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers",
			Sources: []string{l.ClientAddr4.String() + "/32"}, Masquerade: true}}
	}
	return c
}

// reopenWith closes the lab's backend (whose session table has the
// default size) and starts one with opts running cfg.
func reopenWith(b *testing.B, l *netlab.Lab, be *Backend, opts *Options, cfg *dataplane.Config) *Backend {
	b.Helper()
	if err := be.Close(); err != nil {
		b.Fatal(err)
	}
	o := Options{}
	if opts != nil {
		o = *opts
	}
	o.NetNS = l.Firewall.Path
	nb, err := New(context.Background(), &o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nb.Close() })
	if _, err := nb.Apply(context.Background(), cfg); err != nil {
		b.Fatal(err)
	}
	return nb
}

// BenchmarkNATForwarding: 64-byte UDP frames of one established flow,
// client -> firewall (XDP) -> server, on one backend and one config: a flow
// the masquerade rule translates and one it does not (another source
// address), alternately in quarters so that a change of the machine's load
// meets both alike. Reports both rates at the server and their ratio
// (target >= 0.9).
func BenchmarkNATForwarding(b *testing.B) {
	const perRun = 1 << 22
	l, be, sink := newNetlabSink(b, nil, natSinkPort)
	be = reopenWith(b, l, be, nil, natBenchConfig(l, true))
	frame := func(src netip.Addr) []byte {
		return packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
			Src: netip.AddrPortFrom(src, 40000), Dst: netip.AddrPortFrom(l.ServerAddr4, natSinkPort),
			PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen})
	}
	natFrame, plainFrame := frame(l.ClientAddr4), frame(l.ClientAddr4.Next().Next().Next())
	floodPPS(b, l, sink, natFrame, 1000)
	floodPPS(b, l, sink, plainFrame, 1000)
	if v := counterOf(b, be, dataplane.CounterNATTranslated); v != 1 {
		b.Fatalf("%s = %d after priming one translated and one plain flow, want 1", dataplane.CounterNATTranslated, v)
	}
	var plain, nat float64
	b.ResetTimer()
	for range b.N {
		for q := range 4 {
			first, second := plainFrame, natFrame
			if q%2 == 1 {
				first, second = natFrame, plainFrame
			}
			r1 := floodPPS(b, l, sink, first, perRun/4) / 4
			r2 := floodPPS(b, l, sink, second, perRun/4) / 4
			if q%2 == 1 {
				r1, r2 = r2, r1
			}
			plain += r1
			nat += r2
		}
	}
	b.StopTimer()
	if v := counterOf(b, be, dataplane.CounterNATTranslated); v != 1 {
		b.Fatalf("%s = %d: the flood made new translated sessions", dataplane.CounterNATTranslated, v)
	}
	prog := be.objs.XdpFw
	plainNs := progNsPerRun(b, prog, func() { floodPPS(b, l, sink, plainFrame, perRun/4) })
	natNs := progNsPerRun(b, prog, func() { floodPPS(b, l, sink, natFrame, perRun/4) })
	b.ReportMetric(plainNs, "plain-prog-ns/pkt")
	b.ReportMetric(natNs, "snat-prog-ns/pkt")
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-pps")
	b.ReportMetric(nat/n, "snat-pps")
	b.ReportMetric(nat/plain, "snat/plain")
}

// BenchmarkNATNewConnections: completed TCP handshakes per second from
// real sockets, client -> acceptor on the server, through the same backend
// without and with the masquerade rule, in the order plain, translated,
// translated, plain, 1 s each (target: translated >= 0.7 x plain).
func BenchmarkNATNewConnections(b *testing.B) {
	l, be := newNetlab(b, nil)
	be = reopenWith(b, l, be, nil, natBenchConfig(l, false))
	acc, err := netlab.Accept(context.Background(), l.Server, netip.AddrPortFrom(l.ServerAddr4, natAcceptPort))
	if err != nil {
		b.Fatal(err)
	}
	defer acc.Close()
	plainCfg, natCfg := natBenchConfig(l, false), natBenchConfig(l, true)
	ctx := context.Background()
	run := func(cfg *dataplane.Config) netlab.HandshakeResult {
		if _, err := be.Apply(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		// Start from an empty table (and pool) each time.
		if _, err := be.ClearSessions(ctx, dataplane.SessionFilter{}); err != nil {
			b.Fatal(err)
		}
		res, err := netlab.Handshakes(ctx, l.Client, netip.AddrPortFrom(l.ServerAddr4, natAcceptPort),
			&netlab.HandshakeOptions{Duration: time.Second, Close: netlab.CloseRST})
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	run(plainCfg) // warm up
	var plain, nat float64
	var failed int
	b.ResetTimer()
	for range b.N {
		for _, cfg := range []*dataplane.Config{plainCfg, natCfg, natCfg, plainCfg} {
			r := run(cfg)
			if cfg == natCfg {
				nat += r.Rate / 2
			} else {
				plain += r.Rate / 2
			}
			failed += r.Failed
		}
	}
	b.StopTimer()
	if v := counterOf(b, be, dataplane.CounterNATTranslated); v == 0 {
		b.Fatal("no connection was translated")
	}
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-conn/s")
	b.ReportMetric(nat/n, "snat-conn/s")
	b.ReportMetric(nat/plain, "snat/plain")
	b.ReportMetric(float64(failed), "failed")
}

// BenchmarkResourceStatsNATPool: a whole ResourceStats of the backend
// without NAT, and with a source-NAT pool of one address and the default
// 64 512 ports of which 90 % are held by real flows (a flood of that many
// UDP flows through the firewall), whose rows (aggregate and per address)
// the report then carries.
func BenchmarkResourceStatsNATPool(b *testing.B) {
	l, be, sink := newNetlabSink(b, nil, natSinkPort)
	ctx := context.Background()
	cfg := natBenchConfig(l, false)
	cfg.Timeouts.UDPUnreplied = dataplane.Duration(time.Hour)
	be = reopenWith(b, l, be, &Options{SessionSweepInterval: -1}, cfg)
	pool := netip.MustParseAddr("198.51.100.7")
	natCfg := cfg.Clone()
	natCfg.NAT = []dataplane.NATRule{{Name: "pool", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Pool: []string{pool.String()}}}
	const ports = 65535 - 1024 + 1
	const held = ports * 9 / 10
	report := func(b *testing.B) dataplane.ResourceReport {
		var rep dataplane.ResourceReport
		var err error
		for b.Loop() {
			if rep, err = be.ResourceStats(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/report")
		b.ReportMetric(float64(len(rep.Resources)), "rows")
		return rep
	}
	b.Run("no-nat", func(b *testing.B) {
		if _, err := be.Apply(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		report(b)
	})
	b.Run("pool-64512-ports-90%", func(b *testing.B) {
		if _, err := be.Apply(ctx, natCfg); err != nil {
			b.Fatal(err)
		}
		if row := poolRow(b, be, "pool"); row.Used == nil || *row.Used < held {
			f, err := l.ClientFlood(netlab.FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, natSinkPort),
				SrcPort: 2000, Flows: netlab.FloodFlows{Ports: held}, Count: held})
			if err != nil {
				b.Fatal(err)
			}
			before, _, _ := sink.Read()
			if _, err := f.Run(ctx); err != nil {
				b.Fatal(err)
			}
			// Poll until the pool holds every flow that reached the server.
			deadline := time.Now().Add(10 * time.Second)
			for {
				after, _, _ := sink.Read()
				row := poolRow(b, be, "pool")
				if row.Used != nil && *row.Used == after-before && after-before >= held*95/100 {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("pool row %+v after a flood of %d flows (%d reached the server)", row, held, after-before)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		rep := report(b)
		row, _ := rep.Find(dataplane.ResourceNATPool, "pool")
		b.ReportMetric(float64(*row.Used)*100/float64(row.Capacity), "pool-%")
	})
}
