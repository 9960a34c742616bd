package userspacebackend

import (
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/pkt"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

// ICMP errors and the MTU, as the eBPF backend behaves (it hands these
// packets to the kernel, which answers or fragments; this backend has no
// way to hand a frame to the kernel's forwarding path, so it does what
// the kernel would):
//
//   - A packet the firewall forwards (allowed by a session or the policy)
//     with a TTL or hop limit of 1 or less is dropped
//     (dropped_ttl_expired) and answered with ICMP time exceeded
//     (icmp_time_exceeded_sent) from the firewall's address on the
//     ingress link, back to the previous hop's MAC.
//   - A packet larger than the egress interface's MTU: IPv4 without DF is
//     fragmented (fragmented; each fragment counts in forwarded); IPv4
//     with DF and IPv6 are dropped (dropped_too_big) and answered with
//     "fragmentation needed" / "packet too big" carrying the MTU
//     (icmp_too_big_sent).
//   - No error is sent about an ICMP error, nor to a source that is not
//     a unicast address; without an address of the packet's family on
//     the ingress link none can be sent (icmp_errors_no_source).
//   - Errors are rate-limited as the kernel limits its own
//     (net.ipv4.icmp_msgs_per_sec / icmp_msgs_burst: 1000/s, burst 50,
//     for all; net.ipv4.icmp_ratelimit and net.ipv6.icmp.ratelimit: one
//     per second per destination, burst 6, for all but ICMPv6 "packet
//     too big", which the kernel exempts); a limited one is counted
//     (icmp_errors_rate_limited), the packet is dropped all the same.
//   - An ICMP error in transit is forwarded when it quotes a live session,
//     travels towards the quoted packet's sender and arrives from the
//     session's zone on the quoted destination's side (related_icmp); any
//     other is dropped (dropped_icmp_unrelated). It never creates or
//     refreshes a session.

// portAddrs are an interface's addresses, by family, and its primary
// IPv4 address (the first that is not secondary), which masquerade
// translates to.
type portAddrs struct {
	v4, v6   []netip.Prefix
	primary4 netip.Addr
}

// source picks the address an ICMP error to dst is sent from: one whose
// prefix holds dst, else the first global one of the family (for IPv6 a
// link-local destination gets the link-local address, as source address
// selection would pick).
func (a *portAddrs) source(dst netip.Addr) (netip.Addr, bool) {
	if a == nil {
		return netip.Addr{}, false
	}
	list := a.v6
	if dst.Is4() {
		list = a.v4
	}
	var first, linkLocal netip.Addr
	for _, p := range list {
		if p.Contains(dst) {
			return p.Addr(), true
		}
		switch {
		case p.Addr().IsLinkLocalUnicast():
			if !linkLocal.IsValid() {
				linkLocal = p.Addr()
			}
		case !first.IsValid():
			first = p.Addr()
		}
	}
	if dst.IsLinkLocalUnicast() && linkLocal.IsValid() {
		return linkLocal, true
	}
	if first.IsValid() {
		return first, true
	}
	return linkLocal, linkLocal.IsValid()
}

// readPortAddrs lists the addresses of ifindex; run in the namespace.
func readPortAddrs(ifindex int) *portAddrs {
	lk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return &portAddrs{}
	}
	list, err := netlink.AddrList(lk, netlink.FAMILY_ALL)
	if err != nil {
		return &portAddrs{}
	}
	a := &portAddrs{}
	for _, ad := range list {
		if ad.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ones, _ := ad.Mask.Size()
		if ad.IP.To4() != nil {
			if !a.primary4.IsValid() && ad.Flags&unix.IFA_F_SECONDARY == 0 {
				a.primary4 = ip.Unmap()
			}
			a.v4 = append(a.v4, netip.PrefixFrom(ip.Unmap(), ones))
		} else {
			a.v6 = append(a.v6, netip.PrefixFrom(ip, ones))
		}
	}
	return a
}

// errorTarget reports whether an ICMP error may be sent to a: a unicast
// address that is not unspecified, loopback or limited broadcast.
func errorTarget(a netip.Addr) bool {
	if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
		return false
	}
	return !(a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}))
}

// Rate limits (nanoseconds of credit), as in the kernel: a global bucket
// of 1000 messages per second with a burst of 50 (icmp_msgs_per_sec,
// icmp_msgs_burst), and per destination one per second with a burst of 6
// (icmp_ratelimit 1000 ms, XRLIM_BURST_FACTOR 6).
const (
	icmpGlobalCost  = int64(1e6)
	icmpGlobalBurst = 50 * icmpGlobalCost
	icmpPeerCost    = int64(1e9)
	icmpPeerBurst   = 6 * icmpPeerCost
	icmpPeerSlots   = 256
)

// icmpLimiter limits the ICMP errors the datapath sends. Errors are rare
// (a denied or expired packet is not answered more than these rates
// allow), so one mutex serves every worker. The per-destination buckets
// are a direct-mapped table: a destination whose slot another took
// starts with a full burst, as a new peer does in the kernel.
type icmpLimiter struct {
	mu     sync.Mutex
	credit int64
	last   int64
	seeded bool
	peers  [icmpPeerSlots]peerBucket
}

type peerBucket struct {
	addr   netip.Addr
	credit int64
	last   int64
}

// allow reports whether an error to dst may be sent at now; perPeer
// applies the per-destination limit too.
func (l *icmpLimiter) allow(now int64, dst netip.Addr, perPeer bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seeded {
		l.credit, l.last, l.seeded = icmpGlobalBurst, now, true
	}
	l.credit = min(icmpGlobalBurst, l.credit+max(now-l.last, 0))
	l.last = now
	if l.credit < icmpGlobalCost {
		return false
	}
	if perPeer {
		a := dst.As16()
		h := uint32(0x811c9dc5)
		for _, c := range a {
			h = (h ^ uint32(c)) * 0x01000193
		}
		p := &l.peers[h%icmpPeerSlots]
		if p.addr != dst {
			*p = peerBucket{addr: dst, credit: icmpPeerBurst, last: now}
		}
		p.credit = min(icmpPeerBurst, p.credit+max(now-p.last, 0))
		p.last = now
		if p.credit < icmpPeerCost {
			return false
		}
		p.credit -= icmpPeerCost
	}
	l.credit -= icmpGlobalCost
	return true
}

// icmpError answers the packet in frame (w.info) with an ICMP error out of
// its ingress port in, built into the worker's scratch space, and returns
// the item that transmits it. ok is false (and the reason counted) when
// no error may be sent.
func (w *worker) icmpError(in *portView, frame []byte, now int64, typ, code uint8, mtu uint32) (fwd, bool) {
	info := &w.info
	if info.Flags&pkt.FlagICMPError != 0 || info.Flags&pkt.FlagLaterFragment != 0 {
		return fwd{}, false
	}
	to := info.Tuple.SrcAddr()
	if !errorTarget(to) {
		return fwd{}, false
	}
	src, ok := in.addrs.Load().source(to)
	if !ok {
		w.c[cICMPNoSource]++
		return fwd{}, false
	}
	perPeer := !(info.Tuple.Family == policy.FamilyIPv6 && typ == pkt.ICMPv6PacketTooBig)
	if !w.bd.be.icmpLimit.allow(now, to, perPeer) {
		w.c[cICMPRateLimited]++
		return fwd{}, false
	}
	if w.ngen == len(w.gen) {
		return fwd{}, false
	}
	slot := w.ngen
	w.icmpID++
	r := pkt.ErrorReply{Type: typ, Code: code, MTU: mtu, Src: src, SrcMAC: in.mac, ID: w.icmpID}
	copy(r.DstMAC[:], frame[6:12])
	n := pkt.BuildICMPError(w.gen[slot][:], frame, info, &r)
	if n == 0 {
		return fwd{}, false
	}
	w.ngen++
	w.genLen[slot] = uint16(n)
	return fwd{op: opICMP, gen: uint16(slot), eg: in}, true
}

// relate says whether the ICMP error in frame (w.info), which arrived on
// in, belongs to a live session (OK): its quote names the session (by
// its own tuple or, translated, by the one its packets leave with), the
// error travels to the quoted packet's sender and arrives from the
// session's zone on the quoted destination's side; and, for a translated
// session, how to translate it. The session is neither created nor
// refreshed.
func (w *worker) relate(snap *snapshot, in *portView, frame []byte, now int64) session.Relation {
	q, ok := pkt.QuotedTuple(frame, &w.info)
	if !ok || q.Src != w.info.Tuple.Dst || q.Family != w.info.Tuple.Family {
		return session.Relation{}
	}
	return snap.sessions.Relate(q, in.zone, now)
}
