// Package capability probes the host, reads what a config needs, and picks
// a backend with stated reasons. It fails closed: a config whose features no
// allowed backend supports is an error listing every reason, never a
// dataplane that silently ignores a feature.
//
// # Probes
//
// Each probe tries the operation (through cilium/ebpf's features package
// where it covers it) and is cached for the life of the process. A probe
// result follows cilium/ebpf's contract:
//
//   - nil: available;
//   - errors.Is(err, ErrNotSupported): not available on this host;
//   - any other error: inconclusive (for example a permission error). An
//     inconclusive probe is never taken as absence: the decision notes it
//     and the backend's own setup is left to fail loudly if it must.
//
// # Decisions
//
// [Decide] is pure: given a config, a probed (or synthetic) [Host], the
// backends' declared support and the caller's preference, it returns the
// chosen mode and, for every backend considered, supported or the exact
// reasons why not. [Decision.Explain] renders it for people; the Decision
// marshals to JSON for machines.
//
// A backend is refused when the config needs a feature it does not
// declare, a host probe it requires failed, the config exceeds the limits
// it declares (Backend.Limits: policy terms, zones, interfaces, table
// sizes; internal/limits.Check, the same code its Apply runs), or what the
// config would make it allocate (Backend.Memory, computed without
// allocating) exceeds Request.MemoryBudget, by default
// [DefaultMemoryShare] of Host.MemoryBytes. Each reason gives the figures.
//
// Everything in this package is safe for concurrent use.
package capability
