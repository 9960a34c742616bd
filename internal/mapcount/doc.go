// Package mapcount counts how full BPF maps are, correctly under churn and
// as cheaply as the kernel allows. The eBPF backend's ResourceStats uses it
// to fill dataplane.Resource.Used for hash-type maps.
//
// # Methods
//
// Three ways to count, cheapest first (figures: 1M-entry hash map, key 16 B,
// value 64 B, 90 % full, on a busy 2-vCPU kernel 6.18 VM, medians of 3;
// reproduce with scripts/bench-mapcount.sh):
//
//   - kfunc: one read of an iter/bpf_map program (bpf/mapcount.c) that
//     writes a 16-byte (map id, bpf_map_sum_elem_count(map)) record for
//     every map on the system: ~15 µs for a read with few maps, 0.4-0.6 µs
//     a map beyond (2500 maps in 0.9-1.6 ms). Exact to within the inserts
//     and deletes in flight during the read. Kernel >= 6.6 with BTF, hash, LRU hash, per-CPU hash and LRU
//     per-CPU hash only (the kernel keeps no count for arrays or LPM tries).
//   - batch: BPF_MAP_LOOKUP_BATCH in chunks of 4096 (one pass: 0.21-0.40 s,
//     2.3-4.5 M entries/s depending on the day; split over 2 CPUs: 0.21 s,
//     4.6 M entries/s on a day a single pass took 0.40 s). The hash-table
//     batch copies values too (it cannot be made keys-only), and it scans
//     empty buckets, so its cost follows max entries rather than fill. Its
//     cursor is a bucket index: it never restarts, each bucket is read
//     under its lock, and the range can be split among workers that start
//     at their own buckets (BatchOptions.Workers; the default is
//     GOMAXPROCS, at most 4), so under churn it is off by at most the
//     operations that ran during it (measured ±0.2 % at 200-420 k ops/s on
//     a 32 768-entry map). Hash types only:
//     for other types (LPM tries) the kernel's batch lookup is a next-key
//     loop with the restart problem below and none of Walk's defences, so
//     Batch refuses them with ebpf.ErrNotSupported.
//   - walk: keys-only BPF_MAP_GET_NEXT_KEY (~2.2 s, 2.0x faster than
//     cilium/ebpf's Map.Iterate, which also looks each value up: ~4.5 s;
//     paired runs, 1.55-2.10x under load). Syscalls are 95 % of its time.
//     Works for every countable type, including LPM tries.
//
// Counter picks per map: kfunc when the kernel has it and the type keeps a
// count, else batch when the type has a bucket cursor, else walk. Arrays,
// per-CPU arrays, devmaps, xskmaps and other types whose every slot always
// exists get ErrNotCountable: report their capacity without a utilisation.
//
// # Walking under churn
//
// htab_map_get_next_key, given a key that no longer exists, restarts from
// bucket 0 and silently returns the first key of the map. A naive walk
// whose cursor is deleted therefore counts the head of the map again: the
// measured over-count reaches +44 % (a map churned at ~280 k ops/s) and +100 % (this
// package's churn test, WalkOptions.Naive). Value lookups between next-key
// calls widen the window ~100x, which is why Walk reads keys only.
//
// Detecting a restart with keys only: within one pass over the buckets the
// kernel returns every key at most once, so a key returned twice means the
// cursor was lost. Walk remembers fingerprints of the first 4096 keys of
// the pass (a restart returns the map's first key, almost always one of
// them, so detection is immediate) and of one key in 16 over the whole pass
// (so a restart is still noticed within ~16 surviving keys even if churn
// replaced the whole head). Remembering every key was measured too: 16 MiB
// for a 1M-entry map and a cache miss per key made the walk 25-40 %
// slower, for no better count. The sampled detector costs ~1 MiB for 1M
// keys and no measurable time next to the syscalls. Fingerprints are 64-bit
// (per-walk random seed): with 32 bits a false "seen" would be likely
// every few thousand keys of a large map, and each costs a pass.
//
// On a restart Walk, as the issue asks, resumes from the key before the
// lost cursor, once (next-key of that key continues exactly where the pass
// was, minus the deleted cursor). If that key is gone too, Walk begins a
// new pass from the first key and forgets the old one: the count is always
// that of one pass, never a union of passes, so it means what a walk of a
// quiet map means. All passes together are capped at 4x max entries
// next-key calls, like Cilium's DumpReliablyWithCallback; at the cap, or
// when ctx ends (checked every 4096 keys), the Result says Complete=false.
//
// The bound this gives (asserted by TestIntegrationChurn): every counted
// key is distinct within the pass and existed when the kernel returned it;
// every key that existed throughout the pass is counted (a pass only ends
// at the last bucket and resumes before, never after, its cursor). So with
// D deletes and I inserts during the walk, a map of size S is counted in
// [S - D, S + I] (plus one for an operation in flight at each end), and in
// expectation about S, since keys deleted behind the cursor and inserted
// ahead of it balance. Measured over several runs at 200-320 k ops/s on a
// full 32 768-entry map (up to 130 k operations during one walk, i.e. the
// whole map replaced four times): every walk within -0.4 % .. +0.8 %;
// naive walks in the same runs: up to +260 %. A first version that began
// the new pass where the repeat was noticed, instead of asking for the
// first key, under-counted by 69 % once: TestIntegrationWalkRestart pins
// that case. When churn replaces every remembered key of a pass before a
// restart, no key-only walk can notice it; the count is then still within
// the bound above, which at that churn is wide.
//
// # Errors and concurrency
//
// Errors wrap their cause with %w: ErrNotCountable for map types without a
// fill level, ebpf.ErrNotSupported when the kernel lacks a method (NewKfunc:
// no BTF, no iterator or kfunc; Batch: no batch lookup for the type), the
// context's error when ctx ends (with the partial Result). Walk, Batch,
// Kfunc.Counts and Counter.Count are safe for concurrent use; Close is safe
// on nil and idempotent.
package mapcount
