package ebpfbackend

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
)

// Map kinds without a dataplane constant: only this backend has them.
const (
	kindHashOfMaps = "hash_of_maps"
	kindCPUMap     = "cpumap"
)

// counterNames names every counter of enum fw_counter (generated from the
// C by bpf2go); TestCounterNames fails when the enum gains a value without
// a name here.
var counterNames = map[fwFwCounter]string{
	fwFwCounterFW_CNT_FORWARDED:               "forwarded",
	fwFwCounterFW_CNT_PASS_NON_IP:             "passed_non_ip",
	fwFwCounterFW_CNT_PASS_ND:                 "passed_neighbor_discovery",
	fwFwCounterFW_CNT_PASS_LOCAL:              "passed_local",
	fwFwCounterFW_CNT_PASS_NO_NEIGH:           "passed_no_neighbor",
	fwFwCounterFW_CNT_PASS_TTL:                "passed_ttl_expired",
	fwFwCounterFW_CNT_PASS_FRAG_NEEDED:        "passed_fragmentation_needed",
	fwFwCounterFW_CNT_PASS_FWD_DISABLED:       "passed_forwarding_disabled",
	fwFwCounterFW_CNT_PASS_UNMANAGED:          "passed_unmanaged_ingress",
	fwFwCounterFW_CNT_DROP_POLICY:             "dropped_policy",
	fwFwCounterFW_CNT_DROP_NO_ROUTE:           "dropped_no_route",
	fwFwCounterFW_CNT_DROP_PARSE:              "dropped_parse_error",
	fwFwCounterFW_CNT_DROP_FRAGMENT:           "dropped_fragment",
	fwFwCounterFW_CNT_DROP_EGRESS_UNMANAGED:   "dropped_egress_unmanaged",
	fwFwCounterFW_CNT_DROP_UNSUPPORTED_ROUTE:  "dropped_unsupported_route",
	fwFwCounterFW_CNT_SESSION_HIT:             "session_hits",
	fwFwCounterFW_CNT_SESSION_EXPIRED:         "sessions_expired",
	fwFwCounterFW_CNT_SESSION_CREATED_V4:      "sessions_created_ipv4",
	fwFwCounterFW_CNT_SESSION_CREATED_V6:      "sessions_created_ipv6",
	fwFwCounterFW_CNT_FIB_LOOKUP:              "fib_lookups",
	fwFwCounterFW_CNT_FLOW_CACHE_HIT:          "flow_cache_hits",
	fwFwCounterFW_CNT_RELATED_ICMP:            "related_icmp",
	fwFwCounterFW_CNT_DROP_ICMP_UNRELATED:     "dropped_icmp_unrelated",
	fwFwCounterFW_CNT_PASS_EGRESS_NOT_XDP:     "passed_egress_not_xdp",
	fwFwCounterFW_CNT_PASS_GSO_TOO_BIG:        "passed_gso_too_big",
	fwFwCounterFW_CNT_SESSION_EARLY_DROP:      dataplane.CounterSessionEarlyDrop,
	fwFwCounterFW_CNT_SESSION_TABLE_FULL:      dataplane.CounterSessionTableFull,
	fwFwCounterFW_CNT_DROP_TCP_NOT_SYN:        dataplane.CounterDropTCPNotSYN,
	fwFwCounterFW_CNT_DROP_ZONE_MISMATCH:      dataplane.CounterDropZoneMismatch,
	fwFwCounterFW_CNT_SESSION_REOPENED:        "sessions_reopened",
	fwFwCounterFW_CNT_SESSION_EXPIRED_EVICTED: "sessions_expired_evicted",
	fwFwCounterFW_CNT_NAT_CREATED:             dataplane.CounterNATTranslated,
	fwFwCounterFW_CNT_NAT_EXHAUSTED:           dataplane.CounterNATPoolExhausted,
	fwFwCounterFW_CNT_NAT_UNSUPPORTED:         dataplane.CounterNATUnsupportedProto,
	fwFwCounterFW_CNT_NAT_REVERSE_MISS:        dataplane.CounterNATReverseMiss,
	fwFwCounterFW_CNT_NAT_ICMP_XLATED:         "nat_icmp_errors_translated",
}

type namedMap struct {
	name string
	m    *ebpf.Map
}

// named lists every map of the program, read from the maps struct bpf2go
// generates (its `ebpf:"..."` tags are the maps' names in the C), so a map
// added to the C is reported without a line here. The session tables come
// first: they are what an operator looks for.
func (o *fwObjects) named() []namedMap {
	v := reflect.ValueOf(&o.fwMaps).Elem()
	out := make([]namedMap, 0, v.NumField())
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if name == "" || !ok {
			continue
		}
		out = append(out, namedMap{name, m})
	}
	first := func(n string) int {
		if strings.HasPrefix(n, "fw_sessions_") {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(out, func(a, b namedMap) int {
		if c := first(a.name) - first(b.name); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	return out
}

func kindOf(t ebpf.MapType) string {
	switch t {
	case ebpf.Hash:
		return dataplane.KindHash
	case ebpf.LRUHash:
		return dataplane.KindLRUHash
	case ebpf.PerCPUHash:
		return dataplane.KindPerCPUHash
	case ebpf.Array:
		return dataplane.KindArray
	case ebpf.PerCPUArray:
		return dataplane.KindPerCPUArray
	case ebpf.LPMTrie:
		return dataplane.KindLPMTrie
	case ebpf.DevMap, ebpf.DevMapHash:
		return dataplane.KindDevMap
	case ebpf.HashOfMaps:
		return kindHashOfMaps
	case ebpf.CPUMap:
		return kindCPUMap
	}
	return t.String()
}

// countable says whether a map keeps a real element count; arrays and
// devmaps have every slot (or no count), so they get no utilisation. A
// hash of maps is a hash table (of the mirror's broadcast maps) and is
// counted like one (batch, or a walk).
func countable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.HashOfMaps:
		return true
	}
	return false
}

// ResourceStats reports every map the program uses, the datapath counters
// and the session counts. It runs concurrently with Apply and forwarding.
func (b *Backend) ResourceStats(ctx context.Context) (rep dataplane.ResourceReport, err error) {
	if b == nil {
		return dataplane.ResourceReport{}, dataplane.ErrClosed
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return dataplane.ResourceReport{}, dataplane.ErrClosed
	}
	rep = dataplane.ResourceReport{Mode: dataplane.ModeEBPF, Generation: b.gen, Taken: time.Now()}
	// Named results: the deferred assignment must reach the caller.
	defer func() { rep.Took = time.Since(rep.Taken) }()
	if b.objs == nil {
		// Nothing loaded yet: no maps to report, and no made-up zeros.
		return rep, nil
	}

	var toCount []*ebpf.Map
	var rows []dataplane.Resource
	var countIdx []int
	for _, nm := range b.objs.named() {
		r := dataplane.Resource{
			Name:      nm.name,
			Kind:      kindOf(nm.m.Type()),
			Scope:     "global",
			Capacity:  uint64(nm.m.MaxEntries()),
			KeySize:   nm.m.KeySize(),
			ValueSize: nm.m.ValueSize(),
		}
		if countable(nm.m.Type()) {
			countIdx = append(countIdx, len(rows))
			toCount = append(toCount, nm.m)
		}
		rows = append(rows, r)
	}
	results, err := b.countMaps(ctx, toCount)
	var v4, v6 *uint64
	for i, ri := range countIdx {
		r := &rows[ri]
		if err != nil {
			r.Error = err.Error()
			continue
		}
		res := results[i]
		if res.err != nil {
			r.Error = res.err.Error()
			continue
		}
		r.Used = dataplane.Uint64(res.count)
		r.Method = res.method
		r.Cost = res.cost
		r.Partial = !res.complete
		r.Restarts = res.restarts
		switch r.Name {
		case "fw_sessions_v4":
			if res.complete {
				v4 = r.Used
			}
		case "fw_sessions_v6":
			if res.complete {
				v6 = r.Used
			}
		}
	}
	sw, swErr := b.sweepStats()
	rows = append(rows, b.unassuredRows(sw, swErr)...)
	rows = append(rows, natRows(b.objs, &b.nat.plan)...)
	rep.Resources = rows
	if v4 != nil && v6 != nil {
		rep.Sessions = &dataplane.SessionCounts{IPv4: *v4, IPv6: *v6, Total: *v4 + *v6}
		if swErr == nil {
			rep.Sessions.Unassured = sw.Unassured[0] + sw.Unassured[1]
			rep.Sessions.EarlyAging = sw.Aging[0] != 0 || sw.Aging[1] != 0
		}
	}

	// A part of the read that fails becomes its map's row in error; the
	// rest of the report stands (an operator still sees every table).
	counters, err := readCounters(b.objs.FwCounters)
	if err != nil {
		markRow(rep.Resources, "fw_counters", fmt.Errorf("read counters: %w", err))
	}
	for i, v := range counters {
		rep.Counters = append(rep.Counters, dataplane.Counter{Name: counterNames[fwFwCounter(i)], Scope: "global", Value: v})
	}
	var generic, tc uint64
	for name, a := range b.attached {
		if a.generic {
			generic++
			rep.Counters = append(rep.Counters, dataplane.Counter{Name: "xdp_generic_mode", Scope: name, Detail: true, Value: 1})
		}
		if a.mode == dataplane.AttachedTC {
			tc++
		}
		rep.Interfaces = append(rep.Interfaces, dataplane.InterfaceStatus{Name: name, Ifindex: a.ifindex, Zone: b.zoneOf(name), Attach: a.mode, Reason: a.reason})
	}
	slices.SortFunc(rep.Interfaces, func(x, y dataplane.InterfaceStatus) int { return strings.Compare(x.Name, y.Name) })
	mc, err := b.mirrorCounters(b.objs)
	if err != nil {
		markRow(rep.Resources, "fw_mirror_counts", err)
	}
	rep.Counters = append(rep.Counters, mc...)
	rep.Counters = append(rep.Counters,
		dataplane.Counter{Name: "sessions_expired_swept", Scope: "global", Value: sw.Expired},
		dataplane.Counter{Name: "session_sweeps", Scope: "global", Value: sw.Runs},
		dataplane.Counter{Name: dataplane.CounterSessionsEndedByPolicy, Scope: "global", Value: b.endedByPolicy.Load()},
		dataplane.Counter{Name: dataplane.CounterSessionsCleared, Scope: "global", Value: b.cleared.Load()},
		dataplane.Counter{Name: "nat_masquerade_updates", Scope: "global", Value: b.masqUpdates.Load()},
		dataplane.Counter{Name: "nat_masquerade_update_errors", Scope: "global", Value: b.masqUpdateErrors.Load()},
		dataplane.Counter{Name: "nat_masquerade_sessions_ended", Scope: "global", Value: b.masqEnded.Load()},
		dataplane.Counter{Name: "xdp_interfaces", Scope: "global", Value: uint64(len(b.attached)) - tc},
		dataplane.Counter{Name: "xdp_interfaces_generic_mode", Scope: "global", Value: generic},
		dataplane.Counter{Name: "tc_interfaces", Scope: "global", Value: tc})
	return rep, nil
}

// markRow records err on the named row: the counters it holds are
// missing from the report.
func markRow(rows []dataplane.Resource, name string, err error) {
	for i := range rows {
		if rows[i].Name == name {
			rows[i].Error = err.Error() + " (its counters are missing from this report)"
			return
		}
	}
}

// unassuredRows are the sessions_unassured rows, one per family (each
// family has a table of the configured size): counted by the kernel's
// sweep at its last pass (Method "sweep", Cost its pass time). Without a
// pass yet there is no count, and the row says why.
func (b *Backend) unassuredRows(sw fwFwSweep, err error) []dataplane.Resource {
	rows := make([]dataplane.Resource, 2)
	for i, fam := range []string{"ipv4", "ipv6"} {
		r := dataplane.Resource{Name: dataplane.ResourceSessionsUnassured, Kind: dataplane.KindTable, Scope: fam,
			Capacity: uint64(b.capacity), Method: methodSweep}
		switch {
		case err != nil:
			r.Error = err.Error()
		case sw.Runs == 0:
			r.Error = "the in-kernel sweep has not run yet"
		default:
			r.Used = dataplane.Uint64(sw.Unassured[i])
			r.Cost = time.Duration(sw.TookNs)
		}
		rows[i] = r
	}
	return rows
}

// methodSweep: counted by the kernel's session sweep at its last pass.
const methodSweep = "sweep"

// readCounters sums the per-CPU counters (one element holds them all).
func readCounters(m *ebpf.Map) ([]uint64, error) {
	var per []fwFwCpuCounters
	if err := m.Lookup(uint32(0), &per); err != nil {
		return nil, err
	}
	out := make([]uint64, fwFwCounterFW_CNT_MAX)
	for _, c := range per {
		for i := range out {
			out[i] += c.C[i]
		}
	}
	// The cache-hit path bumps one counter less: a flow-cache hit is a
	// session hit by construction (entries exist only for live sessions).
	out[fwFwCounterFW_CNT_SESSION_HIT] += out[fwFwCounterFW_CNT_FLOW_CACHE_HIT]
	return out, nil
}

type sessKey struct {
	proto  uint8
	lo, hi netip.AddrPort
}

// pendingCounts reads every CPU's flow cache for packets and bytes forwarded
// from it but not yet added to their session (the datapath adds them when
// it refreshes the entry), keyed like the sessions.
func (b *Backend) pendingCounts(ctx context.Context) (map[sessKey][2]uint64, error) {
	out := map[sessKey][2]uint64{}
	var idx uint32
	var per []fwFwFlow
	it := b.objs.FwFlowCache.Iterate()
	for it.Next(&idx, &per) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for _, f := range per {
			if f.Packets == 0 || (f.Key.Family != 4 && f.Key.Family != 6) {
				continue
			}
			k := canonicalKey(f.Key)
			c := out[k]
			c[0] += f.Packets
			c[1] += f.Bytes
			out[k] = c
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read flow cache: %w", err)
	}
	return out, nil
}

// canonicalKey orders a directional flow key's endpoints as session_key in
// bpf/xdp_fw.c does (address words as the datapath reads them, then port).
func canonicalKey(k fwFwFlowKey) sessKey {
	srcLo := k.Sport <= k.Dport
	for i := range k.Saddr {
		if k.Saddr[i] != k.Daddr[i] {
			srcLo = k.Saddr[i] < k.Daddr[i]
			break
		}
	}
	ap := func(a [4]uint32, port uint16) netip.AddrPort {
		if k.Family == 4 {
			return addrPort4(a[0], port)
		}
		return addrPort6(a, port)
	}
	s, d := ap(k.Saddr, k.Sport), ap(k.Daddr, k.Dport)
	if srcLo {
		return sessKey{k.Proto, s, d}
	}
	return sessKey{k.Proto, d, s}
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

func protoClass(p uint8) int {
	switch p {
	case 6:
		return 0
	case 17:
		return 1
	case 1, 58:
		return 2
	}
	return 3
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// Keys hold addresses and ports as the packet carries them (network order
// bytes read as little-endian words).
func addrPort4(a uint32, port uint16) netip.AddrPort {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], a)
	return netip.AddrPortFrom(netip.AddrFrom4(b), ntohs(port))
}

func addrPort6(a [4]uint32, port uint16) netip.AddrPort {
	var b [16]byte
	for i, w := range a {
		binary.LittleEndian.PutUint32(b[i*4:], w)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(b), ntohs(port))
}

func ntohs(v uint16) uint16 { return v>>8 | v<<8 }

// zoneOf returns the zone of a managed interface in the applied config.
func (b *Backend) zoneOf(name string) string {
	if b.cfg == nil {
		return ""
	}
	for _, it := range b.cfg.Interfaces {
		if it.Name == name {
			return it.Zone
		}
	}
	return ""
}
