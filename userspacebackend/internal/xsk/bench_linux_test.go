//go:build linux

package xsk

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// BenchmarkRX receives b.N frames from a live-frames flood in a busy loop,
// returning each batch to the fill ring at once: the receive ceiling a
// busy-looping AF_XDP socket reaches on this kernel.
func BenchmarkRX(b *testing.B) {
	f := newFixture(b)
	bd := f.open(b, &Options{Shim: f.shim})
	frame := f.udpFrame(false, 0, 5003)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	floodDone := make(chan netlab.FloodResult, 1)
	go func() {
		res, _ := netlab.Flood{NS: f.l.Client, Iface: f.l.ClientIf, Frame: frame, Count: 1 << 40}.Run(ctx)
		floodDone <- res
	}()
	batch := make([]Desc, 64)
	// Warm up: wait for the first frames so the flood's start-up is not timed.
	for got := 0; got < 1000; {
		n, _ := bd.Receive(batch)
		_ = bd.Release(batch[:n])
		got += n
	}
	s0, _ := bd.Stats()
	b.ResetTimer()
	start := time.Now()
	for got := 0; got < b.N; {
		n, err := bd.Receive(batch)
		if err != nil {
			b.Fatal(err)
		}
		if err := bd.Release(batch[:n]); err != nil {
			b.Fatal(err)
		}
		got += n
	}
	el := time.Since(start)
	b.StopTimer()
	s1, _ := bd.Stats()
	cancel()
	res := <-floodDone
	b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpps")
	drops := (s1.Kernel.RXDropped + s1.Kernel.RXRingFull) - (s0.Kernel.RXDropped + s0.Kernel.RXRingFull)
	b.ReportMetric(float64(drops)/float64(uint64(b.N)+drops), "drop-ratio")
	b.ReportMetric(res.PPS/1e6, "offered-Mpps")
}

// BenchmarkTX transmits b.N minimum-size frames out of the veth in copy
// mode, counting them at the peer.
func BenchmarkTX(b *testing.B) {
	f := newFixture(b)
	const port = 7200
	cnt, err := netlab.AttachCounter(f.l.Client, f.l.ClientIf, &netlab.CounterOptions{Proto: packet.ProtoUDP, DstPort: port, Drop: true})
	if err != nil {
		b.Fatal(err)
	}
	defer cnt.Close()
	bd := f.open(b, nil)
	frame := packet.UDP(packet.Spec{SrcMAC: f.l.FwClientMAC, DstMAC: f.l.ClientMAC,
		Src: netip.AddrPortFrom(f.l.FwClientAddr4, 1), Dst: netip.AddrPortFrom(f.l.ClientAddr4, port), PayloadLen: 18})
	b.ResetTimer()
	start := time.Now()
	sendAll(b, bd, frame, b.N)
	el := time.Since(start)
	b.StopTimer()
	waitCount(b, cnt, uint64(b.N))
	b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpps")
	s, _ := bd.Stats()
	b.ReportMetric(float64(s.Kicks)/float64(b.N), "kicks/frame")
}

// BenchmarkShimTransitVerdict measures the shim's own time for a transit
// frame on a served queue (ready flag set, heartbeat fresh), with the
// heartbeat check (an hour's limit, so that it stays fresh for the whole
// run; the cost does not depend on the limit) and without it (limit 0): the
// kernel's BPF_PROG_TEST_RUN timing per run, so the difference is the
// check's cost per frame (a map lookup, bpf_ktime_get_ns, a compare). The
// redirect finds no socket in this run and drops: that part is the same
// in both.
func BenchmarkShimTransitVerdict(b *testing.B) {
	for _, c := range []struct {
		name  string
		limit time.Duration
	}{{"heartbeat-check", time.Hour}, {"no-check", 0}} { // a run lasts longer than the default limit: no beats meanwhile
		b.Run(c.name, func(b *testing.B) {
			testutil.Privileged(b, testutil.NeedBPF)
			s, err := loadShimObjects(0, ShimOptions{MaxQueues: 64, HeartbeatLimit: c.limit})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { s.unmap(); s.objs.Close() }()
			if err := s.objs.Ready.Update(uint32(0), uint32(1), 0); err != nil {
				b.Fatal(err)
			}
			frame := packet.UDP(packet.Spec{Src: netip.MustParseAddrPort("10.0.0.1:1000"), Dst: netip.MustParseAddrPort("10.0.1.1:2000"), PayloadLen: 18})
			s.Beat(0)
			_, per, err := s.objs.XskShim.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/frame")
			cnt, _ := s.Counters()
			if c.limit > 0 && cnt.DropHeartbeatStale != 0 {
				b.Errorf("%d frames dropped as stale: the heartbeat written by Beat was not seen", cnt.DropHeartbeatStale)
			}
		})
	}
}
