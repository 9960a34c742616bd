package ebpfbackend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
)

// Session flags, as bpf/include/fw_common.h defines FW_SF_*.
const (
	sfReply       = 0x01
	sfEstablished = 0x02
	sfFinInit     = 0x04
	sfFinResp     = 0x08
	sfRST         = 0x10
	sfAssured     = 0x20
)

// sessState is the datapath's sess_state: a session's state follows from
// its flags.
func sessState(proto uint8, f uint32) dataplane.SessionState {
	if proto != 6 {
		if f&sfReply != 0 {
			return dataplane.StateReplied
		}
		return dataplane.StateUnreplied
	}
	switch {
	case f&sfRST != 0 || (f&sfFinInit != 0 && f&sfFinResp != 0):
		return dataplane.StateClosed
	case f&(sfFinInit|sfFinResp) != 0:
		return dataplane.StateClosing
	case f&sfEstablished != 0:
		return dataplane.StateEstablished
	}
	return dataplane.StateOpening
}

// sessAssured is the datapath's sess_assured.
func sessAssured(proto uint8, f uint32) bool {
	if proto == 6 {
		return f&sfAssured != 0
	}
	return f&sfReply != 0
}

// DefaultSweepInterval is the period of the in-kernel sweep for session
// tables up to 256 Ki entries; larger tables are swept less often, in
// proportion (a pass walks every bucket: see docs/benchmarks.md for its
// cost), so expiry there is coarser by up to that period.
const DefaultSweepInterval = time.Second

func sweepInterval(capacity uint64) time.Duration {
	const per = 256 << 10
	if capacity <= per {
		return DefaultSweepInterval
	}
	return time.Duration((capacity + per - 1) / per * uint64(DefaultSweepInterval))
}

// armSweep starts the kernel's sweep timer (fw_sweep_arm, run once through
// BPF_PROG_RUN: a bpf_timer can only be armed by a program). The timer
// lives as long as the session maps do; Close (or the maps' last
// reference, e.g. their pins, going) stops it.
func armSweep(objs *fwObjects) error {
	frame := make([]byte, 64)
	ret, err := objs.FwSweepArm.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return fmt.Errorf("arm the session sweep: %w", err)
	}
	if ret != 2 /* XDP_PASS */ {
		return fmt.Errorf("arm the session sweep: program returned %d", ret)
	}
	return nil
}

// sessionEntry is one session as read from a table.
type sessionEntry struct {
	proto  uint8
	lo, hi netip.AddrPort
	val    fwFwSessVal
}

// initiator returns the session's endpoints from its initiator's side.
func (e *sessionEntry) initiator() (src, dst netip.AddrPort) {
	if e.val.InitiatorIsLo != 0 {
		return e.lo, e.hi
	}
	return e.hi, e.lo
}

// tuple is the session as the policy judged its first packet: the
// initiator's source, and the destination after destination NAT (the
// policy sees the translated destination: dataplane/nat.go).
func (e *sessionEntry) tuple() policy.Tuple {
	src, dst := e.initiator()
	if n := e.val.Nat; n.Daddr != 0 {
		dst = netip.AddrPortFrom(wordAddr(n.Daddr), ntohs(n.Dport))
	}
	return policy.MakeTuple(src.Addr(), dst.Addr(), e.proto, src.Port(), dst.Port())
}

const walkChunk = 1024

// walkSessions reads both session tables with BPF_MAP_LOOKUP_BATCH (the
// cursor is a bucket index, so churn does not restart the walk as a
// next-key walk would: see internal/mapcount) and calls fn for each
// entry. fn says whether to delete the entry (done in batches after each
// chunk) and whether to stop.
func walkSessions(ctx context.Context, objs *fwObjects, fn func(e *sessionEntry) (del, stop bool)) (deleted int, err error) {
	n4, stop, err := walkTable(ctx, objs.FwSessionsV4, func(k fwFwSess4Key) sessionEntry {
		return sessionEntry{proto: k.Proto, lo: addrPort4(k.LoAddr, k.LoPort), hi: addrPort4(k.HiAddr, k.HiPort)}
	}, fn)
	if err != nil || stop {
		return n4, err
	}
	n6, _, err := walkTable(ctx, objs.FwSessionsV6, func(k fwFwSess6Key) sessionEntry {
		return sessionEntry{proto: k.Proto, lo: addrPort6(k.LoAddr, k.LoPort), hi: addrPort6(k.HiAddr, k.HiPort)}
	}, fn)
	return n4 + n6, err
}

func walkTable[K any](ctx context.Context, m *ebpf.Map, view func(K) sessionEntry, fn func(e *sessionEntry) (del, stop bool)) (deleted int, stopped bool, err error) {
	keys := make([]K, walkChunk)
	vals := make([]fwFwSessVal, walkChunk)
	var cursor ebpf.MapBatchCursor
	var del []K
	for {
		if err := ctx.Err(); err != nil {
			return deleted, false, err
		}
		n, lerr := m.BatchLookup(&cursor, keys, vals, nil)
		del = del[:0]
		for i := 0; i < n; i++ {
			e := view(keys[i])
			e.val = vals[i]
			d, s := fn(&e)
			if d {
				del = append(del, keys[i])
			}
			if s {
				stopped = true
				break
			}
		}
		for _, k := range del {
			// One by one: a batch delete stops at the first key a packet
			// or the sweep removed meanwhile.
			if m.Delete(k) == nil {
				deleted++
			}
		}
		if stopped || errors.Is(lerr, ebpf.ErrKeyNotExist) {
			return deleted, stopped, nil
		}
		if lerr != nil {
			return deleted, false, fmt.Errorf("read sessions: %w", lerr)
		}
	}
}

// Sessions lists up to limit sessions (limit <= 0: 1000), IPv4 first, and
// the session counts. Sessions idle past their timeout are not listed (the
// datapath treats them as gone) and leave the table at the next sweep; the
// counts, the tables' element counts, may include them until then.
func (b *Backend) Sessions(ctx context.Context, limit int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	if b == nil {
		return nil, dataplane.SessionCounts{}, dataplane.ErrClosed
	}
	if limit <= 0 {
		limit = 1000
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return nil, dataplane.SessionCounts{}, dataplane.ErrClosed
	}
	if b.objs == nil {
		return nil, dataplane.SessionCounts{}, nil
	}
	res, err := b.countMaps(ctx, []*ebpf.Map{b.objs.FwSessionsV4, b.objs.FwSessionsV6})
	if err != nil {
		return nil, dataplane.SessionCounts{}, fmt.Errorf("count sessions: %w", err)
	}
	for _, r := range res {
		if r.err != nil {
			return nil, dataplane.SessionCounts{}, fmt.Errorf("count sessions: %w", r.err)
		}
	}
	counts := dataplane.SessionCounts{IPv4: res[0].count, IPv6: res[1].count, Total: res[0].count + res[1].count}
	sw, err := b.sweepStats()
	if err == nil {
		counts.Unassured = sw.Unassured[0] + sw.Unassured[1]
		counts.EarlyAging = sw.Aging[0] != 0 || sw.Aging[1] != 0
	}

	var settings fwFwSettings
	if err := b.objs.FwSettingsMap.Lookup(b.slot, &settings); err != nil {
		return nil, counts, fmt.Errorf("read timeouts: %w", err)
	}
	now, err := monotonicNow()
	if err != nil {
		return nil, counts, err
	}
	pending, err := b.pendingCounts(ctx)
	if err != nil {
		return nil, counts, err
	}
	names := zoneNames(b.zones)
	var out []dataplane.Session
	_, err = walkSessions(ctx, b.objs, func(e *sessionEntry) (bool, bool) {
		v := &e.val
		if pc, ok := pending[sessKey{e.proto, e.lo, e.hi}]; ok {
			v.Packets += pc[0]
			v.Bytes += pc[1]
		}
		if now > v.LastSeenNs && now-v.LastSeenNs > sessionTimeout(&settings, sw, e.lo.Addr().Is4(), e.proto, v.Flags) {
			return false, false
		}
		src, dst := e.initiator()
		out = append(out, dataplane.Session{
			Protocol: protoName(e.proto), Source: src.String(), Destination: dst.String(),
			Packets: v.Packets, Bytes: v.Bytes,
			IdleSeconds: float64(now-min(now, v.LastSeenNs)) / 1e9,
			State:       sessState(e.proto, v.Flags), Assured: sessAssured(e.proto, v.Flags),
			FromZone: names[uint32(v.FromZone)], ToZone: names[uint32(v.ToZone)],
		})
		b.sessionNAT(&out[len(out)-1], e)
		return false, len(out) >= limit
	})
	if err != nil {
		return out, counts, fmt.Errorf("list sessions: %w", err)
	}
	return out, counts, nil
}

// timeoutSlot is the datapath's timeout_slot: the enum fw_timeout index
// of a protocol and state.
func timeoutSlot(proto uint8, st dataplane.SessionState) int {
	if proto == 6 {
		switch st {
		case dataplane.StateOpening:
			return 0
		case dataplane.StateClosing:
			return 2
		case dataplane.StateClosed:
			return 3
		}
		return 1
	}
	base := 8 // other
	switch proto {
	case 17:
		base = 4
	case 1, 58:
		base = 6
	}
	if st == dataplane.StateUnreplied {
		return base
	}
	return base + 1
}

// sessionTimeout is the datapath's sess_timeout for a session of family v4
// (or v6).
func sessionTimeout(set *fwFwSettings, sw fwFwSweep, v4 bool, proto uint8, flags uint32) uint64 {
	st := sessState(proto, flags)
	to := set.TimeoutNs[timeoutSlot(proto, st)]
	fam := 1
	if v4 {
		fam = 0
	}
	if (st == dataplane.StateOpening || st == dataplane.StateUnreplied) && set.AgingDiv > 1 && sw.Aging[fam] != 0 {
		to /= uint64(set.AgingDiv)
	}
	return to
}

func zoneNames(ids map[string]uint32) map[uint32]string {
	out := make(map[uint32]string, len(ids))
	for name, id := range ids {
		out[id] = name
	}
	return out
}

// sweepStats reads what the kernel's sweep last found.
func (b *Backend) sweepStats() (fwFwSweep, error) {
	var sw fwFwSweep
	if err := b.objs.FwSweepMap.Lookup(uint32(0), &sw); err != nil {
		return sw, fmt.Errorf("read sweep stats: %w", err)
	}
	return sw, nil
}

// endDeniedSessions judges every session again as its first packet would
// be under set (its initiator's tuple, its zones) and ends those the
// policy denies or whose zones are gone. Returns how many it ended.
func (b *Backend) endDeniedSessions(ctx context.Context, set *policy.Set, zones map[string]uint32) (int, error) {
	names := zoneNames(zones)
	return walkSessions(ctx, b.objs, func(e *sessionEntry) (bool, bool) {
		from, fok := names[uint32(e.val.FromZone)]
		to, tok := names[uint32(e.val.ToZone)]
		if !fok || !tok {
			return true, false
		}
		fi, fok := set.ZoneID(from)
		ti, tok := set.ZoneID(to)
		if !fok || !tok {
			return true, false
		}
		allow, _ := set.DecideZones(fi, ti, e.tuple())
		return !allow, false
	})
}

// ClearSessions ends every session f selects (dataplane.SessionClearer).
// The flow caches are invalidated after, so no cached shortcut outlives its
// session.
func (b *Backend) ClearSessions(ctx context.Context, f dataplane.SessionFilter) (int, error) {
	if b == nil {
		return 0, dataplane.ErrClosed
	}
	match, err := sessionMatcher(f)
	if err != nil {
		return 0, err
	}
	// applyMu keeps Apply and Close away, so objs and zones stay as read.
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.isClosed() {
		return 0, dataplane.ErrClosed
	}
	if b.objs == nil {
		return 0, nil
	}
	names := zoneNames(b.zones)
	n, err := walkSessions(ctx, b.objs, func(e *sessionEntry) (bool, bool) {
		return match(e, names), false
	})
	b.cleared.Add(uint64(n))
	if n > 0 {
		if ierr := b.invalidateFlowCaches(); err == nil {
			err = ierr
		}
	}
	return n, err
}

// sessionMatcher compiles a filter; a malformed one is a ConfigError naming
// the field.
func sessionMatcher(f dataplane.SessionFilter) (func(e *sessionEntry, names map[uint32]string) bool, error) {
	var problems []dataplane.Problem
	proto := -1
	if f.Protocol != "" {
		switch strings.ToLower(f.Protocol) {
		case "tcp":
			proto = 6
		case "udp":
			proto = 17
		case "icmp":
			proto = 1
		case "icmpv6":
			proto = 58
		default:
			n, err := strconv.ParseUint(f.Protocol, 10, 8)
			if err != nil {
				problems = append(problems, dataplane.Problem{Field: "protocol", Message: fmt.Sprintf("%q is not tcp, udp, icmp, icmpv6 or a protocol number", f.Protocol)})
			}
			proto = int(n)
		}
	}
	var pfx netip.Prefix
	if f.Address != "" {
		p, err := dataplane.ParsePrefix(f.Address)
		if err != nil {
			problems = append(problems, dataplane.Problem{Field: "address", Message: fmt.Sprintf("%q is not an address or prefix", f.Address)})
		}
		pfx = p
	}
	if len(problems) > 0 {
		return nil, &dataplane.ConfigError{Problems: problems}
	}
	return func(e *sessionEntry, names map[uint32]string) bool {
		if proto >= 0 && int(e.proto) != proto {
			return false
		}
		if pfx.IsValid() && !pfx.Contains(e.lo.Addr()) && !pfx.Contains(e.hi.Addr()) {
			return false
		}
		if f.Port != 0 && e.lo.Port() != f.Port && e.hi.Port() != f.Port {
			return false
		}
		if f.Zone != "" && names[uint32(e.val.FromZone)] != f.Zone && names[uint32(e.val.ToZone)] != f.Zone {
			return false
		}
		return true
	}, nil
}
