package ebpfbackend

import (
	"fmt"
	"sort"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
)

// The kernel's fixed per-map and per-element sizes (x86-64, kernel 6.18),
// as its map_mem_usage callbacks count them (the memlock figure in
// /proc/<pid>/fdinfo). They are small next to the per-entry terms, which
// come from the collection spec; TestMemoryCostMatchesKernel checks the
// whole estimate against the kernel's figure for every map.
const (
	kHtab          = 768 // struct bpf_htab
	kHtabElem      = 48  // struct htab_elem before the key
	kBucket        = 16  // struct bucket
	kArray         = 312 // struct bpf_array
	kDevmap        = 344 // struct bpf_dtab
	kCPUMap        = 304 // struct bpf_cpu_map
	kPtr           = 8
	kPage          = 4096
	kMapLockCount  = 8 // HASHTAB_MAP_LOCK_COUNT
	kStageQueueLen = 4096
)

// specOnce parses the compiled collection once per process: map types, key
// and value sizes and max entries follow bpf/xdp_fw.c through it.
var specOnce = sync.OnceValues(loadFw)

// MemoryCost returns the kernel memory loading the datapath for cfg would
// take, map by map, without creating anything: map types, key and value
// sizes and max entries come from the compiled collection spec (so the
// figure follows changes to bpf/xdp_fw.c), the session tables sized by
// tables.sessions, and each map type's size by the kernel's own accounting
// (hash maps preallocate every element and a power-of-two bucket array;
// per-CPU values are multiplied by the possible CPUs).
func MemoryCost(cfg *dataplane.Config) (dataplane.MemoryCost, error) {
	spec, err := specOnce()
	if err != nil {
		return dataplane.MemoryCost{}, fmt.Errorf("load program spec: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return dataplane.MemoryCost{}, fmt.Errorf("count possible CPUs: %w", err)
	}
	capacity := cfg.Tables.SessionsOrDefault()
	names := make([]string, 0, len(spec.Maps))
	for n := range spec.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	var cost dataplane.MemoryCost
	for _, n := range names {
		m := spec.Maps[n]
		max := sizedEntries(n, m.MaxEntries, capacity, cpus)
		if m.Type == ebpf.CPUMap {
			max = min(max, uint32(cpus)) // cilium/ebpf sizes it to the possible CPUs
		}
		b, detail := mapBytes(m.Type, m.Flags, m.KeySize, m.ValueSize, max, cpus)
		cost.Parts = append(cost.Parts, dataplane.MemoryPart{Name: n, Bytes: b, Detail: detail})
	}
	if len(cfg.PortMirroring) > 0 {
		// A mirror stage gives every online CPU a cpumap queue (pointer
		// ring) when a rule samples densely; counted whenever mirroring is
		// configured, as an upper bound.
		b := uint64(cpus) * kStageQueueLen * kPtr
		cost.Parts = append(cost.Parts, dataplane.MemoryPart{Name: "mirror stage queues", Bytes: b,
			Detail: fmt.Sprintf("%d CPUs x %d slots x %d B", cpus, kStageQueueLen, kPtr)})
	}
	return cost, nil
}

func round8(n uint32) uint64 { return (uint64(n) + 7) &^ 7 }

func pageAlign(n uint64) uint64 { return (n + kPage - 1) &^ (kPage - 1) }

func pow2(n uint32) uint64 {
	p := uint64(1)
	for p < uint64(n) {
		p <<= 1
	}
	return p
}

// mapBytes is the kernel's map_mem_usage for one map (kernel/bpf/
// hashtab.c, arraymap.c, devmap.c, cpumap.c), as a function of what the
// spec declares.
func mapBytes(t ebpf.MapType, flags uint32, key, value, max uint32, cpus int) (uint64, string) {
	nc := uint64(cpus)
	entries := uint64(max)
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.HashOfMaps:
		const noPrealloc = 1 // BPF_F_NO_PREALLOC
		percpu := t == ebpf.PerCPUHash || t == ebpf.LRUCPUHash
		lru := t == ebpf.LRUHash || t == ebpf.LRUCPUHash
		fd := t == ebpf.HashOfMaps
		val := round8(value)
		if percpu || fd {
			val = kPtr // a pointer to the per-CPU values, or to the inner map
		}
		elem := kHtabElem + round8(key) + val
		b := uint64(kHtab) + 4*kMapLockCount*nc + pow2(max)*kBucket // + its per-CPU lock counters (ints)
		n := entries
		if !percpu && !lru && !fd {
			n += nc // extra elements for in-place updates
		}
		if flags&noPrealloc != 0 {
			// Elements are allocated as they are inserted: count a full
			// table, the most it can take.
			n = entries
		}
		b += elem * n
		switch {
		case percpu:
			b += round8(value) * nc * n
		case !lru:
			b += kPtr * nc
		}
		return b, fmt.Sprintf("%d entries x %d B + %d buckets x %d B", n, elem, pow2(max), kBucket)
	case ebpf.Array, ebpf.PerCPUArray:
		const mmapable = 1 << 10 // BPF_F_MMAPABLE
		elem := round8(value)
		if t == ebpf.PerCPUArray {
			return kArray + entries*kPtr + entries*elem*nc, fmt.Sprintf("%d entries x %d B x %d CPUs", entries, elem, nc)
		}
		if flags&mmapable != 0 {
			return pageAlign(kArray) + pageAlign(entries*elem), fmt.Sprintf("%d entries x %d B, page-aligned", entries, elem)
		}
		return kArray + entries*elem, fmt.Sprintf("%d entries x %d B", entries, elem)
	case ebpf.DevMapHash:
		return kDevmap + pow2(max)*kPtr, fmt.Sprintf("%d buckets x %d B", pow2(max), kPtr)
	case ebpf.DevMap:
		return kDevmap + entries*kPtr, fmt.Sprintf("%d entries x %d B", entries, kPtr)
	case ebpf.CPUMap:
		return kCPUMap + entries*kPtr, fmt.Sprintf("%d entries x %d B", entries, kPtr)
	}
	// Unknown types: key and value per entry, a lower bound.
	return entries * (uint64(key) + uint64(value)), fmt.Sprintf("%d entries x %d B (lower bound)", entries, key+value)
}

// sizedEntries is the size load gives map name: the session tables (and
// what a session holds one entry of) take tables.sessions, the rings of
// early-drop candidates recentRing of it; the others keep the size the C
// gives them.
func sizedEntries(name string, inC, capacity uint32, cpus int) uint32 {
	switch name {
	case "fw_sessions_v4", "fw_sessions_v6", "fw_nat_ports", "fw_nat_rev":
		// A v4 session holds at most one pool slot and one reverse entry.
		return capacity
	case "fw_recent_v4", "fw_recent_v6":
		return recentRing(capacity)
	}
	return inC
}
