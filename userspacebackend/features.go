package userspacebackend

import (
	"fmt"

	"github.com/fwplane/fwplane/dataplane"
)

// Supported lists the config features this backend implements. Anything a
// config needs beyond these is refused by Apply with a
// *dataplane.NotSupportedError (fail closed): static routes are not
// implemented (egress comes from the host's routing table, as in the eBPF
// backend).
func Supported() []dataplane.Feature {
	return []dataplane.Feature{
		dataplane.FeatureIPv4Forwarding,
		dataplane.FeatureIPv6Forwarding,
		dataplane.FeatureStatefulPolicy,
		dataplane.FeaturePortPolicy,
		dataplane.FeatureQueueSelection,
		dataplane.FeaturePortMirroring,
		dataplane.FeatureMirrorSampling,
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
		dataplane.FeatureStaticRoutes: "forwarding.routes: static routes are not implemented by the userspace backend (it forwards with the host's routing table; add the routes to the host)",
		dataplane.FeatureTCAttach: "interfaces[].attach: \"tc\" is an attach mode of the eBPF backend; the userspace backend always attaches an XDP shim " +
			"(on interfaces with checksum offload it completes the partial checksums itself)",
		dataplane.FeatureNATv6: "nat[]: IPv6 address translation (NAT66, NPTv6) is not implemented by the userspace backend; its NAT rules are IPv4 only " +
			"(IPv6 flows are forwarded as the policy says, untranslated)",
	}
	var reasons []string
	for _, f := range cfg.Features() {
		if have[f] {
			continue
		}
		r, ok := why[f]
		if !ok {
			r = fmt.Sprintf("%s: not supported by the userspace backend", f)
		}
		reasons = append(reasons, r)
	}
	return reasons
}
