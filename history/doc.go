// Package history keeps a bounded, in-memory history of a dataplane's
// resource reports, so that operators see where a table or ring is going,
// not only where it is: the change per minute of every counted row, the
// time until it is full, and threshold events (a row entering or leaving
// WARNING or CRITICAL, with hysteresis).
//
// A [Recorder] reads a report at a fixed interval (default 1 s) through
// dataplane.ReadResourceStats, so a backend that can write a report in
// place (the userspace backend) allocates nothing per sample. Sampling
// runs on its own goroutine and never on the datapath: the report is the
// backend's ordinary lock-free read.
//
// # What is kept, and its memory
//
// Every row with a count and a capacity (a utilisation) is recorded, keyed
// by (Name, Scope); rows without one (arrays, rows in error) are not.
// Each row keeps two rings:
//
//   - fine: the last Options.Fine samples at the interval (default 300,
//     5 minutes at 1 s), 8 bytes each;
//   - coarse: one bucket per minute (min, max, last) over
//     Options.Retention (default 1 h), 32 bytes each.
//
// With the defaults a row's rings take 300*8 + 60*32 = 4 320 bytes; on
// the heap a row costs about 5 000 bytes, measured (BenchmarkRowMemory:
// the row struct, its map entry and the allocator's size classes come on
// top; docs/benchmarks.md). At most Options.MaxRows rows (default 4096)
// are kept: about 19.5 MiB at most.
// Rows beyond MaxRows are not recorded and are counted
// ([Stats].RowsRefused). A row not seen for the retention is forgotten. A
// row whose capacity changes (a reload resized a table) starts its
// history afresh: samples of another capacity would mislead the trend.
// [Recorder.Stats] reports the rows kept and the bytes their rings use
// (the rings only: about 14 % below the heap they cost).
// [Recorder.Series] answers from the fine samples when they cover the
// request (or while they are all there is), else from the minute buckets.
//
// # Trend and time to full
//
// [Recorder.Trends] fits a least-squares line through the last
// Options.TrendWindow of fine samples of each row. The change per minute
// is the slope times 60, shown once the window holds at least 10 samples
// spanning half the window. So that a long sampling interval cannot
// silently disable trends, the window scales with the interval:
//
//	window = min(max(TrendWindow, 12 × Interval), Fine × Interval)
//
// With the defaults (60 s, 1 s, 300) that is 60 s; at a 10 s interval
// 2 min, at 1 min 12 min (12 intervals: the 10 samples and two to spare
// for a late tick). At a short interval the window is capped at the fine
// ring's span (100 ms × 300 = 30 s), which still holds 300 samples.
// Fine is raised to at least 12. [Recorder.Options] and [Stats] give the
// window in force; [Trend].Window the span actually fitted.
//
// "Full in" (capacity minus the last count, over the slope) is shown only
// while the row is rising steadily:
//
//   - the fitted rise over the window is at least 1 entry and at least
//     0.1 % of the capacity (else the row is "flat", or "falling" when
//     it goes down as much);
//   - the fit explains at least 80 % of the variance (R² >= 0.8; else the
//     row is "unsteady": the numbers go up and down, and a time to full
//     would be a guess).
//
// A row at its capacity is "full". [Trend.Estimate] names which case
// applies.
//
// # Events
//
// A row enters WARNING at the warning threshold (80 %) and CRITICAL at the
// critical one (90 %); it leaves a level only once its utilisation falls
// Options.Hysteresis points (default 5) below that level's threshold, so a
// row hovering at a threshold makes one event, not one per sample. Each
// change of level is an [Event]: logged once with log/slog (WARN going up,
// INFO going down) with the row, the figures and the time to full, counted
// per row and level ([Recorder.EventCounts]), and kept in a ring of the
// last Options.MaxEvents (default 256) for [Recorder.Events].
//
// # Concurrency and errors
//
// A Recorder is safe for concurrent use: readers (Trends, Series, Events,
// EventCounts, Stats) may run while it samples. [Recorder.Run] samples
// until its context ends; a failed read is counted ([Stats].ReadErrors),
// logged once per run of failures, and sampling goes on. Series returns
// an error matching [ErrNoRow] for a row it does not keep.
package history
