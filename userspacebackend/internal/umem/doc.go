// Package umem accounts for the frames of one AF_XDP binding's UMEM: every
// frame is in exactly one [State] at any time, and the per-state counts
// always add up to the number of frames, which is what ResourceStats
// reports as the UMEM breakdown.
//
// # States and transitions
//
//	Free ──AllocFill──▶ FillRing ──Received──▶ RX ──Transmit──▶ TXRing ──Sent──▶ Completion
//	 ▲  ──AllocTX / AllocMirror ─────────────────────────────────▶ TXRing          │
//	 │                                  RX ──Recycle──▶ FillRing                    │
//	 ├──────────────────────────────── RX ──Release                                │
//	 ├──────────────────────────────────────────────────────────── Completed ◀─────┘
//	 FillRing ◀── CompletedToFill (primary frames; mirror frames go to Free)
//
// RX covers frames the kernel placed on the RX ring and frames the
// application is still processing (the two cannot be told apart without
// reading the ring). TXRing covers frames on the TX ring that the kernel has
// not consumed yet; once the ring's consumer passes them the caller calls
// Sent and they await the completion ring. The Accounting also owns the free
// lists, so Alloc* hand out frame addresses.
//
// # Mirror budget
//
// The last MirrorBudget frames of the UMEM are reserved for port-mirror
// clones. AllocMirror takes only from that reserve and primary allocations
// never touch it, so mirroring can never starve the fill ring or the TX
// path; when the reserve is exhausted AllocMirror returns fewer frames and
// the caller counts a mirror drop. A clone is an ordinary frame in an
// ordinary state (TXRing, then Completion, then Free): it is counted once,
// never double-charged, and MirrorInUse is a sub-count of TXRing+Completion,
// not an extra state. Mirror frames never enter the fill ring or RX.
//
// # Errors
//
// A transition that is not possible returns an error wrapping
// [ErrIllegalTransition] and changes nothing (batches are all-or-nothing).
// Without Debug only counts and address ranges are checked (a batch larger
// than its source state, an address outside the UMEM, a mirror frame where
// one cannot be). With Debug each frame's state is tracked and every frame
// of a batch is checked: double frees, freeing a frame that sits in the
// fill ring, receiving a frame twice, a frame twice in one batch. Tests run
// with Debug; it costs a byte per frame and a pass over each batch.
//
// # Concurrency
//
// An Accounting has a single writer: the worker that owns the binding calls
// every transition and Alloc method. [Accounting.Snapshot] may be called
// from any goroutine at any time; it reads the counters under a seqlock
// made of atomics (the writer never waits and never takes a lock), so a
// snapshot is always consistent: its states sum to Total.
package umem
