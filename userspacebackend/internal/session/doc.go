// Package session is the userspace backend's sharded, fixed-capacity session
// (connection tracking) table.
//
// # Layout
//
// The table has a power-of-two number of shards. The total capacity given
// to [New] is split across them (the first capacity%shards shards hold one
// more), and each shard preallocates everything it will ever use:
//
//   - a dense array of 72-byte slots holding the sessions, with stable slot
//     numbers (a freed slot goes on a free list and is reused), and
//   - an open-addressing index of 8-byte words (32-bit hash, slot number)
//     with linear probing, at most 3/4 full, with backward-shift deletion
//     so there are no tombstones to decay the probe lengths.
//
// Nothing on the datapath allocates and the garbage collector sees no
// pointers inside the arrays. At the default sizes a session costs 72 bytes
// of slot plus 16 bytes of index (88 B); TestMemoryPerSession measures it
// with runtime.MemStats and fails above 96 B.
//
// A shard is chosen by the top bits of a seeded 64-bit hash (the seed is
// random per table, so remote peers cannot aim flows at one shard). Because
// capacity is split, one shard can be full while others have room: Insert
// then fails even though Used() < Capacity(). MaxSkew reports how uneven the
// shards are; with random hashing a table typically refuses its first
// insert at roughly 97-99 % total fill.
//
// # Both directions, one session
//
// A session is stored once under a canonical key: of the two endpoints
// (address, port), the smaller is side A. A packet of either direction
// maps to the same key, so one session serves both directions and Used()
// counts flows, not directions. The slot remembers which side initiated,
// so [Table.Lookup] can say whether a packet goes [Forward] (initiator to
// responder) or [Reverse].
//
// # Expiry and a full table
//
// A session expires when it has been idle longer than the timeout of its
// protocol (dataplane.Timeouts.For). Expiry is lazy and bounded: Lookup
// removes an expired session it finds and reports a miss; [Table.Expire]
// sweeps a bounded number of slots per call (round-robin over the shards)
// for a housekeeping goroutine. Until one of them runs, an expired session
// still occupies its slot and is counted in Used().
//
// When an Insert finds its shard full it first reclaims expired sessions
// in that shard (a sweep of at most 256 slots). If none is
// expired it fails with [ErrFull] and counts the refusal (Refused). A live
// session is never evicted to make room: no surprise drops of established
// flows.
//
// # Time
//
// Times are int64 nanoseconds from any clock the caller chooses (typically
// a coarse monotonic clock read once per batch); the table only compares
// them. A time earlier than a session's last-seen time never expires it.
//
// # Errors
//
// Insert returns [ErrFull], unwrapped so the datapath does not allocate;
// match it with errors.Is. Nothing else fails.
//
// # Concurrency
//
// A Table is safe for concurrent use, with no global lock. The hit paths of
// Lookup, LookupBatch and Touch take no lock at all: they read the index
// and the slot with atomic loads and validate the slot with a per-slot
// seqlock, then refresh it with atomic adds (so two cores hitting
// different flows share no written cache line). Inserts, removals, expiry
// and anything a hit path finds unusual (a slot being rewritten, an expired
// session, a miss) lock exactly one shard (a sync.Mutex). Expire and
// Snapshot lock one shard at a time. Used, ShardUsed, Counts, Refused,
// Expired and MaxSkew read per-shard atomics without any lock, so
// ResourceStats never waits for the datapath; their sums are not one atomic
// snapshot across shards, each shard's count is exact.
//
// Packet and byte counters are statistics: a removal racing with a
// lock-free hit may count that packet on the slot's next session. Verdicts
// are exact: a hit is only reported for a slot whose seqlock did not move
// while its key was compared.
package session
