package ebpfbackend

import "github.com/fwplane/fwplane/dataplane"

// Supported lists the config features this backend implements. Anything a
// config needs beyond these is refused by Apply with a
// *dataplane.NotSupportedError (fail closed): static routes are not
// implemented, and there are no per-queue bindings to select.
func Supported() []dataplane.Feature {
	return []dataplane.Feature{
		dataplane.FeatureIPv4Forwarding,
		dataplane.FeatureIPv6Forwarding,
		dataplane.FeatureStatefulPolicy,
		dataplane.FeaturePortPolicy,
		dataplane.FeaturePortMirroring,
		dataplane.FeatureMirrorSampling,
		dataplane.FeatureTCAttach,
		dataplane.FeatureSourceNAT,
		dataplane.FeatureDestinationNAT,
	}
}

// unsupported returns one reason per feature cfg needs that this backend
// lacks.
func unsupported(cfg *dataplane.Config) []string {
	have := map[dataplane.Feature]bool{}
	for _, f := range Supported() {
		have[f] = true
	}
	why := map[dataplane.Feature]string{
		dataplane.FeatureStaticRoutes:   "forwarding.routes: static routes are not implemented by the eBPF backend (it forwards with the kernel FIB; add the routes to the host)",
		dataplane.FeatureQueueSelection: "userspace.queues: queue selection applies to the userspace backend only",
		dataplane.FeatureNATv6:          "nat: IPv6 NAT is not implemented (the eBPF backend translates IPv4 only: see dataplane/nat.go)",
	}
	var reasons []string
	for _, f := range cfg.Features() {
		if have[f] {
			continue
		}
		r, ok := why[f]
		if !ok {
			r = string(f) + ": not supported by the eBPF backend"
		}
		reasons = append(reasons, r)
	}
	return reasons
}
