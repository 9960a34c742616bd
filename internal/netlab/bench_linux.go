//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// Ports of the baseline benchmarks: a dataplane under [BenchBaselines]
// must let the client open TCP connections to BenchTCPPort (iperf3) and
// send UDP to BenchUDPPort on the server, both families, and nothing more
// is needed.
const (
	BenchTCPPort uint16 = 5201
	BenchUDPPort uint16 = 7099
)

// BenchDataplane is one column of the baseline table: a dataplane that
// forwards between the lab's client and server through its firewall
// namespace.
type BenchDataplane struct {
	// Name is the column's name, e.g. "kernel", "nftables", "ebpf-xdp".
	Name string
	// Start starts the dataplane on l and returns what stops it; nil
	// means plain kernel forwarding (the lab's own).
	Start func(ctx context.Context, l *Lab) (stop func() error, err error)
}

// KernelForwarding is the baseline without any firewall: the firewall
// namespace's own IP forwarding.
func KernelForwarding() BenchDataplane { return BenchDataplane{Name: "kernel"} }

// NftablesConntrack is the baseline a user would pick instead of fwplane:
// nftables with conntrack in the firewall namespace (see
// Lab.NftablesRuleset), allowing what the benchmarks need.
func NftablesConntrack() BenchDataplane {
	return BenchDataplane{Name: "nftables", Start: func(_ context.Context, l *Lab) (func() error, error) {
		return l.InstallNftables(&NftablesOptions{Allow: []NftAllow{
			{Proto: packet.ProtoTCP, Ports: []uint16{BenchTCPPort}},
			{Proto: packet.ProtoUDP, Ports: []uint16{BenchUDPPort}},
		}})
	}}
}

// BenchSettings are the veth settings the baselines run on.
var BenchSettings = []struct {
	Name string
	Opts Options
}{
	{"lab", Options{}},
	{"defaults", Options{KernelVethDefaults: true}},
}

// BenchFlows is the number of distinct flows of udp-64-64k.
const BenchFlows = 64 << 10

// Measurement lengths of one benchmark iteration.
const (
	BenchTCPTime   = 3 * time.Second
	BenchFloodTime = 2 * time.Second
)

// BenchBaselines measures each dataplane on every veth setting with the
// same traffic, as sub-benchmarks named dp=<name>/veth=<setting>/<metric>:
//
//	tcp-1, tcp-4  iperf3 TCP bulk, 1 and 4 streams, BenchTCPTime each
//	              (metric Gbit/s, from iperf3's receiver side)
//	udp-64        64-byte UDP frames of one flow from the live-frames
//	              generator for BenchFloodTime, counted at the server
//	              (metric Mpps forwarded; sent-Mpps is what was offered)
//	udp-64-64k    the same, the frames spread over BenchFlows distinct
//	              flows (source ports and addresses)
//	conn          TCP connections made and reset by the client (real
//	              sockets, 16 in flight), for BenchFloodTime (metric
//	              conn/s completed; failed-conn/s beside it)
//
// Every dataplane gets a fresh lab per setting. On kernel-default veths
// the generator's frames need NAPI on the firewall's client-facing end
// (see the package doc): when the dataplane attached no XDP program there,
// udp-64 turns GRO on at that one end for its measurement (the TCP
// metrics run with the kernel's defaults untouched). scripts/
// bench-baselines.sh prints the results as one table.
func BenchBaselines(b *testing.B, dps ...BenchDataplane) {
	for _, dp := range dps {
		b.Run("dp="+dp.Name, func(b *testing.B) {
			for _, s := range BenchSettings {
				b.Run("veth="+s.Name, func(b *testing.B) {
					benchSetting(b, dp, s.Opts)
				})
			}
		})
	}
}

func benchSetting(b *testing.B, dp BenchDataplane, opts Options) {
	l := NewT(b, &opts)
	testutil.Privileged(b, testutil.NeedBPF)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		b.Fatal(err)
	}
	if dp.Start != nil {
		stop, err := dp.Start(ctx, l)
		if err != nil {
			b.Fatalf("start %s: %v", dp.Name, err)
		}
		b.Cleanup(func() {
			if err := stop(); err != nil {
				b.Errorf("stop %s: %v", dp.Name, err)
			}
		})
	}
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("tcp-%d", streams), func(b *testing.B) {
			var gbps float64
			for range b.N {
				res, err := IPerf3(ctx, l.Client, l.Server, l.ServerAddr4, &IPerf3Options{Streams: streams, Duration: BenchTCPTime, Port: BenchTCPPort})
				if err != nil {
					b.Fatal(err)
				}
				gbps += res.Gbps
			}
			b.ReportMetric(gbps/float64(b.N), "Gbit/s")
		})
	}
	for _, m := range []struct {
		name  string
		flows FloodFlows
	}{{"udp-64", FloodFlows{}}, {"udp-64-64k", FloodFlows{Ports: BenchFlows / 4, Addrs: 4}}} {
		b.Run(m.name, func(b *testing.B) {
			benchUDP(b, l, dp, opts, m.flows)
		})
	}
	b.Run("conn", func(b *testing.B) {
		dst := netip.AddrPortFrom(l.ServerAddr4, BenchTCPPort)
		a, err := Accept(ctx, l.Server, dst)
		if err != nil {
			b.Fatal(err)
		}
		defer a.Close()
		var done, failed int
		var elapsed time.Duration
		for range b.N {
			res, err := Handshakes(ctx, l.Client, dst, &HandshakeOptions{Duration: BenchFloodTime, Close: CloseRST})
			if err != nil {
				b.Fatal(err)
			}
			done += res.Completed
			failed += res.Failed
			elapsed += res.Elapsed
		}
		if done == 0 {
			b.Fatalf("%s: no connection completed (%d failed)", dp.Name, failed)
		}
		b.ReportMetric(float64(done)/elapsed.Seconds(), "conn/s")
		b.ReportMetric(float64(failed)/elapsed.Seconds(), "failed-conn/s")
	})
}

// benchUDP floods 64-byte UDP frames (of flows distinct flows) from the
// client for BenchFloodTime per iteration and counts them at the server.
func benchUDP(b *testing.B, l *Lab, dp BenchDataplane, opts Options, flows FloodFlows) {
	ctx := context.Background()
	if opts.KernelVethDefaults {
		restore, err := EnsureNAPI(l.Firewall, l.FwClientIf)
		if err != nil {
			b.Fatal(err)
		}
		defer restore()
	}
	cnt, err := AttachCounter(l.Server, l.ServerIf, &CounterOptions{Proto: packet.ProtoUDP, DstPort: BenchUDPPort, Drop: true})
	if err != nil {
		b.Fatal(err)
	}
	defer cnt.Close()
	f, err := l.ClientFlood(FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, BenchUDPPort), Flows: flows, Count: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	var got, sent uint64
	var elapsed time.Duration
	for range b.N {
		before, _, err := cnt.Read()
		if err != nil {
			b.Fatal(err)
		}
		fctx, cancel := context.WithTimeout(ctx, BenchFloodTime)
		res, err := f.Run(fctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			b.Fatal(err)
		}
		// Frames still in flight land within microseconds: wait until
		// the count stops moving.
		after, err := settle(cnt)
		if err != nil {
			b.Fatal(err)
		}
		got += after - before
		sent += res.Sent
		elapsed += res.Elapsed
	}
	if got == 0 {
		b.Fatalf("%s forwarded none of %d frames", dp.Name, sent)
	}
	b.ReportMetric(float64(got)/elapsed.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(sent)/elapsed.Seconds()/1e6, "sent-Mpps")
}

// settle reads c until two reads 20 ms apart agree (at most a second).
func settle(c *Counter) (uint64, error) {
	last, _, err := c.Read()
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		n, _, err := c.Read()
		if err != nil || n == last {
			return n, err
		}
		last = n
	}
	return last, err
}

// EnsureNAPI makes sure iface in ns runs NAPI, which the live-frames
// generator's frames (and XDP redirects into its peer) need to be
// received: it does when an XDP program is attached or GRO is on;
// otherwise EnsureNAPI turns GRO on and returns what turns it off again.
// On kernel-default veths with a TC dataplane, the generator needs it.
func EnsureNAPI(ns *NS, iface string) (restore func(), err error) {
	napi, err := RunsNAPI(ns, iface)
	if err != nil || napi {
		return func() {}, err
	}
	if err := ns.Do(func() error { return setGRO(iface, true) }); err != nil {
		return nil, err
	}
	return func() { ns.Do(func() error { return setGRO(iface, false) }) }, nil
}
