// Package fwplane is a packet dataplane for firewalls, as a Go library.
//
// A firewall project hands fwplane a [dataplane.Config] (interfaces, zones,
// ordered zone-pair policies with default deny, table sizes, timeouts, port
// mirroring) and gets back a running [dataplane.DataPlane] that forwards,
// enforces the policy statefully and reports every bounded resource it
// uses, whichever backend runs:
//
//   - ebpfbackend forwards in the kernel: an XDP or TC program on every
//     managed interface keeps sessions in hash tables (swept in the
//     kernel), evaluates the policy on the first packet of a flow and
//     redirects through a devmap, with the kernel's FIB and neighbour table
//     choosing the next hop.
//   - userspacebackend forwards in Go over AF_XDP sockets: a small XDP shim
//     steers IP traffic to one socket per interface queue, and workers keep
//     a sharded session table, a flow cache and a neighbour table fed from
//     netlink.
//
// # Choosing a backend
//
// [Open] probes the host (BPF, XDP, bpf_link, devmap, LRU maps, AF_XDP, the
// map-counting kfunc, per-interface XDP features), reads what the config
// needs ([dataplane.Config.Features]) and picks a backend with stated
// reasons (package capability). Auto prefers the eBPF backend, which
// forwards fastest, and falls back to userspace when the eBPF backend cannot
// do what the config asks: a feature it lacks, more than its declared
// limits (100 000 policies, say), or more memory than the budget
// ([Options.MemoryBudget], by default half the host's memory; a typo in
// tables.sessions is refused in milliseconds with the figures, before
// anything is allocated). When the chosen backend's Apply still refuses the
// config, Open tries the next one and the decision says why. Name a backend
// in [Options.Backend] and set [Options.Strict] to forbid the fallback.
// fwplane fails closed: a config that no allowed backend can run is an
// error listing every reason, never a dataplane that silently ignores a
// feature or a setting.
//
// The config is the network's desired state; how this process runs it is
// [Options]: the namespace, the budget, and each backend's own options
// ([Options.EBPF], [Options.Userspace]; nil means defaults), used when that
// backend runs. docs/architecture.md ("Config or options") has the rule.
//
// # When the process dies
//
// By default the dataplane leaves with the process, and the kernel then
// forwards unfiltered. Set [Options.PinDir] ([PinDirFor] names the usual
// one) and it outlives the process: the eBPF backend keeps enforcing with
// its sessions, the userspace backend's shims drop transit traffic and
// keep the host reachable; the next Open with the same PinDir adopts it.
// Close removes it; [dataplane.Releaser]'s Release leaves it running for
// an upgrade; [RemovePinned] removes an orphan. docs/failure-model.md has
// the table of what the network sees in each case.
//
// # Resource reports
//
// [dataplane.DataPlane.ResourceStats] returns one report of every bounded
// resource (name, kind, scope, capacity, used, and how it was counted) plus
// counters and session counts. A utilisation exists only where the capacity
// is real; a count that cannot be made is absent, never a false zero.
// Package render prints it as the operator's `show system buffers` table and
// package metrics exports it to Prometheus.
//
// # Example
//
//	cfg, err := dataplane.ParseConfig(jsonBytes) // every problem, with its field
//	if err != nil {
//		return err
//	}
//	dp, decision, err := fwplane.Open(ctx, cfg, nil)
//	if err != nil {
//		return err // errors.Is(err, dataplane.ErrNotSupported): see decision.Explain()
//	}
//	defer dp.Close() // detaches every program, removes what was pinned
//	log.Print(decision.Explain())
//
//	report, err := dp.ResourceStats(ctx)
//	if err != nil {
//		return err
//	}
//	render.Buffers(os.Stdout, report, nil)
//
// Re-apply a changed config with dp.Apply: it is all-or-nothing, and a
// config the running backend cannot do is refused with the reasons while
// the old one keeps forwarding.
package fwplane
