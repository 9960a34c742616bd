//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"

	"github.com/fwplane/fwplane/dataplane"
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

// BenchSessions is the session table size every stateful column of
// [BenchBaselines] is configured with (tables.sessions): the 1 Mi-flow
// row fills half of it, so neither a full table nor early aging (from
// 80 %) touches the established flows it measures.
const BenchSessions = 2 << 20

// ErrNotApplicable marks a column that cannot run on a veth setting (a
// backend refusing the config there, say): [BenchBaselines] skips that
// column's cells with the error as the reason, and the script prints them
// as such. Wrap it with the reason.
var ErrNotApplicable = errors.New("not applicable")

// BenchDataplane is one column of the baseline table: a dataplane that
// forwards between the lab's client and server through its firewall
// namespace.
type BenchDataplane struct {
	// Name is the column's name, e.g. "kernel", "nftables", "ebpf-xdp".
	Name string
	// Start starts the dataplane on l, allowing new flows from the client
	// to BenchTCPPort (TCP) and BenchUDPPort (UDP) on the server and
	// holding up to BenchSessions sessions; nil means plain kernel
	// forwarding (the lab's own). An error wrapping ErrNotApplicable
	// skips the column on this setting.
	Start func(ctx context.Context, l *Lab) (*BenchInstance, error)
	// PeerXDP says the dataplane redirects frames with XDP into the
	// client's and server's veths, which receive them only while they
	// run a native XDP program (see the package doc): the socket rows
	// (tcp-N, conn) then attach pass-through counters there, as a user
	// of XDP on veths must. (They turn GSO off on the firewall's ends,
	// the veth driver's rule for a peer with XDP; the generator rows
	// attach counters at those ends for every column.)
	PeerXDP bool
}

// BenchInstance is a started column.
type BenchInstance struct {
	// Stop stops the dataplane; nil when there is nothing to stop.
	Stop func() error
	// Sessions counts the dataplane's sessions; nil for a stateless
	// column (kernel forwarding).
	Sessions func(ctx context.Context) (uint64, error)
	// Established counts the TCP sessions whose handshake completed;
	// nil for a stateless column.
	Established func(ctx context.Context) (uint64, error)
	// ProgramNs, when set, runs during with the dataplane's program
	// run-time statistics on and returns its average run time per packet
	// (eBPF columns: the kernel's BPF run-time statistics, which cost two
	// clock reads per run, so the pps figures are taken without them).
	ProgramNs func(during func()) (float64, error)
	// Unassured counts the sessions not yet seen both ways, exactly and
	// at once; nil when the column cannot (the flows of a many-flow row
	// are then known to be answered only from a lossless pass).
	Unassured func(ctx context.Context) (uint64, error)
	// ClearSessions ends every session; nil for a stateless column.
	ClearSessions func(ctx context.Context) error
	// Capacity is how many sessions the column can hold when that is
	// fewer than BenchSessions (nftables: the kernel's conntrack limit);
	// rows needing more concurrent flows are skipped. 0: BenchSessions or
	// unbounded.
	Capacity uint64
}

// KernelForwarding is the baseline without any firewall: the firewall
// namespace's own IP forwarding.
func KernelForwarding() BenchDataplane { return BenchDataplane{Name: "kernel"} }

// NftablesConntrack is the baseline a user would pick instead of fwplane:
// nftables with conntrack in the firewall namespace (see
// Lab.NftablesRuleset), allowing what the benchmarks need. Its table is
// the kernel's conntrack table, bounded by net.netfilter.nf_conntrack_max,
// which a namespace can only read (262 144 here): rows that need more
// concurrent flows than that are skipped for it.
func NftablesConntrack() BenchDataplane {
	return BenchDataplane{Name: "nftables", Start: func(_ context.Context, l *Lab) (*BenchInstance, error) {
		limit, err := ConntrackMax(l.Firewall)
		if err != nil {
			return nil, err
		}
		remove, err := l.InstallNftables(&NftablesOptions{Allow: []NftAllow{
			{Proto: packet.ProtoTCP, Ports: []uint16{BenchTCPPort}},
			{Proto: packet.ProtoUDP, Ports: []uint16{BenchUDPPort}},
		}})
		if err != nil {
			return nil, err
		}
		return &BenchInstance{
			Stop:     remove,
			Capacity: limit,
			Sessions: func(context.Context) (uint64, error) { return ConntrackCount(l.Firewall) },
			Established: func(context.Context) (uint64, error) {
				return ConntrackInTCPState(l.Firewall, nl.TCP_CONNTRACK_ESTABLISHED)
			},
			ClearSessions: func(ctx context.Context) error { return ConntrackClear(ctx, l.Firewall) },
		}, nil
	}}
}

// BenchTimeout is the idle timeout of UDP sessions (replied and unreplied)
// in BenchConfig: priming a million flows through a forwarder slower than
// the generator takes longer than the default unreplied timeout (30 s).
const BenchTimeout = 10 * time.Minute

// BenchConfig is the config a fwplane backend's column runs:
// interfaces FwClientIf (zone clients) and FwServerIf (zone servers)
// attached in mode attach, TCP to BenchTCPPort and UDP to BenchUDPPort
// allowed from clients to servers, BenchSessions sessions, UDP sessions
// idle out after BenchTimeout; defaults for everything else.
func BenchConfig(l *Lab, attach dataplane.AttachMode) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "clients", Attach: attach}, {Name: l.FwServerIf, Zone: "servers", Attach: attach}},
		Zones:      []dataplane.Zone{{Name: "clients"}, {Name: "servers"}},
		Policies: []dataplane.Policy{
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: BenchTCPPort, Last: BenchTCPPort}}, Action: dataplane.ActionAllow},
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: BenchUDPPort, Last: BenchUDPPort}}, Action: dataplane.ActionAllow},
		},
		Tables:   dataplane.Tables{Sessions: BenchSessions},
		Timeouts: dataplane.Timeouts{UDP: dataplane.Duration(BenchTimeout), UDPUnreplied: dataplane.Duration(BenchTimeout)},
	}
}

// BenchBackend is the instance of a fwplane dataplane running in a lab:
// Stop closes it, sessions are counted and listed through
// [dataplane.SessionLister] (Established: TCP sessions in state
// established) and cleared through [dataplane.SessionClearer]. With
// liveUnassured, its SessionCounts.Unassured is exact at every call (the
// userspace backend's; the eBPF backend's is its last sweep's).
func BenchBackend(dp dataplane.DataPlane, liveUnassured bool) *BenchInstance {
	inst := &BenchInstance{Stop: dp.Close}
	if sl, ok := dp.(dataplane.SessionLister); ok {
		inst.Sessions = func(ctx context.Context) (uint64, error) {
			_, counts, err := sl.Sessions(ctx, 1)
			return counts.Total, err
		}
		if liveUnassured {
			inst.Unassured = func(ctx context.Context) (uint64, error) {
				_, counts, err := sl.Sessions(ctx, 1)
				return counts.Unassured, err
			}
		}
		inst.Established = func(ctx context.Context) (uint64, error) {
			list, _, err := sl.Sessions(ctx, BenchSessions)
			var n uint64
			for _, s := range list {
				if s.Protocol == "tcp" && s.State == dataplane.StateEstablished {
					n++
				}
			}
			return n, err
		}
	}
	if sc, ok := dp.(dataplane.SessionClearer); ok {
		inst.ClearSessions = func(ctx context.Context) error {
			_, err := sc.ClearSessions(ctx, dataplane.SessionFilter{})
			return err
		}
	}
	return inst
}

// BenchSettings are the veth settings the baselines run on.
var BenchSettings = []struct {
	Name string
	Opts Options
}{
	{"lab", Options{}},
	{"defaults", Options{KernelVethDefaults: true}},
}

// Flow counts of the many-flow rows: source ports x source addresses of
// the client (from ClientAddr4 up; the firewall gets neighbour entries for
// them so that replies are forwarded).
var (
	// BenchFlows64k is udp-64-64k: 65 536 established flows.
	BenchFlows64k = FloodFlows{Ports: 16384, Addrs: 4}
	// BenchFlows1M is udp-64-1m: 1 048 576 established flows.
	BenchFlows1M = FloodFlows{Ports: 16384, Addrs: 64}
	// BenchNewFlows is new-udp, new-syn and tcp-hs: 245 760 new flows
	// per round, below nftables' conntrack limit (262 144) so that no
	// column meets a full table.
	BenchNewFlows = FloodFlows{Ports: 16384, Addrs: 15}
)

// Measurement lengths of one benchmark iteration.
const (
	BenchTCPTime   = 3 * time.Second
	BenchFloodTime = 2 * time.Second
	// BenchNewRounds is how many rounds of BenchNewFlows new flows an
	// iteration of new-udp, new-syn and tcp-hs measures (each round
	// starts from an empty table).
	BenchNewRounds = 3
)

// BenchBaselines measures each dataplane on every veth setting with the
// same traffic, as sub-benchmarks named dp=<name>/veth=<setting>/<row>:
//
//	tcp-1, tcp-4  iperf3 TCP bulk, 1 and 4 streams, BenchTCPTime each
//	              (Gbit/s, from iperf3's receiver side)
//	udp-64        64-byte UDP frames of one flow from the live-frames
//	              generator for BenchFloodTime, counted at the server
//	              (Mpps forwarded; sent-Mpps is what was offered)
//	udp-64-64k    the same over BenchFlows64k established flows: every
//	              flow was sent once and answered once by the server
//	              before (a lossless pass each way, so every session
//	              exists and is replied); new-sessions says how many
//	              sessions the measurement itself created (should be 0)
//	udp-64-1m     the same over BenchFlows1M flows
//	new-udp       first packets: BenchNewRounds rounds, each from an
//	              empty session table, of BenchNewFlows distinct UDP
//	              flows sent once; Msess/s is the sessions the dataplane
//	              holds afterwards per second of flood (stateless kernel
//	              forwarding: new flows forwarded per second)
//	new-syn       the same with TCP SYNs (sessions in state opening)
//	tcp-hs        generated handshakes: per round the SYNs of
//	              BenchNewFlows flows, then the server's SYN-ACKs, then
//	              the client's ACKs, each a flood at full speed; Mhs/s is
//	              the sessions established per second of the three floods
//	conn          TCP connections made by real sockets (16 in flight) to
//	              an accepting server and reset, for BenchFloodTime
//	              (kconn/s completed; failed-kconn/s beside it)
//
// Every dataplane gets a fresh lab per setting. The generator's frames
// need NAPI at the veth ends receiving them (see the package doc): where
// the dataplane attached no XDP program, the UDP and generated-TCP rows
// turn GRO on at the firewall's ends for their measurement (EnsureNAPI;
// the tcp-N and conn rows run with the setting untouched), and counters
// at the client and server ends (XDP) drop what arrives so that neither
// stack answers the generator. scripts/bench-baselines.sh and
// scripts/bench-sessions.sh print the results as tables.
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
	if err := l.AddClientNeighbors(BenchFlows1M); err != nil {
		b.Fatal(err)
	}
	inst := &BenchInstance{}
	if dp.Start != nil {
		var err error
		inst, err = dp.Start(ctx, l)
		if errors.Is(err, ErrNotApplicable) {
			b.Skipf("%s: %v", dp.Name, err)
		}
		if err != nil {
			b.Fatalf("start %s: %v", dp.Name, err)
		}
		b.Cleanup(func() {
			if inst.Stop == nil {
				return
			}
			if err := inst.Stop(); err != nil {
				b.Errorf("stop %s: %v", dp.Name, err)
			}
		})
	}
	r := &benchRows{l: l, dp: dp, inst: inst}
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("tcp-%d", streams), func(b *testing.B) { r.tcp(b, streams) })
	}
	b.Run("udp-64", func(b *testing.B) { r.udp(b, FloodFlows{}) })
	b.Run("udp-64-64k", func(b *testing.B) { r.udp(b, BenchFlows64k) })
	b.Run("udp-64-1m", func(b *testing.B) { r.udp(b, BenchFlows1M) })
	b.Run("new-udp", func(b *testing.B) { r.newFlows(b, packet.ProtoUDP) })
	b.Run("new-syn", func(b *testing.B) { r.newFlows(b, packet.ProtoTCP) })
	b.Run("tcp-hs", func(b *testing.B) { r.handshakes(b) })
	b.Run("conn", func(b *testing.B) { r.conn(b) })
}

// benchRows runs the rows of one column on one lab.
type benchRows struct {
	l    *Lab
	dp   BenchDataplane
	inst *BenchInstance
}

// peerXDP attaches pass-through counters to the client's and server's
// ends for a PeerXDP column, until the row ends.
func (r *benchRows) peerXDP(b *testing.B) {
	if !r.dp.PeerXDP {
		return
	}
	for _, end := range []struct {
		ns    *NS
		iface string
	}{{r.l.Client, r.l.ClientIf}, {r.l.Server, r.l.ServerIf}} {
		c, err := AttachCounter(end.ns, end.iface, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
	}
}

func (r *benchRows) tcp(b *testing.B, streams int) {
	ctx := context.Background()
	r.peerXDP(b)
	var gbps float64
	for range b.N {
		res, err := IPerf3(ctx, r.l.Client, r.l.Server, r.l.ServerAddr4, &IPerf3Options{Streams: streams, Duration: BenchTCPTime, Port: BenchTCPPort})
		if err != nil {
			b.Fatal(err)
		}
		gbps += res.Gbps
	}
	b.ReportMetric(gbps/float64(b.N), "Gbit/s")
}

func (r *benchRows) conn(b *testing.B) {
	ctx := context.Background()
	r.peerXDP(b)
	dst := netip.AddrPortFrom(r.l.ServerAddr4, BenchTCPPort)
	a, err := Accept(ctx, r.l.Server, dst)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	var done, failed int
	var elapsed time.Duration
	for range b.N {
		res, err := Handshakes(ctx, r.l.Client, dst, &HandshakeOptions{Duration: BenchFloodTime, Close: CloseRST})
		if err != nil {
			b.Fatal(err)
		}
		done += res.Completed
		failed += res.Failed
		elapsed += res.Elapsed
	}
	if done == 0 {
		b.Fatalf("%s: no connection completed (%d failed)", r.dp.Name, failed)
	}
	b.ReportMetric(float64(done)/elapsed.Seconds()/1e3, "kconn/s")
	b.ReportMetric(float64(failed)/elapsed.Seconds()/1e3, "failed-kconn/s")
}

// generatorEnds prepares the lab for generated traffic of protocol proto:
// NAPI on the firewall's ends, and counters at the server (frames to
// dport) and at the client (every frame of proto), both dropping what they
// count. The returned function undoes it.
func (r *benchRows) generatorEnds(b *testing.B, proto uint8, dport uint16) (server, client *Counter) {
	l := r.l
	for _, iface := range []string{l.FwClientIf, l.FwServerIf} {
		restore, err := EnsureNAPI(l.Firewall, iface)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(restore)
	}
	var err error
	if server, err = AttachCounter(l.Server, l.ServerIf, &CounterOptions{Proto: proto, DstPort: dport, Drop: true}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { server.Close() })
	if client, err = AttachCounter(l.Client, l.ClientIf, &CounterOptions{Proto: proto, Drop: true}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	return server, client
}

// udp floods 64-byte UDP frames of flows (established first when there
// are many) from the client for BenchFloodTime per iteration and counts
// them at the server.
func (r *benchRows) udp(b *testing.B, flows FloodFlows) {
	ctx := context.Background()
	l := r.l
	n := flows.Count()
	if c := r.inst.Capacity; c != 0 && n > c {
		b.Skipf("%s holds at most %d sessions, fewer than the %d flows of this row", r.dp.Name, c, n)
	}
	srv, cli := r.generatorEnds(b, packet.ProtoUDP, BenchUDPPort)
	spec := FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, BenchUDPPort), Flows: flows, Count: n}
	if n > 1 {
		if r.inst.ClearSessions != nil {
			if err := r.inst.ClearSessions(ctx); err != nil {
				b.Fatal(err)
			}
		}
		// Establish every flow: one lossless pass each way.
		fwd, err := l.ClientFlood(spec)
		if err != nil {
			b.Fatal(err)
		}
		opened := func() (bool, error) {
			if r.inst.Sessions == nil {
				return false, nil
			}
			c, err := r.inst.Sessions(ctx)
			return c >= n, err
		}
		if err := primeFlows(ctx, fwd, srv, n, opened); err != nil {
			b.Fatalf("%s: open %d flows: %v", r.dp.Name, n, err)
		}
		rev, err := l.ReplyFlood(spec)
		if err != nil {
			b.Fatal(err)
		}
		var replied func() (bool, error)
		if r.inst.Unassured != nil {
			replied = func() (bool, error) {
				c, err := r.inst.Unassured(ctx)
				return c == 0, err
			}
		}
		if err := primeFlows(ctx, rev, cli, n, replied); err != nil {
			b.Fatalf("%s: answer %d flows: %v", r.dp.Name, n, err)
		}
	}
	spec.Count = 1 << 40
	f, err := l.ClientFlood(spec)
	if err != nil {
		b.Fatal(err)
	}
	before := r.sessions(b)
	var got, sent uint64
	var elapsed time.Duration
	for range b.N {
		res, delivered := runCounted(b, f, srv, BenchFloodTime)
		got += delivered
		sent += res.Sent
		elapsed += res.Elapsed
	}
	if got == 0 {
		b.Fatalf("%s forwarded none of %d frames", r.dp.Name, sent)
	}
	b.ReportMetric(float64(got)/elapsed.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(sent)/elapsed.Seconds()/1e6, "sent-Mpps")
	if r.inst.Sessions != nil {
		after := r.sessions(b)
		b.ReportMetric(float64(after), "sessions")
		b.ReportMetric(float64(after)-float64(before), "new-sessions")
	}
	if r.inst.ProgramNs != nil {
		ns, err := r.inst.ProgramNs(func() { runCounted(b, f, srv, BenchFloodTime/2) })
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ns, "prog-ns/pkt")
	}
}

// newFlows measures first packets: rounds of BenchNewFlows new flows
// (UDP, or TCP SYNs), each from an empty table.
func (r *benchRows) newFlows(b *testing.B, proto uint8) {
	l := r.l
	port := BenchUDPPort
	if proto == packet.ProtoTCP {
		port = BenchTCPPort
	}
	srv, _ := r.generatorEnds(b, proto, port)
	n := BenchNewFlows.Count()
	f, err := l.ClientFlood(FloodSpec{Proto: proto, Dst: netip.AddrPortFrom(l.ServerAddr4, port), Flows: BenchNewFlows, Count: n})
	if err != nil {
		b.Fatal(err)
	}
	var created, got, sent uint64
	var elapsed time.Duration
	for range b.N {
		for range BenchNewRounds {
			r.clear(b)
			res, delivered := runCounted(b, f, srv, 0)
			got += delivered
			sent += res.Sent
			elapsed += res.Elapsed
			created += r.sessions(b)
		}
	}
	if got == 0 {
		b.Fatalf("%s forwarded none of %d frames", r.dp.Name, sent)
	}
	rate := got
	if r.inst.Sessions != nil {
		rate = created
	}
	b.ReportMetric(float64(rate)/elapsed.Seconds()/1e6, "Msess/s")
	b.ReportMetric(float64(got)/elapsed.Seconds()/1e6, "fwd-Mpps")
	b.ReportMetric(float64(sent)/elapsed.Seconds()/1e6, "sent-Mpps")
	if r.inst.ProgramNs != nil {
		// One more round, with the program's run time measured.
		r.clear(b)
		ns, err := r.inst.ProgramNs(func() { runCounted(b, f, srv, 0) })
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ns, "prog-ns/pkt")
	}
}

// handshakes measures generated three-way handshakes: rounds of SYNs of
// BenchNewFlows flows, the server's SYN-ACKs, the client's ACKs, each from
// an empty table. Sequence numbers are consistent, so conntrack's window
// tracking accepts them.
func (r *benchRows) handshakes(b *testing.B) {
	l := r.l
	srv, cli := r.generatorEnds(b, packet.ProtoTCP, BenchTCPPort)
	n := BenchNewFlows.Count()
	spec := FloodSpec{Proto: packet.ProtoTCP, Dst: netip.AddrPortFrom(l.ServerAddr4, BenchTCPPort), Flows: BenchNewFlows, Count: n}
	syn, err := l.ClientFlood(spec)
	if err != nil {
		b.Fatal(err)
	}
	spec.TCPFlags, spec.TCPSeq, spec.TCPAck = packet.TCPSyn|packet.TCPAck, 1000, 2
	synack, err := l.ReplyFlood(spec)
	if err != nil {
		b.Fatal(err)
	}
	spec.TCPFlags, spec.TCPSeq, spec.TCPAck = packet.TCPAck, 2, 1001
	ack, err := l.ClientFlood(spec)
	if err != nil {
		b.Fatal(err)
	}
	var done uint64
	var elapsed time.Duration
	var steps [3]uint64
	for range b.N {
		for range BenchNewRounds {
			r.clear(b)
			least := n
			for i, step := range []struct {
				f   Flood
				cnt *Counter
			}{{syn, srv}, {synack, cli}, {ack, srv}} {
				res, delivered := runCounted(b, step.f, step.cnt, 0)
				elapsed += res.Elapsed
				steps[i] += delivered
				least = min(least, delivered)
			}
			if r.inst.Established != nil {
				if least, err = r.inst.Established(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			done += least
		}
	}
	if done == 0 {
		b.Fatalf("%s completed no handshake (frames delivered per step: %v)", r.dp.Name, steps)
	}
	b.ReportMetric(float64(done)/elapsed.Seconds()/1e6, "Mhs/s")
	rounds := float64(b.N * BenchNewRounds)
	b.ReportMetric(float64(done)/rounds/float64(n), "completed-fraction")
	for i, name := range []string{"syn", "synack", "ack"} {
		b.ReportMetric(float64(steps[i])/rounds/float64(n), name+"-delivered-fraction")
	}
}

// runCounted runs f (for d, or until its Count when d is 0) and returns
// what it sent and how many frames arrived at cnt meanwhile.
func runCounted(b *testing.B, f Flood, cnt *Counter, d time.Duration) (FloodResult, uint64) {
	before, _, err := cnt.Read()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	res, err := f.Run(ctx)
	if err != nil && !(d > 0 && errors.Is(err, context.DeadlineExceeded)) {
		b.Fatal(err)
	}
	// Frames still in flight land within microseconds (a userspace
	// forwarder's ring within milliseconds): wait until the count stops
	// moving.
	after, err := settle(cnt)
	if err != nil {
		b.Fatal(err)
	}
	return res, after - before
}

// primeFlows sends every flow of f (n flows) once per pass until a pass
// arrives whole at cnt (every flow forwarded) or complete reports that
// every flow made it through over the passes so far. The first pass runs
// at the generator's full speed, which a forwarder inline in the
// generator's softirq (XDP, TC, the kernel's own) forwards whole; a
// forwarder with a receive ring (userspace) loses frames to it whenever its
// worker waits for a CPU, so later passes are paced (Flood.Rate) below the
// rate that arrived, slower after every pass that still lost frames.
func primeFlows(ctx context.Context, f Flood, cnt *Counter, n uint64, complete func() (bool, error)) error {
	const passes = 8
	f.Count = n
	var got uint64
	for range passes {
		before, _, err := cnt.Read()
		if err != nil {
			return err
		}
		res, err := f.Run(ctx)
		if err != nil {
			return err
		}
		after, err := settle(cnt)
		if err != nil {
			return err
		}
		if got = after - before; got == n {
			return nil
		}
		if complete != nil {
			if ok, err := complete(); ok || err != nil {
				return err
			}
		}
		// Bursts of 512 frames fit a 2048-frame ring with room for a few
		// while the worker waits; a few milliseconds per call bound the
		// rate near 150 k frames/s whatever is asked.
		f.Rate, f.Chunk = min(max(float64(got)/res.Elapsed.Seconds()*0.7, 100e3), 1e6), 512
	}
	return fmt.Errorf("%d passes lost frames: the last one delivered %d of %d frames", passes, got, n)
}

func (r *benchRows) sessions(b *testing.B) uint64 {
	if r.inst.Sessions == nil {
		return 0
	}
	c, err := r.inst.Sessions(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// clear empties a stateful column's table and checks it stays empty: a
// forwarder with a receive ring (userspace) may still hold frames of the
// previous round that create sessions after a first clear (at most a
// ring's worth, then counted in the next round).
func (r *benchRows) clear(b *testing.B) {
	if r.inst.ClearSessions == nil {
		return
	}
	// Deleting a quarter million sessions one syscall each takes seconds
	// on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		if err := r.inst.ClearSessions(ctx); err != nil {
			b.Fatal(err)
		}
		n := r.sessions(b)
		if n == 0 {
			return
		}
		if ctx.Err() != nil {
			b.Fatalf("%s: %d sessions left after clearing for a minute", r.dp.Name, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settle reads c until it has not moved for 100 ms (five reads 20 ms
// apart; at most two seconds): a forwarder whose worker waits for a CPU on
// a loaded machine drains its ring in bursts.
func settle(c *Counter) (uint64, error) {
	last, _, err := c.Read()
	if err != nil {
		return 0, err
	}
	stable := 0
	for range 100 {
		time.Sleep(20 * time.Millisecond)
		n, _, err := c.Read()
		if err != nil {
			return n, err
		}
		if n != last {
			last, stable = n, 0
			continue
		}
		if stable++; stable == 5 {
			break
		}
	}
	return last, nil
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
