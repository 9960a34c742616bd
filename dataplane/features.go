package dataplane

import (
	"slices"
)

// Feature names something a config needs from a backend. The capability
// gate compares a config's features with what each backend supports.
type Feature string

const (
	FeatureIPv4Forwarding Feature = "ipv4_forwarding"
	FeatureIPv6Forwarding Feature = "ipv6_forwarding"
	FeatureStatefulPolicy Feature = "stateful_policy"
	FeaturePortPolicy     Feature = "port_policy"
	FeatureStaticRoutes   Feature = "static_routes"
	FeaturePortMirroring  Feature = "port_mirroring"
	FeatureMirrorSampling Feature = "mirror_sampling"
	FeatureQueueSelection Feature = "queue_selection"
	// FeatureTCAttach: an interface forces attach mode "tc".
	FeatureTCAttach       Feature = "tc_attach"
	FeatureSourceNAT      Feature = "source_nat"
	FeatureDestinationNAT Feature = "destination_nat"
	// FeatureNATv6: a NAT rule names an IPv6 address or ICMPv6.
	FeatureNATv6 Feature = "nat_ipv6"
)

// AllFeatures lists every feature a config can need, in a stable order.
var AllFeatures = []Feature{
	FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeatureStatefulPolicy, FeaturePortPolicy,
	FeatureStaticRoutes, FeaturePortMirroring, FeatureMirrorSampling, FeatureQueueSelection,
	FeatureTCAttach, FeatureSourceNAT, FeatureDestinationNAT, FeatureNATv6,
}

// Features lists what the config needs, sorted and without duplicates. It
// does not validate: call Validate first.
//
// IPv4 and IPv6 forwarding are always needed: a firewall that forwards one
// family must not silently pass or drop the other.
func (c *Config) Features() []Feature {
	fs := []Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding}
	if len(c.Policies) > 0 {
		fs = append(fs, FeatureStatefulPolicy)
	}
	for _, p := range c.Policies {
		if len(p.DestinationPorts) > 0 {
			fs = append(fs, FeaturePortPolicy)
			break
		}
	}
	if len(c.Forwarding.Routes) > 0 {
		fs = append(fs, FeatureStaticRoutes)
	}
	if len(c.PortMirroring) > 0 {
		fs = append(fs, FeaturePortMirroring)
	}
	for _, m := range c.PortMirroring {
		if m.Rate > 1 {
			fs = append(fs, FeatureMirrorSampling)
			break
		}
	}
	for _, it := range c.Interfaces {
		if it.Attach == AttachTC {
			fs = append(fs, FeatureTCAttach)
			break
		}
	}
	for _, r := range c.NAT {
		switch r.Type {
		case NATSource:
			fs = append(fs, FeatureSourceNAT)
		case NATDestination:
			fs = append(fs, FeatureDestinationNAT)
		}
		if r.natV6() {
			fs = append(fs, FeatureNATv6)
		}
	}
	if len(c.Userspace.Queues) > 0 {
		fs = append(fs, FeatureQueueSelection)
	}
	slices.Sort(fs)
	return slices.Compact(fs)
}

// natV6 reports whether the rule names IPv6 anywhere.
func (r NATRule) natV6() bool {
	if r.Protocol == ProtoICMPv6 {
		return true
	}
	for _, list := range [][]string{r.Sources, r.Pool, {r.Destination, r.TranslateTo}} {
		for _, s := range list {
			if s == "" {
				continue
			}
			if p, err := ParsePrefix(s); err == nil && p.Addr().Is6() {
				return true
			}
		}
	}
	return false
}
