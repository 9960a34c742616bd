// Package diagnose turns the debugging map operators work through by hand
// when forwarding breaks (seed 001: packets never arrive, bindings never go
// live, replies die, throughput collapses) into checks with verdicts.
//
// [Gather] reads the dataplane's report and the kernel's statistics of
// every interface in the dataplane's namespace twice, a window apart
// (default 2 s); [Run] answers each question from the current report and
// the counter deltas over the window:
//
//	backend   Which backend and attach mode are in force, and why?
//	reach     Are packets reaching the dataplane (per interface, received
//	          vs handed to it)? Is traffic arriving on interfaces it does
//	          not manage? Received is the kernel's count (netlink, in the
//	          dataplane's namespace). Handed is the shim's per-interface
//	          count on the userspace backend; the eBPF backend counts its
//	          program's verdicts for all interfaces together, so there the
//	          check compares them in total, checks per interface only that
//	          the program is attached, and says that per-interface judged
//	          counts are not available.
//	bindings  Are the AF_XDP bindings live on every queue?
//	fill      Is a fill ring draining to zero; are RX buffer allocations
//	          failing (XDP_STATISTICS)?
//	tx        Is TX backpressure dropping frames or starving the fill
//	          ring; are completions reaped; is an egress down? Judged on
//	          growth over the window (pending TX in the first snapshot vs
//	          the last; completions held at both ends), not on one level.
//	          On the eBPF backend TX is the kernel's: link state and the
//	          kernel's TX drop counters only.
//	sessions  Is the session table full or early-dropping?
//	mirror    Is port mirroring shedding clones?
//	drops     Drops by reason, largest first.
//	resources Is any bounded resource (detail rows included) at WARNING
//	          or above, or unreadable?
//
// Each [Check] has a [Verdict] (ok, suspect, failing, or n/a where the
// question does not apply to the running backend, saying why), the
// figures that decided it and what to look at next. [Report.Failed] is
// what a CLI's exit status reports.
//
// Run is pure (no system calls): feed it snapshots from anywhere. Gather
// reads the kernel through netlink (vishvananda/netlink) on Linux.
//
// # Concurrency and errors
//
// Functions are safe for concurrent use. Gather returns an error when the
// report or the interface statistics cannot be read, or when ctx ends
// before the window has passed; Run never fails: a question it cannot
// answer from what it was given says so in its check.
package diagnose
