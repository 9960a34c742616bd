// Package neigh mirrors a network namespace's kernel neighbour table (ARP
// and NDP) into a fixed-capacity table the userspace datapath reads on
// every packet to find the next hop's MAC address.
//
// # Feed
//
// [New] subscribes to the namespace's neighbour notifications through
// netlink (RTNLGRP_NEIGH, with ListExisting) and, before returning, dumps
// the kernel table once through a netlink handle in that namespace, so the
// table is complete when New returns. The subscription comes first: every
// change after the dump is queued on it, and replaying the queue converges
// on the kernel's state. Nothing polls.
//
// An entry is usable, and stored, only in a state whose link-layer address
// the kernel itself transmits to (REACHABLE, PERMANENT, STALE, DELAY,
// PROBE) and with a 6-byte lladdr. RTM_DELNEIGH, and a change to any other
// state (INCOMPLETE, FAILED, NOARP, NONE), removes the entry. Bridge FDB
// and proxy entries are ignored. Keeping STALE entries fresh is the
// kernel's job; the datapath's own traffic does not confirm them, so an
// embedder that must notice a moved neighbour calls Resolve for it now and
// then.
//
// When the kernel overflows the subscription socket (ENOBUFS) netlink ends
// the subscription; an interrupted dump (NLM_F_DUMP_INTR) also makes the
// copy suspect. The table then resubscribes and dumps again, removing every
// entry the new dump no longer shows (deletions lost in the overflow), at
// most once per 50 ms, and counts it in Resyncs. Failures to resubscribe
// are retried with backoff until Close and reported by LastError.
//
// # Capacity
//
// The capacity (normally dataplane.Tables.NeighborsOrDefault()) is split
// across a power-of-two number of shards, like the session table; a shard
// is picked by the top bits of a seeded hash. Each shard is an
// open-addressing array of 32-byte cells at most 3/4 full, with
// backward-shift deletion (no tombstones). A new entry whose shard is full
// is refused and counted in Refused; nothing is ever evicted, so a
// neighbour storm cannot push out the gateway. Used, ShardUsed and
// Capacity are exact per shard.
//
// # Resolving
//
// The datapath cannot ARP by itself. [Table.Resolve] sends RTM_NEWNEIGH
// with NTF_USE: the kernel creates the entry if needed and treats it as if
// it had a packet to send, so it probes (ARP or neighbour solicitation)
// with its own timers and rate limits; the answer reaches the table through
// the subscription. [Table.RequestResolve] queues that call for a
// background goroutine without blocking or allocating, for datapath
// workers.
//
// # Errors
//
// New and Resolve wrap the errno with %w ("verb noun: %w"); bad options
// match [ErrInvalidOptions], Resolve after Close [ErrClosed]. Lookup does
// not fail: a miss is ok == false.
//
// # Concurrency
//
// A Table is safe for concurrent use. One goroutine writes it (the
// subscription consumer); writers of a shard also take that shard's mutex.
// [Table.Lookup] takes no lock and never allocates: it reads a shard's
// cells with atomic loads and validates them with the shard's seqlock,
// retrying only while the writer is moving cells of that shard (an insert
// or a delete: a few stores). A MAC change of an existing entry is a
// single atomic store, so readers see the old or the new MAC, never a mix.
// Used, ShardUsed, Refused, Resyncs and the other counters read atomics;
// their sum over shards is not one atomic snapshot. Close stops the
// subscription and resolver goroutines and waits for them (including
// netlink's own reader); Lookup keeps answering from the last state after
// Close. Close is safe on nil and idempotent.
package neigh
