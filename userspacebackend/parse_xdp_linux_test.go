package userspacebackend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/internal/dptest"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/userspacebackend/internal/pkt"
)

// The userspace datapath's parser (internal/pkt) against the eBPF
// datapath's, which is observed through the kernel: the loaded XDP program
// runs each random frame with BPF_PROG_RUN, and what it did (its counters:
// refused, not IP, later fragment, or handled) and the session it created
// (whose key is the tuple it parsed) are compared with pkt.Parse.

// parserDifference is a known difference between the two parsers: frames
// of the class are reported (t.Log), not failed. Each is a decision the
// owners of the two datapaths have to take; remove the entry with the fix.
type parserDifference struct {
	class, what string
}

var parserDifferences = map[string]parserDifference{
	"ip length beyond the frame": {"ip length beyond the frame",
		"the XDP parser bounds the transport header by the frame, never by the IP length: a datagram whose IPv4 total length (IPv6 payload length) exceeds the frame is parsed; pkt refuses it as truncated"},
	"qinq": {"qinq", "an 802.1ad (0x88a8) outer tag: pkt parses behind it, the XDP program passes the frame to the kernel as not IP"},
	"ipv6 extension headers": {"ipv6 extension headers",
		"pkt walks hop-by-hop, routing, destination options and fragment headers to the transport header; the XDP parser stops at the first: its protocol is the extension header's number (no ports), and any fragment header counts as a later fragment"},
	"icmp of the other family": {"icmp of the other family",
		"an echo of protocol 1 inside IPv6 (58 inside IPv4): the XDP parser takes its identifier as the ports, pkt does not (that protocol is not the packet's ICMP)"},
}

// xdpOutcome classifies what the XDP program did with one frame.
type xdpOutcome struct {
	class  string // "refused", "not ip", "later fragment", "handled"
	action uint32
	delta  map[string]uint64
}

var xdpCounters = []string{"dropped_parse_error", "passed_non_ip", "passed_neighbor_discovery", "dropped_fragment",
	"forwarded", "dropped_policy", "dropped_icmp_unrelated", "related_icmp", "passed_local", "dropped_no_route", "passed_ttl_expired",
	"sessions_created_ipv4", "sessions_created_ipv6", "passed_no_neighbor"}

type xdpHarness struct {
	l            *dptest.Lab
	b            *ebpfbackend.Backend
	prog         *ebpf.Program
	sess4, sess6 *ebpf.Map
}

func newXDPHarness(t *testing.T) *xdpHarness {
	l := dptest.NewLab(t, nil)
	b, err := ebpfbackend.New(context.Background(), &ebpfbackend.Options{NetNS: l.Firewall.Path, SessionSweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	cfg := dptest.Base(l)
	cfg.Policies = []dataplane.Policy{
		{FromZone: "clients", ToZone: "servers", Action: dataplane.ActionAllow},
		{FromZone: "servers", ToZone: "clients", Action: dataplane.ActionAllow},
	}
	for i := range cfg.Interfaces {
		cfg.Interfaces[i].Attach = dataplane.AttachXDP // the XDP program's parser is compared
	}
	if _, err := b.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	h := &xdpHarness{l: l, b: b}
	// The program and its maps, found through the kernel as any tool
	// would: the XDP program on the client link, its maps by name.
	err = netnsutil.Do(l.Firewall.Path, func() error {
		lk, err := netlink.LinkByName(l.FwClientIf)
		if err != nil {
			return err
		}
		if lk.Attrs().Xdp == nil || lk.Attrs().Xdp.ProgId == 0 {
			return errors.New("no XDP program on the client link")
		}
		h.prog, err = ebpf.NewProgramFromID(ebpf.ProgramID(lk.Attrs().Xdp.ProgId))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.prog.Close() })
	info, err := h.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		mi, _ := m.Info()
		switch mi.Name {
		case "fw_sessions_v4":
			h.sess4 = m
		case "fw_sessions_v6":
			h.sess6 = m
		default:
			m.Close()
			continue
		}
		t.Cleanup(func() { m.Close() })
	}
	if h.sess4 == nil || h.sess6 == nil {
		t.Fatal("session maps not found among the program's maps")
	}
	return h
}

func (h *xdpHarness) counters(t *testing.T) map[string]uint64 {
	rep, err := h.b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, n := range xdpCounters {
		out[n], _ = rep.Counter(n, "global")
	}
	return out
}

// xdpMD is struct xdp_md, the context BPF_PROG_RUN takes.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

func (h *xdpHarness) run(t *testing.T, frame []byte) xdpOutcome {
	before := h.counters(t)
	var action uint32
	err := netnsutil.Do(h.l.Firewall.Path, func() error {
		var err error
		action, err = h.prog.Run(&ebpf.RunOptions{Data: frame,
			Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(h.l.FwClientIndex)}})
		return err
	})
	if err != nil {
		t.Fatalf("run the XDP program: %v", err)
	}
	after := h.counters(t)
	o := xdpOutcome{action: action, delta: map[string]uint64{}}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			o.delta[k] = d
		}
	}
	switch {
	case o.delta["dropped_parse_error"] > 0:
		o.class = "refused"
	case o.delta["passed_non_ip"] > 0:
		o.class = "not ip"
	case o.delta["dropped_fragment"] > 0:
		o.class = "later fragment"
	default:
		o.class = "handled"
	}
	return o
}

// sessionKeys returns the two byte orders a canonical session key of t can
// take (struct fw_sess4_key / fw_sess6_key: addresses, ports in network
// order, protocol, padding); the datapath stores the lower endpoint first.
func sessionKeys(t pkt.Tuple) [2][]byte {
	key := func(a, b []byte, pa, pb uint16) []byte {
		k := append(append([]byte(nil), a...), b...)
		k = binary.BigEndian.AppendUint16(k, pa)
		k = binary.BigEndian.AppendUint16(k, pb)
		return append(k, t.Proto, 0, 0, 0)
	}
	n := 4
	if t.Family == 6 {
		n = 16
	}
	return [2][]byte{key(t.Src[:n], t.Dst[:n], t.SrcPort, t.DstPort), key(t.Dst[:n], t.Src[:n], t.DstPort, t.SrcPort)}
}

func (h *xdpHarness) sessionMap(t pkt.Tuple) *ebpf.Map {
	if t.Family == 6 {
		return h.sess6
	}
	return h.sess4
}

// randomFrame builds a frame from the client's network to the server's
// (addresses the FIB routes) whose headers vary the ways parsers differ
// on. Each frame gets its own addresses (host parts from i), so no flow
// cache entry or session of an earlier frame answers for it.
func randomFrame(r *rand.Rand, l *dptest.Lab, i int) []byte {
	v6 := r.IntN(2) == 0
	host := func(p netip.Prefix, n int) netip.Addr {
		a := p.Addr().As16()
		if p.Addr().Is4() {
			b := p.Addr().As4()
			b[3] = byte(3 + n%250)
			return netip.AddrFrom4(b)
		}
		binary.BigEndian.PutUint32(a[12:], uint32(3+n))
		return netip.AddrFrom16(a)
	}
	src, dst := host(l.ClientNet4, i/250), host(l.ServerNet4, i)
	if v6 {
		src, dst = host(l.ClientNet6, i), host(l.ServerNet6, i)
	}
	port := uint16(20000 + i)
	proto := []uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP}[r.IntN(3)]
	s := packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(src, port), Dst: netip.AddrPortFrom(dst, 1+uint16(r.IntN(65535))),
		PayloadLen: r.IntN(40), TTL: uint8(2 + r.IntN(60))}
	if r.IntN(4) == 0 {
		s.VLAN = uint16(1 + r.IntN(4094))
	}
	f, _ := packet.Build(s, proto)
	l3 := 14
	if s.VLAN != 0 {
		l3 = 18
	}
	// Then one change of a header field a parser reads, or none.
	switch r.IntN(12) {
	case 0: // truncate
		f = f[:l3+r.IntN(len(f)-l3)]
	case 1: // IP length beyond the frame, or short of the headers
		if v6 {
			binary.BigEndian.PutUint16(f[l3+4:], uint16(r.IntN(120)))
		} else {
			binary.BigEndian.PutUint16(f[l3+2:], uint16(r.IntN(120)))
		}
	case 2: // version
		f[l3] = f[l3]&0x0f | byte(r.IntN(16))<<4
	case 3: // IPv4 header length, or the IPv6 next header
		if v6 {
			f[l3+6] = []byte{0, 43, 44, 60, 1, 58, 6, 17, 132}[r.IntN(9)]
		} else {
			f[l3] = f[l3]&0xf0 | byte(r.IntN(16))
		}
	case 4: // IPv4 fragment fields, or the protocol
		if v6 {
			f[l3+6] = 132
		} else {
			binary.BigEndian.PutUint16(f[l3+6:], uint16(r.IntN(4))<<13|uint16(r.IntN(3)))
			f[l3+9] = []byte{1, 6, 17, 58, 132}[r.IntN(5)]
		}
	case 5: // an outer 802.1ad tag instead of 802.1Q
		if s.VLAN != 0 {
			binary.BigEndian.PutUint16(f[12:], pkt.EtherTypeQinQ)
		}
	case 6: // an ICMP type other than echo
		if proto == packet.ProtoICMP {
			f[l3+map[bool]int{false: 20, true: 40}[v6]] = []byte{3, 11, 0, 1, 2, 4, 129, 135}[r.IntN(8)]
		}
	}
	return f
}

// TestXDPParserMatchesParse runs 1500 random frames through the eBPF
// datapath and through pkt.Parse and compares: the same refusal, or the
// same tuple (read back from the session the XDP program created).
func TestXDPParserMatchesParse(t *testing.T) {
	h := newXDPHarness(t)
	r := rand.New(rand.NewPCG(21, 22))
	known := map[string]int{}
	for i := range 1500 {
		f := randomFrame(r, h.l, i)
		var info pkt.Info
		perr := pkt.Parse(f, &info)
		// A stale session of the same tuple must not answer for this
		// frame.
		if perr == nil {
			for _, k := range sessionKeys(info.Tuple) {
				_ = h.sessionMap(info.Tuple).Delete(k)
			}
		}
		x := h.run(t, f)
		if why, class := compareXDP(f, perr, &info, x, h); why != "" {
			if class != "" {
				known[class]++
				continue
			}
			t.Errorf("frame %d %x: %s (xdp action %d, counters %v)", i, f, why, x.action, x.delta)
		}
	}
	for class, n := range known {
		t.Logf("known parser difference, %d frame(s): %s: %s", n, class, parserDifferences[class].what)
	}
}

// compareXDP returns why pkt and the XDP program disagree about frame f
// ("" when they agree), and the known difference that explains it.
func compareXDP(f []byte, perr error, info *pkt.Info, x xdpOutcome, h *xdpHarness) (why, class string) {
	pc := "handled"
	switch {
	case errors.Is(perr, pkt.ErrNotIP):
		pc = "not ip"
	case perr != nil:
		pc = "refused"
	case info.Flags&pkt.FlagLaterFragment != 0:
		pc = "later fragment"
	}
	if pc != x.class {
		return fmt.Sprintf("pkt: %s (%v), xdp: %s", pc, perr, x.class), classify(f, perr, info)
	}
	if pc != "handled" || x.delta["sessions_created_ipv4"]+x.delta["sessions_created_ipv6"] == 0 {
		return "", ""
	}
	// A new flow: its session is keyed by the tuple the XDP parser read.
	for _, k := range sessionKeys(info.Tuple) {
		v := make([]byte, h.sessionMap(info.Tuple).ValueSize())
		if h.sessionMap(info.Tuple).Lookup(k, &v) == nil {
			return "", ""
		}
	}
	return fmt.Sprintf("a session was created, but none with pkt's tuple %v", info.Tuple), classify(f, perr, info)
}

// classify names the known difference a frame falls in, or "".
func classify(f []byte, perr error, info *pkt.Info) string {
	et := binary.BigEndian.Uint16(f[12:])
	l3 := 14
	if et == pkt.EtherTypeVLAN || et == pkt.EtherTypeQinQ {
		if et == pkt.EtherTypeQinQ {
			return "qinq"
		}
		l3 = 18
		et = binary.BigEndian.Uint16(f[16:])
	}
	if len(f) < l3+20 {
		return ""
	}
	switch et {
	case pkt.EtherTypeIPv4:
		if errors.Is(perr, pkt.ErrTruncated) && int(binary.BigEndian.Uint16(f[l3+2:])) != len(f)-l3 {
			return "ip length beyond the frame"
		}
		if perr == nil && f[l3+9] == 58 {
			return "icmp of the other family"
		}
	case pkt.EtherTypeIPv6:
		if len(f) < l3+40 {
			return ""
		}
		next := f[l3+6]
		if next == 0 || next == 43 || next == 44 || next == 60 {
			return "ipv6 extension headers"
		}
		if errors.Is(perr, pkt.ErrTruncated) && int(binary.BigEndian.Uint16(f[l3+4:]))+40 != len(f)-l3 {
			return "ip length beyond the frame"
		}
		if perr == nil && next == 1 {
			return "icmp of the other family"
		}
	}
	return ""
}
