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
// capacity is split, one shard can be full while others have room: Create
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
// so [Table.Track] can say whether a packet goes [Forward] (initiator to
// responder) or [Reverse].
//
// # The session model
//
// The table implements the model of dataplane/session.go (the eBPF
// backend implements the same; the conformance suite compares them).
// [Table.Track] applies a packet to its flow's session: the zone check
// (a packet of the initiator's direction must come from the session's
// FromZone, a reply from its ToZone, else [WrongZone] and nothing
// changes), the TCP state machine on the packet's flags (opening ->
// established and assured by SYN, SYN-ACK, ACK; closing on a FIN;
// closed on FINs from both sides or an RST; a pure SYN meeting a closed
// session ends it and reports a [Miss], so the SYN is judged as a new
// flow), unreplied -> replied and assured on the first reply for other
// protocols, then the idle timer and the counters. [Table.Create] makes
// the session of an allowed first packet in the state the caller judged
// (opening for a SYN, established and unassured for a picked-up TCP
// flow, unreplied otherwise). The state, assured bit, reply-seen bit and
// the FIN seen from each side live in the spare bits of key word 4, so a
// slot stays 72 bytes; the two zones take the 4 bytes the free-list link
// uses while the slot is free.
//
// # Address translation
//
// A translated session (CreateNAT, after EnableNAT) holds both tuples:
// its own key is the initiator's tuple as it arrived, and the tuple its
// packets leave with is kept in a NAT extension (24 bytes per slot) and
// found through a second, reverse index ([Table.TrackReply], used on a
// miss of Track), so the responder's replies find the session too.
// Packets of the two forms a translated flow never takes (the reply to
// the untranslated tuple, the initiator's packet already translated) are
// reported [Untranslated] and change nothing. Every end of a translated
// session removes its reverse entry and calls the release hook once, so
// the caller's pool slot returns exactly when the session ends.
// [Table.Relate] relates ICMP errors to translated sessions by either
// tuple and says how to translate them back. See nat.go.
//
// # Expiry, a full table, early aging
//
// A session expires when it has been idle longer than the timeout of its
// protocol and state (dataplane.Timeouts.ForState). Expiry is lazy and
// bounded: Track removes an expired session it finds and reports a miss;
// [Table.Expire] sweeps a bounded number of slots per call (round-robin
// over the shards) for a housekeeping goroutine. Until one of them runs,
// an expired session still occupies its slot and is counted in Used().
//
// When Create finds its shard full it examines [EarlyDropSample] (64)
// slots from the shard's cursor (which moves on, so repeated attempts
// cover the whole shard): every expired session among them is reclaimed;
// if none was, the unassured session among them that has been idle the
// longest is evicted (early drop, [Table.EarlyDrops]). An assured,
// unexpired session is never evicted. Otherwise Create fails with
// [ErrFull] and counts the refusal (Refused).
//
// While the table holds 80 % of its capacity or more (one atomic counter
// for the whole table, updated by every insert and removal), the timeouts
// of the unassured states (TCP opening, unreplied) are divided by the
// early aging factor; [Table.EarlyAging] says when.
//
// # Time
//
// Times are int64 nanoseconds from any clock the caller chooses (typically
// a coarse monotonic clock read once per batch); the table only compares
// them. A time earlier than a session's last-seen time never expires it.
//
// # Errors
//
// Create and Insert return [ErrFull], unwrapped so the datapath does not
// allocate; match it with errors.Is. Nothing else fails.
//
// # Concurrency
//
// A Table is safe for concurrent use, with no global lock. The hit paths of
// Track, TrackBatch, Lookup, Touch, Translation and Rewrite take no lock at all: they read the
// index and the slot with atomic loads and validate the slot with a
// per-slot seqlock, move the state bits with a compare-and-swap (two
// workers seeing the two directions of one flow race only there), then
// refresh it with atomic adds (so two cores hitting different flows share
// no written cache line; almost every packet changes no state and does no
// CAS). Creates, removals, expiry and anything a hit path finds unusual (a
// slot being rewritten, an expired session, a miss, a lost CAS, a closed
// session to end) lock exactly one shard (a sync.Mutex). Expire, EndIf,
// Related and Snapshot lock one shard at a time. Used, ShardUsed, Counts,
// Unassured, Refused, EarlyDrops, Expired, EarlyAging and MaxSkew read
// atomics without any lock, so
// ResourceStats never waits for the datapath; their sums are not one atomic
// snapshot across shards, each shard's count is exact.
//
// Packet and byte counters are statistics: a removal racing with a
// lock-free hit may count that packet on the slot's next session. Verdicts
// are exact: a hit is only reported for a slot whose seqlock did not move
// while its key was compared.
package session
