package userspacebackend

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
// ones, and ResourceStats with a large pool. scripts/bench-nat.sh runs
// them and prints the table recorded in docs/benchmarks.md.

// natBenchConfig is sinkConfig with TCP to the acceptor allowed, closed
// sessions gone after 1 s (so that a run of short connections does not
// fill the table or the pool), a table for them, and, when nat is set,
// the client's own address masqueraded (rule "out"); other sources (the
// plain flows of BenchmarkNATForwarding) are not translated.
func natBenchConfig(l *netlab.Lab, nat bool) *dataplane.Config {
	c := sinkConfig(l)
	c.Policies = append(c.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP,
		DestinationPorts: []dataplane.PortRange{{First: acceptPort, Last: acceptPort}}, Action: dataplane.ActionAllow})
	c.Tables.Sessions = 1 << 18
	c.Timeouts.TCPClosed = dataplane.Duration(time.Second)
	if nat {
		c.NAT = []dataplane.NATRule{{Name: "out", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers",
			Sources: []string{l.ClientAddr4.String() + "/32"}, Masquerade: true}}
	}
	return c
}

const acceptPort = 9090

// BenchmarkNATForwarding: 64-byte UDP frames of one established flow,
// client -> server, in one run on one backend and one config: a flow the
// masquerade rule translates and one it does not (another source
// address), alternately. Reports both rates at the server and their
// ratio (target >= 0.9).
func BenchmarkNATForwarding(b *testing.B) {
	const perRun = 1 << 22
	e := newLabEnv(b, sinkPort)
	l := e.l
	be := newBackend(b, e, nil, natBenchConfig(l, true))
	natFrame := floodFrame(l, 40000)
	plainFrame := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4.Next().Next().Next(), 40000), Dst: netip.AddrPortFrom(l.ServerAddr4, sinkPort),
		PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen})
	floodPPS(b, e, natFrame, 1000)
	floodPPS(b, e, plainFrame, 1000)
	if v := counter(b, be, dataplane.CounterNATTranslated); v != 1 {
		b.Fatalf("%s = %d after priming one translated and one plain flow, want 1", dataplane.CounterNATTranslated, v)
	}
	// Interleaved in quarters, order alternating, so that a change of the
	// machine's load during a run meets both flows alike.
	var plain, nat float64
	b.ResetTimer()
	for range b.N {
		for q := range 4 {
			if q%2 == 0 {
				plain += floodPPS(b, e, plainFrame, perRun/4) / 4
				nat += floodPPS(b, e, natFrame, perRun/4) / 4
			} else {
				nat += floodPPS(b, e, natFrame, perRun/4) / 4
				plain += floodPPS(b, e, plainFrame, perRun/4) / 4
			}
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-pps")
	b.ReportMetric(nat/n, "snat-pps")
	b.ReportMetric(nat/plain, "snat/plain")
}

// BenchmarkNATNewConnections: completed TCP handshakes per second from
// real sockets (16 in flight, each connection reset at once), client ->
// acceptor on the server, through the same backend without and with the
// masquerade rule, alternately, 1 s each, twice (target: translated >=
// 0.7 x plain).
func BenchmarkNATNewConnections(b *testing.B) {
	e := newLabEnv(b, sinkPort)
	l := e.l
	acc, err := netlab.Accept(context.Background(), l.Server, netip.AddrPortFrom(l.ServerAddr4, acceptPort))
	if err != nil {
		b.Fatal(err)
	}
	defer acc.Close()
	plainCfg, natCfg := natBenchConfig(l, false), natBenchConfig(l, true)
	be := newBackend(b, e, nil, plainCfg)
	ctx := context.Background()
	run := func(cfg *dataplane.Config) netlab.HandshakeResult {
		if _, err := be.Apply(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		// Start from an empty table (and pool) each time.
		if _, err := be.ClearSessions(ctx, dataplane.SessionFilter{}); err != nil {
			b.Fatal(err)
		}
		res, err := netlab.Handshakes(ctx, l.Client, netip.AddrPortFrom(l.ServerAddr4, acceptPort),
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
		// plain, translated, translated, plain: a change of the machine's
		// load meets both alike.
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
	if v := counter(b, be, dataplane.CounterNATTranslated); v == 0 {
		b.Fatal("no connection was translated")
	}
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-conn/s")
	b.ReportMetric(nat/n, "snat-conn/s")
	b.ReportMetric(nat/plain, "snat/plain")
	b.ReportMetric(float64(failed), "failed")
}

// BenchmarkResourceStatsNATPool: a full report (ResourceStats and the
// reused ResourceStatsInto) of the statsLab backend, without NAT and with
// a source-NAT pool of one address and the default 64 512 ports, 90 %
// held, whose rows (aggregate and per address) the report then carries.
func BenchmarkResourceStatsNATPool(b *testing.B) {
	e, be := statsLab(b)
	ctx := context.Background()
	cfg := sinkConfig(e.l)
	cfg.Userspace.SessionShards = 64
	pool := netip.MustParseAddr("198.51.100.7")
	natCfg := cfg.Clone()
	natCfg.NAT = []dataplane.NATRule{{Name: "pool", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Pool: []string{pool.String()}}}
	for _, withNAT := range []bool{false, true} {
		name := "no-nat"
		c := cfg
		if withNAT {
			name, c = "pool-64512-ports-90%", natCfg
		}
		if _, err := be.Apply(ctx, c); err != nil {
			b.Fatal(err)
		}
		if withNAT {
			// Held as sessions hold them: through the pool's allocator.
			p := be.nat.allocator(pool.As4())
			r := dataplane.DefaultNATPorts
			for range int(float64(int(r.Last)-int(r.First)+1) * 0.9) {
				if _, ok := p.Take(r.First, r.Last, 0); !ok {
					b.Fatal("pool exhausted while filling")
				}
			}
			row, ok := report(b, be).Find(dataplane.ResourceNATPool, "pool")
			if !ok || row.Capacity != 64512 || *row.Used != 58060 {
				b.Fatalf("pool row %+v, want 58060 of 64512", row)
			}
		}
		for _, reuse := range []bool{false, true} {
			sub := name + "/fresh"
			if reuse {
				sub = name + "/reused"
			}
			b.Run(sub, func(b *testing.B) {
				var rep dataplane.ResourceReport
				for b.Loop() {
					var err error
					if reuse {
						err = be.ResourceStatsInto(ctx, &rep)
					} else {
						rep, err = be.ResourceStats(ctx)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e3/float64(b.N), "µs/report")
				b.ReportMetric(float64(len(rep.Resources)), "rows")
			})
		}
	}
}

// BenchmarkClassifyNAT is BenchmarkClassifyPlain for a masqueraded flow
// and, in the same run, an untranslated one: the initiator's packets
// (rewritten to the translated tuple) and the responder's replies
// (found by the translated tuple, rewritten back), per packet, no I/O.
func BenchmarkClassifyNAT(b *testing.B) {
	e := newLabEnv(b, sinkPort)
	l := e.l
	be := newBackend(b, e, nil, natBenchConfig(l, true))
	snap := be.snap.Load()
	client, server := snap.port(l.FwClientIndex), snap.port(l.FwServerIndex)
	w := newWorker(client.txq[0])
	natFrame := floodFrame(l, 40000)
	plainFrame := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4.Next().Next().Next(), 40000), Dst: netip.AddrPortFrom(l.ServerAddr4, sinkPort),
		PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen})
	buf := make([]byte, len(natFrame))
	var i int
	var now int64
	classify := func(in *portView, frame []byte) {
		// The clock once per 64 frames, as a worker reads it once per batch.
		if i++; i&63 == 1 {
			now = be.now()
		}
		copy(buf, frame)
		if _, ok := w.classify(snap, be.epoch.Load(), in, buf, now); !ok {
			b.Fatal("the frame was not forwarded")
		}
	}
	classify(client, natFrame)
	list, _, err := be.Sessions(context.Background(), 0)
	if err != nil || len(list) != 1 || list[0].TranslatedSource == "" {
		b.Fatalf("sessions after the first packet: %+v, %v", list, err)
	}
	ts := netip.MustParseAddrPort(list[0].TranslatedSource)
	reply := packet.UDP(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC,
		Src: netip.AddrPortFrom(l.ServerAddr4, sinkPort), Dst: ts,
		PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen})
	// The three kinds interleaved in blocks of 4096 packets, each block
	// timed, so that a change of the machine's load meets them alike.
	kinds := []struct {
		in    *portView
		frame []byte
		ns    time.Duration
	}{{client, plainFrame, 0}, {client, natFrame, 0}, {server, reply, 0}}
	for k := range kinds {
		classify(kinds[k].in, kinds[k].frame) // the flow cache entries
	}
	const block = 4096
	b.ResetTimer()
	for range b.N {
		for k := range kinds {
			start := time.Now()
			for range block {
				classify(kinds[k].in, kinds[k].frame)
			}
			kinds[k].ns += time.Since(start)
		}
	}
	b.StopTimer()
	per := func(k int) float64 { return float64(kinds[k].ns.Nanoseconds()) / float64(b.N*block) }
	b.ReportMetric(per(0), "plain-ns/packet")
	b.ReportMetric(per(1), "snat-initiator-ns/packet")
	b.ReportMetric(per(2), "snat-reply-ns/packet")
	b.ReportMetric(per(0)/per(1), "plain/initiator")
	b.ReportMetric(per(0)/per(2), "plain/reply")
}
