package userspacebackend

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/natpool"
	"github.com/fwplane/fwplane/userspacebackend/internal/pkt"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

// Address translation (dataplane/nat.go), the userspace side; see the
// package documentation ("Address translation") for what an operator
// sees. The pieces:
//
//   - natConfig: one generation's rules, compiled at Apply (zones as the
//     backend's zone ids, addresses as 4-byte arrays, each pool address
//     bound to its slot allocator), immutable, read by the workers
//     through the snapshot.
//   - natRegistry: what outlives a generation: one slot allocator
//     (natpool.Ports) per translated-to address, shared by every rule
//     naming it (a slot is never shared, whatever the rule), and the
//     rule names sessions refer to. A session's translation (in the
//     session table's NAT extension) carries a tag: whether it holds a
//     slot, and the ids of its rules' names. The table's release hook
//     returns the slot when the session ends, however it ends.
//   - The worker (worker_linux.go) looks a flow up by its own tuple, then
//     by the translated one (TrackReply); for a new flow it applies the
//     first matching destination rule before routing, the policy on the
//     translated destination, then the first matching source rule after
//     routing, takes a slot and creates the session with both tuples.

// Tag bits of a session's translation (session.NAT.Tag).
const (
	tagSlot = 1 << 0 // holds the slot (Src, SrcPort) of the allocator of Src
	tagMasq = 1 << 1 // translated to its egress interface's address (masquerade)
	// The source rule's name id in bits 16-31, the destination rule's in
	// 32-47 (0: none).
	tagSNATShift = 16
	tagDNATShift = 32
)

func tagSNAT(tag uint64) uint16 { return uint16(tag >> tagSNATShift) }
func tagDNAT(tag uint64) uint16 { return uint16(tag >> tagDNATShift) }

// maxNATNames bounds the distinct rule names a backend remembers (ids are
// 16 bits; 0 is "none").
const maxNATNames = 1<<16 - 1

// natRegistry is the NAT state that outlives a generation. Its methods
// are safe for concurrent use; the datapath reads the allocator map and
// the names without a lock.
type natRegistry struct {
	mu sync.Mutex
	// ports maps a translated-to address to its allocator; replaced
	// whole (copy on write) under mu, read without a lock.
	ports atomic.Pointer[map[[4]byte]*natpool.Ports]
	// names are the rule names sessions refer to, by id-1 (under mu;
	// nameList is a copy the readers load).
	names    map[string]uint16
	nameList atomic.Pointer[[]string]
	// primaries are the masquerade addresses last seen (under mu): when
	// one goes away its sessions are ended.
	primaries map[[4]byte]bool
	// masqEnded counts the sessions ended because their masquerade
	// address went away.
	masqEnded atomic.Uint64
}

// allocator returns the allocator of address a, or nil.
func (r *natRegistry) allocator(a [4]byte) *natpool.Ports {
	if m := r.ports.Load(); m != nil {
		return (*m)[a]
	}
	return nil
}

// allocatorFor returns the allocator of a, making it when it has none.
func (r *natRegistry) allocatorFor(a [4]byte) *natpool.Ports {
	if p := r.allocator(a); p != nil {
		return p
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.ports.Load()
	if old != nil {
		if p := (*old)[a]; p != nil {
			return p
		}
	}
	m := make(map[[4]byte]*natpool.Ports, 1)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	p := natpool.New()
	m[a] = p
	r.ports.Store(&m)
	return p
}

// retireExcept forgets the allocators of addresses keep does not name
// that hold no slot (natpool.Ports.Retire makes a racing Take fail, so a
// forgotten allocator never holds a slot nobody releases).
func (r *natRegistry) retireExcept(keep func(a [4]byte) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.ports.Load()
	if old == nil {
		return
	}
	m := make(map[[4]byte]*natpool.Ports, len(*old))
	for a, p := range *old {
		if keep(a) || !p.Retire() {
			m[a] = p
		}
	}
	r.ports.Store(&m)
}

// release is the session table's release hook: it returns the slot a
// translated session held. It runs under the session's shard lock.
func (r *natRegistry) release(x session.NAT) {
	if x.Tag&tagSlot == 0 {
		return
	}
	if p := r.allocator(x.Src); p != nil {
		p.Release(x.SrcPort)
	}
}

// nameID returns the id of a rule name, registering it; ok is false when
// the registry is full.
func (r *natRegistry) nameID(name string) (uint16, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.names[name]; ok {
		return id, true
	}
	if len(r.names) >= maxNATNames {
		return 0, false
	}
	if r.names == nil {
		r.names = map[string]uint16{}
	}
	id := uint16(len(r.names) + 1)
	r.names[name] = id
	list := make([]string, 0, len(r.names))
	if old := r.nameList.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, name)
	r.nameList.Store(&list)
	return id, true
}

// name returns the rule name of id, or "".
func (r *natRegistry) name(id uint16) string {
	if l := r.nameList.Load(); l != nil && id > 0 && int(id) <= len(*l) {
		return (*l)[id-1]
	}
	return ""
}

// natRuleName is how sessions name a rule (dataplane.Session.NATRule):
// its name, else "#n".
func natRuleName(cfg *dataplane.Config, i int) string {
	if n := cfg.NAT[i].Name; n != "" {
		return n
	}
	return fmt.Sprintf("#%d", i)
}

// natConfig is one generation's NAT rules, compiled. Immutable.
type natConfig struct {
	dnat []dnatRule
	snat []snatRule
	// pools are every source rule's pool addresses: a packet to one of
	// them that is not a session's reply is a reverse miss.
	pools map[[4]byte]bool
	// masqZones are the zones a masquerade rule translates into: the
	// primary address of an interface in one is a masquerade address.
	masqZones map[uint16]bool
	reg       *natRegistry
}

// dnatRule is a compiled destination rule.
type dnatRule struct {
	name     uint16
	zone     uint16 // session.AnyZone: any
	proto    uint8  // 0: any
	dst      [4]byte
	ported   bool
	first    uint16
	last     uint16
	to       [4]byte
	toPort   uint16 // 0: keep
	steering uint8  // the shim flags its address needs
}

// snatRule is a compiled source rule.
type snatRule struct {
	scope       string // the report's scope of its pool
	name        uint16
	from, to    uint16
	sources     []netip.Prefix // empty: any
	proto       uint8
	masq        bool
	addrs       [][4]byte        // the pool (not masquerade)
	ports       []*natpool.Ports // addrs' allocators (bound at build)
	first, last uint16
}

// compileNAT compiles cfg's NAT rules (validated, IPv4: the feature check
// refused IPv6 ones) with the zone ids of the plan. It registers the
// rules' names; it fails only when the name registry is full.
func compileNAT(cfg *dataplane.Config, zones map[string]uint16, reg *natRegistry) (*natConfig, error) {
	if len(cfg.NAT) == 0 {
		return nil, nil
	}
	n := &natConfig{pools: map[[4]byte]bool{}, masqZones: map[uint16]bool{}, reg: reg}
	for i, r := range cfg.NAT {
		id, ok := reg.nameID(natRuleName(cfg, i))
		if !ok {
			return nil, fmt.Errorf("nat[%d]: this userspace dataplane has registered %d NAT rule names since it started, the most its sessions can name: Close and start a new one", i, maxNATNames)
		}
		switch r.Type {
		case dataplane.NATDestination:
			d := dnatRule{name: id, zone: session.AnyZone, proto: r.Protocol.Number(),
				dst: netip.MustParseAddr(r.Destination).As4(), to: netip.MustParseAddr(r.TranslateTo).As4(), toPort: r.TranslatePort}
			if r.FromZone != "" {
				d.zone = zones[r.FromZone]
			}
			if r.DestinationPorts != (dataplane.PortRange{}) {
				d.ported, d.first, d.last = true, r.DestinationPorts.First, r.DestinationPorts.Last
			}
			switch d.proto {
			case 0:
				d.steering = steerEcho | steerAll
			case unix.IPPROTO_ICMP:
				d.steering = steerEcho
			}
			n.dnat = append(n.dnat, d)
		case dataplane.NATSource:
			pr := r.PortsOrDefault()
			s := snatRule{scope: dataplane.NATScope(cfg, i), name: id, from: zones[r.FromZone], to: zones[r.ToZone],
				proto: r.Protocol.Number(), masq: r.Masquerade, first: pr.First, last: pr.Last}
			for _, src := range r.Sources {
				p, _ := dataplane.ParsePrefix(src)
				s.sources = append(s.sources, p.Masked())
			}
			for _, a := range dataplane.PoolAddresses(r.Pool) {
				s.addrs = append(s.addrs, a.As4())
				n.pools[a.As4()] = true
			}
			if s.masq {
				n.masqZones[s.to] = true
			}
			n.snat = append(n.snat, s)
		}
	}
	return n, nil
}

// bindPools gives every pool address of n its allocator (made when new).
func (n *natConfig) bindPools() {
	if n == nil {
		return
	}
	for i := range n.snat {
		s := &n.snat[i]
		s.ports = make([]*natpool.Ports, len(s.addrs))
		for j, a := range s.addrs {
			s.ports[j] = n.reg.allocatorFor(a)
		}
	}
}

// masqAddress returns the address a masquerade rule translates to out of
// eg: the interface's primary IPv4 address, as the link watcher and the
// poll keep it (read at every new translation).
func masqAddress(eg *portView) ([4]byte, bool) {
	a := eg.addrs.Load()
	if a == nil || !a.primary4.IsValid() {
		return [4]byte{}, false
	}
	return a.primary4.As4(), true
}

// isPool reports whether dst is an address some source rule translates
// to: a packet to it that is no session's reply is a reverse miss.
func (n *natConfig) isPool(s *snapshot, dst [4]byte) bool {
	if n.pools[dst] {
		return true
	}
	if len(n.masqZones) == 0 {
		return false
	}
	for _, p := range s.ports {
		if n.masqZones[p.zone] {
			if a, ok := masqAddress(p); ok && a == dst {
				return true
			}
		}
	}
	return false
}

// translatable reports whether a packet's flow can be translated: TCP,
// UDP and ICMP echo (IPv4).
func translatable(t *policy.Tuple, icmpType uint8) bool {
	switch t.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		return true
	case unix.IPPROTO_ICMP:
		return icmpType == 0 || icmpType == 8
	}
	return false
}

// matchDNAT returns the first destination rule matching the first packet
// of a flow (t, icmpType) arriving from zone, or nil.
func (n *natConfig) matchDNAT(zone uint16, t *policy.Tuple) *dnatRule {
	dst := [4]byte(t.Dst[:4])
	for i := range n.dnat {
		r := &n.dnat[i]
		if r.dst != dst || r.zone != session.AnyZone && r.zone != zone || r.proto != 0 && r.proto != t.Proto {
			continue
		}
		if r.ported && (t.DstPort < r.first || t.DstPort > r.last) {
			continue
		}
		return r
	}
	return nil
}

// matchSNAT returns the first source rule matching a new flow routed from
// zone from to zone to, or nil.
func (n *natConfig) matchSNAT(from, to uint16, t *policy.Tuple) *snatRule {
	for i := range n.snat {
		r := &n.snat[i]
		if r.from != from || r.to != to || r.proto != 0 && r.proto != t.Proto {
			continue
		}
		if len(r.sources) > 0 {
			src := t.SrcAddr()
			if !slices.ContainsFunc(r.sources, func(p netip.Prefix) bool { return p.Contains(src) }) {
				continue
			}
		}
		return r
	}
	return nil
}

// take takes a slot of r for a flow from t out of eg, into x (source and
// source port; an ICMP echo's identifier is both ports). The address is
// picked by the flow's source (a client keeps one address while it has
// room), the port the flow came with is kept when free.
func (n *natConfig) take(r *snatRule, eg *portView, t *policy.Tuple, x *session.NAT) bool {
	addrs, ports := r.addrs, r.ports
	var one [1][4]byte
	var onePort [1]*natpool.Ports
	if r.masq {
		a, ok := masqAddress(eg)
		if !ok {
			return false
		}
		one[0], onePort[0] = a, n.reg.allocatorFor(a)
		addrs, ports = one[:], onePort[:]
	}
	if len(addrs) == 0 {
		return false
	}
	start := int(uint64(binary.BigEndian.Uint32(t.Src[:4])*2654435761>>16) % uint64(len(addrs)))
	for i := range len(addrs) {
		k := (start + i) % len(addrs)
		port, ok := ports[k].Take(r.first, r.last, t.SrcPort)
		if !ok {
			continue
		}
		x.Src, x.SrcPort = addrs[k], port
		if t.Proto == unix.IPPROTO_ICMP {
			x.DstPort = port
		}
		x.Tag |= tagSlot | uint64(r.name)<<tagSNATShift
		if r.masq {
			x.Tag |= tagMasq
		}
		return true
	}
	return false
}

// natRewrite is the translation of one packet: its new source and
// destination (an ICMP echo's identifier is sport).
type natRewrite struct {
	src, dst     [4]byte
	sport, dport uint16
}

// rewriteFor returns the rewrite of a packet of direction d of a session
// whose own tuple is orig and whose translation is x: the initiator's
// packets leave as x, the responder's reach the initiator as orig's
// reverse.
func rewriteFor(orig *policy.Tuple, x *session.NAT, d session.Dir) natRewrite {
	if d == session.Forward {
		return natRewrite{src: x.Src, sport: x.SrcPort, dst: x.Dst, dport: x.DstPort}
	}
	return natRewrite{src: [4]byte(orig.Dst[:4]), sport: orig.DstPort, dst: [4]byte(orig.Src[:4]), dport: orig.SrcPort}
}

// Kinds of translation finish applies.
const (
	xlNone uint8 = iota
	xlPacket
	xlICMPError
)

// xlate is what finish translates in a forwarded frame.
type xlate struct {
	kind uint8
	// pkt: the packet's new addresses and ports; for an ICMP error the
	// error's own addresses (ports unused).
	pkt natRewrite
	// quote: an ICMP error's quoted packet, translated.
	quote natRewrite
}

// errorXlate returns the translation of an ICMP error (outer tuple o)
// that rel relates to a translated session: the quote goes back to the
// form its sender sent it in, and the error to the quote's sender as
// that sender knows it. An error from the translated endpoint itself
// (a server behind port forwarding, the client behind source NAT) gets
// that endpoint's other address as its source; one from a router on the
// way keeps the router's.
func errorXlate(o *policy.Tuple, rel *session.Relation) xlate {
	orig, x := &rel.Tuple, &rel.NAT
	osrc := [4]byte(o.Src[:4])
	xl := xlate{kind: xlICMPError}
	if rel.Quote == session.Forward {
		// About the initiator's packet as it left: back to the initiator.
		xl.quote = natRewrite{src: [4]byte(orig.Src[:4]), sport: orig.SrcPort, dst: [4]byte(orig.Dst[:4]), dport: orig.DstPort}
		xl.pkt = natRewrite{src: osrc, dst: [4]byte(orig.Src[:4])}
		if osrc == x.Dst {
			xl.pkt.src = [4]byte(orig.Dst[:4])
		}
		return xl
	}
	// About a reply as delivered: back to the responder, as it sent it.
	xl.quote = natRewrite{src: x.Dst, sport: x.DstPort, dst: x.Src, dport: x.SrcPort}
	xl.pkt = natRewrite{src: osrc, dst: x.Dst}
	if osrc == [4]byte(orig.Src[:4]) {
		xl.pkt.src = x.Src
	}
	return xl
}

// apply translates frame (parsed into info) as xl says.
func (xl *xlate) apply(frame []byte, info *pkt.Info) {
	switch xl.kind {
	case xlPacket:
		pkt.RewriteIPv4(frame, info, xl.pkt.src, xl.pkt.sport, xl.pkt.dst, xl.pkt.dport)
	case xlICMPError:
		pkt.TranslateICMPError(frame, info, xl.pkt.src, xl.pkt.dst, xl.quote.src, xl.quote.sport, xl.quote.dst, xl.quote.dport)
	}
}

// Shim steering flags of a NAT address that is also the firewall's own
// (xsk.Shim.SetNATAddrs): frames to it go to the dataplane unless the
// kernel owns them (a local TCP or UDP socket, an error about one).
const (
	steerReply = 0x01 // source NAT: replies (TCP/UDP without a local socket, echo replies, errors)
	steerEcho  = 0x02 // destination NAT of ICMP echo: echo requests too
	steerAll   = 0x04 // destination NAT of every protocol: any other protocol too
)

// natSteering returns the shim flags of every NAT address of s that is
// one of local (the namespace's addresses): the others reach the
// dataplane anyway.
func natSteering(s *snapshot, local []netip.Addr) map[netip.Addr]uint8 {
	n := s.nat
	if n == nil {
		return nil
	}
	want := map[[4]byte]uint8{}
	for _, r := range n.dnat {
		want[r.dst] |= r.steering | steerReply
	}
	for a := range n.pools {
		want[a] |= steerReply
	}
	for _, p := range s.ports {
		if n.masqZones[p.zone] {
			if a, ok := masqAddress(p); ok {
				want[a] |= steerReply
			}
		}
	}
	out := map[netip.Addr]uint8{}
	for _, l := range local {
		if l.Is4() {
			if f, ok := want[l.As4()]; ok {
				out[l] = f
			}
		}
	}
	return out
}

// programNATSteering gives every shim of s the NAT addresses among local.
func programNATSteering(s *snapshot, local []netip.Addr) error {
	steer := natSteering(s, local)
	for _, p := range s.ports {
		if err := p.shim.SetNATAddrs(steer); err != nil {
			return fmt.Errorf("program NAT addresses on %s: %w", p.name, err)
		}
	}
	return nil
}

// followMasquerade ends the translated sessions whose masquerade address
// is no longer the primary address of a managed interface (as Linux's
// MASQUERADE does when an address goes: their replies could not come
// back), and remembers the current ones. It runs after every Apply and
// address change.
func (b *Backend) followMasquerade(s *snapshot) {
	reg := &b.nat
	cur := map[[4]byte]bool{}
	for _, p := range s.ports {
		if a, ok := masqAddress(p); ok {
			cur[a] = true
		}
	}
	reg.mu.Lock()
	gone := false
	for a := range reg.primaries {
		if !cur[a] {
			gone = true
		}
	}
	reg.primaries = cur
	reg.mu.Unlock()
	if !gone || !s.sessions.NATEnabled() {
		return
	}
	n := s.sessions.EndIf(func(e *session.Entry) bool {
		return e.Translated && e.NAT.Tag&tagMasq != 0 && !cur[e.NAT.Src]
	})
	reg.masqEnded.Add(uint64(n))
}

// natSessionFields fills a listed session's translated tuple and rules.
func (b *Backend) natSessionFields(out *dataplane.Session, e *session.Entry) {
	if !e.Translated {
		return
	}
	x := &e.NAT
	out.TranslatedSource = netip.AddrPortFrom(netip.AddrFrom4(x.Src), x.SrcPort).String()
	out.TranslatedDestination = netip.AddrPortFrom(netip.AddrFrom4(x.Dst), x.DstPort).String()
	var names []string
	if id := tagDNAT(x.Tag); id != 0 {
		names = append(names, b.nat.name(id))
	}
	if id := tagSNAT(x.Tag); id != 0 {
		names = append(names, b.nat.name(id))
	}
	for i, n := range names {
		if i > 0 {
			out.NATRule += ","
		}
		out.NATRule += n
	}
}

// natPoolRows appends one nat_pool row per source rule of s (capacity:
// addresses x ports; used: the slots of that space held, by any rule's
// sessions: slots are per address, so rules sharing an address share
// them) or, for detail, one per address (scope "rule/address"). A
// masquerade rule's addresses are the primary addresses of its to-zone's
// interfaces at the time of the report.
func (r *reportRows) natPoolRows(detail bool) {
	s := r.s
	if s.nat == nil {
		return
	}
	for i := range s.nat.snat {
		sr := &s.nat.snat[i]
		per := uint64(sr.last) - uint64(sr.first) + 1
		addrs := sr.addrs
		if sr.masq {
			addrs = nil
			for _, p := range s.ports {
				if p.zone == sr.to {
					if a, ok := masqAddress(p); ok && !slices.Contains(addrs, a) {
						addrs = append(addrs, a)
					}
				}
			}
		}
		var used uint64
		for _, a := range addrs {
			var u uint64
			if p := s.nat.reg.allocator(a); p != nil {
				u = p.UsedIn(sr.first, sr.last)
			}
			used += u
			if detail {
				r.res = append(r.res, dataplane.Resource{Name: dataplane.ResourceNATPool, Kind: dataplane.KindPool, Detail: true,
					Scope: sr.scope + "/" + netip.AddrFrom4(a).String(), Capacity: per, Used: r.u.used(u), Method: dataplane.MethodCounter})
			}
		}
		if !detail {
			r.res = append(r.res, dataplane.Resource{Name: dataplane.ResourceNATPool, Kind: dataplane.KindPool, Scope: sr.scope,
				Capacity: uint64(len(addrs)) * per, Used: r.u.used(used), Method: dataplane.MethodCounter})
		}
	}
}

// natRowCount is how many rows natPoolRows appends at most (sizing).
func natRowCount(s *snapshot) int {
	if s.nat == nil {
		return 0
	}
	n := 0
	for _, sr := range s.nat.snat {
		n += 1 + max(len(sr.addrs), len(s.ports))
	}
	return n
}
