//go:build linux

package xsk

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
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
