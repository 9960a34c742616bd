package ebpfbackend

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

// bareRedirect is the baseline: rewrite the MACs and bpf_redirect to one
// ifindex, nothing else. Hand-assembled so the comparison needs no second C
// program.
func bareRedirect(dst, src net.HardwareAddr, ifindex int) (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
	}
	insns = append(insns, rewriteAndRedirect(dst, src, ifindex, 1 /* XDP_DROP */)...)
	return ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns})
}

// rewriteAndRedirect is the tail both hand-assembled forwarders share:
// with R2 = data and R3 = data_end, check the Ethernet header fits, write
// the MACs, bpf_redirect to ifindex; a short frame returns drop.
func rewriteAndRedirect(dst, src net.HardwareAddr, ifindex int, drop int32) asm.Instructions {
	le32 := func(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) }
	le16 := func(b []byte) int16 { return int16(binary.LittleEndian.Uint16(b)) }
	return asm.Instructions{
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
		asm.StoreImm(asm.R2, 0, int64(le32(dst[0:4])), asm.Word),
		asm.StoreImm(asm.R2, 4, int64(le16(dst[4:6])), asm.Half),
		asm.StoreImm(asm.R2, 6, int64(le16(src[0:2])), asm.Half),
		asm.StoreImm(asm.R2, 8, int64(le32(src[2:6])), asm.Word),
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, drop).WithSymbol("drop"),
		asm.Return(),
	}
}

// floodPPS sends count 64-byte frames of one established UDP flow into the
// firewall and returns the rate that arrived at the server.
func floodPPS(tb testing.TB, l *netlab.Lab, sink *netlab.Counter, frame []byte, count uint64) float64 {
	tb.Helper()
	before, _, err := sink.Read()
	if err != nil {
		tb.Fatal(err)
	}
	res, err := netlab.Flood{NS: l.Client, Iface: l.ClientIf, Frame: frame, Count: count}.Run(context.Background())
	if err != nil {
		tb.Fatalf("flood: %v", err)
	}
	// Let the last frames drain through the veth rings.
	time.Sleep(20 * time.Millisecond)
	after, _, err := sink.Read()
	if err != nil {
		tb.Fatal(err)
	}
	return float64(after-before) / res.Elapsed.Seconds()
}

// forwardBench is the lab the XDP forwarding benchmarks share: the
// firewall attached with XDP on both ends, UDP to sinkPort allowed and
// counted (and dropped) at the server, a 64-byte UDP frame from sport to
// it, and use, which swaps the program on the client end's XDP link (the
// firewall's own goes back in cleanup).
func forwardBench(b *testing.B, sinkPort, sport uint16) (l *netlab.Lab, be *Backend, sink *netlab.Counter, frame []byte, use func(*ebpf.Program)) {
	b.Helper()
	l, be, sink = newNetlabSink(b, nil, sinkPort)
	cfg := netlabConfig(l)
	cfg.Policies[1].DestinationPorts[0].First, cfg.Policies[1].DestinationPorts[0].Last = sinkPort, sinkPort
	if _, err := be.Apply(context.Background(), cfg); err != nil {
		b.Fatal(err)
	}
	frame = packet.UDP(packet.Spec{
		SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, sport), Dst: netip.AddrPortFrom(l.ServerAddr4, sinkPort),
		PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen,
	})
	if len(frame) != 64 {
		b.Fatalf("frame is %d bytes", len(frame))
	}
	att, ok := be.attached[l.FwClientIf]
	if !ok || att.link == nil {
		b.Fatalf("no XDP link on %s", l.FwClientIf)
	}
	use = func(p *ebpf.Program) {
		if err := att.link.Update(p); err != nil {
			b.Fatalf("swap the XDP program: %v", err)
		}
	}
	b.Cleanup(func() { att.link.Update(be.objs.XdpFw) })
	return l, be, sink, frame, use
}

// BenchmarkForwarding compares the firewall program with a bare
// bpf_redirect program on the same veth lab: 64-byte UDP frames of an
// established flow, client -> firewall (XDP) -> server. Reported: pps of
// each (frames that reached the server per second of flood), their ratio,
// and each program's own run time per packet.
//
// The two alternate within every iteration, swapped on the backend's own
// XDP link (link.Update): on a shared machine the load drifts over
// seconds, and a firewall run and a bare run side by side see the same.
// The firewall's sessions, maps and flow cache stay in place meanwhile.
func BenchmarkForwarding(b *testing.B) {
	const sinkPort = 7777
	const perRun = 1 << 22
	l, be, sink, frame, use := forwardBench(b, sinkPort, 40000)
	floodPPS(b, l, sink, frame, 1000) // creates the session: the flow is established from here on

	fw := be.objs.XdpFw
	bare, err := bareRedirect(l.ServerMAC, l.FwServerMAC, l.FwServerIndex)
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Close()
	defer use(fw)

	var fwPPS, barePPS float64
	hits0 := counterOf(b, be, "session_hits")
	b.ResetTimer()
	for range b.N {
		use(fw)
		fwPPS += floodPPS(b, l, sink, frame, perRun)
		use(bare)
		barePPS += floodPPS(b, l, sink, frame, perRun)
	}
	b.StopTimer()
	use(fw)
	if hits := counterOf(b, be, "session_hits") - hits0; hits < uint64(b.N)*perRun/2 {
		b.Fatalf("only %d session hits: the firewall did not forward the flood", hits)
	}
	fwNs := progNsPerRun(b, fw, func() { floodPPS(b, l, sink, frame, perRun) })
	use(bare)
	bareNs := progNsPerRun(b, bare, func() { floodPPS(b, l, sink, frame, perRun) })
	fwPPS /= float64(b.N)
	barePPS /= float64(b.N)
	b.ReportMetric(fwPPS, "fw-pps")
	b.ReportMetric(barePPS, "bare-pps")
	b.ReportMetric(fwPPS/barePPS, "fw/bare")
	b.ReportMetric(fwNs, "fw-prog-ns/pkt")
	b.ReportMetric(bareNs, "bare-prog-ns/pkt")
}

// progNsPerRun measures the program's own average run time with the
// kernel's BPF run-time statistics (programNs), enabled only around fn:
// collecting them costs two clock reads per run, so the pps figures are
// taken without.
func progNsPerRun(tb testing.TB, prog *ebpf.Program, fn func()) float64 {
	tb.Helper()
	ns, err := programNs(prog, fn)
	if err != nil {
		tb.Logf("no program run time: %v", err)
	}
	return ns
}

func counterOf(tb testing.TB, b *Backend, name string) uint64 {
	rep, err := b.ResourceStats(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	v, _ := rep.Counter(name, "global")
	return v
}
