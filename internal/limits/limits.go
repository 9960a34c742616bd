// Package limits checks a config against a backend's declared
// [dataplane.Limits]: one implementation that the capability gate runs
// before it chooses a backend and each backend's Apply runs before it
// builds anything, so both refuse a config that does not fit with the same
// words and figures.
//
// Check is pure and safe for concurrent use.
package limits

import (
	"fmt"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
)

// Check returns one reason per limit cfg exceeds, each naming the config
// field, what the config needs and what the backend holds ("policies: zone
// pair a -> b expands to 300 terms ..., the ebpf backend evaluates at most
// 256 per zone pair"). backend names the backend in the reasons. rs is
// cfg's normalised rule set, or nil to normalise it here when a term limit
// needs it. cfg must be valid (an invalid one is one reason).
func Check(cfg *dataplane.Config, rs *policy.Ruleset, l dataplane.Limits, backend string) []string {
	var reasons []string
	add := func(format string, args ...any) { reasons = append(reasons, fmt.Sprintf(format, args...)) }
	if l.Zones > 0 && len(cfg.Zones) > l.Zones {
		add("zones: %d zones, the %s backend supports at most %d", len(cfg.Zones), backend, l.Zones)
	}
	if l.Interfaces > 0 && len(cfg.Interfaces) > l.Interfaces {
		add("interfaces: %d interfaces, the %s backend supports at most %d", len(cfg.Interfaces), backend, l.Interfaces)
	}
	if l.MirrorRules > 0 && len(cfg.PortMirroring) > l.MirrorRules {
		add("port_mirroring: %d rules, the %s backend supports at most %d", len(cfg.PortMirroring), backend, l.MirrorRules)
	}
	if (l.PolicyTermsPerZonePair > 0 || l.PolicyTerms > 0) && len(cfg.Policies) > 0 {
		if rs == nil {
			var err error
			if rs, err = policy.Normalize(cfg); err != nil {
				return append(reasons, err.Error())
			}
		}
		per, largest, total := rs.TermCounts()
		if n := per[largest]; l.PolicyTermsPerZonePair > 0 && n > l.PolicyTermsPerZonePair {
			over := 0
			for _, c := range per {
				if c > l.PolicyTermsPerZonePair {
					over++
				}
			}
			add("policies: zone pair %s -> %s expands to %d terms (one per source x destination x port range), the %s backend evaluates at most %d per zone pair (%d zone pair(s) over the limit)",
				rs.Zones[largest.From], rs.Zones[largest.To], n, backend, l.PolicyTermsPerZonePair, over)
		}
		if l.PolicyTerms > 0 && total > l.PolicyTerms {
			add("policies: %d policies expand to %d terms, the %s backend holds at most %d", len(cfg.Policies), total, backend, l.PolicyTerms)
		}
	}
	if l.NATRules > 0 || l.NATPools > 0 {
		snat, dnat, pools := NATCounts(cfg)
		if l.NATRules > 0 && snat > l.NATRules {
			add("nat: source rules expand to %d entries (one per source prefix), the %s backend holds at most %d", snat, backend, l.NATRules)
		}
		if l.NATRules > 0 && dnat > l.NATRules {
			add("nat: destination rules expand to %d entries (one per source prefix), the %s backend holds at most %d", dnat, backend, l.NATRules)
		}
		if l.NATPools > 0 && pools > l.NATPools {
			add("nat: %d source-NAT pools (one per pool rule, one per interface of the to_zone of a masquerading rule), the %s backend holds at most %d", pools, backend, l.NATPools)
		}
	}
	table := func(field string, set, effective uint32, tl dataplane.TableLimit) {
		switch {
		case tl.NotSized != "" && set != 0:
			add("%s: set to %d, but the %s backend has no such table: %s", field, set, backend, tl.NotSized)
		case tl.Fixed != 0 && set != 0 && set != tl.Fixed:
			add("%s: %d entries asked, the %s backend's table has a fixed size of %d", field, set, backend, tl.Fixed)
		case tl.Max != 0 && effective > tl.Max:
			add("%s: %d entries, the %s backend supports at most %d", field, effective, backend, tl.Max)
		}
	}
	table("tables.sessions", cfg.Tables.Sessions, cfg.Tables.SessionsOrDefault(), l.Sessions)
	table("tables.flow_cache", cfg.Tables.FlowCache, cfg.Tables.FlowCacheOrDefault(), l.FlowCache)
	table("tables.neighbors", cfg.Tables.Neighbors, cfg.Tables.NeighborsOrDefault(), l.Neighbors)
	return reasons
}

// NATCounts returns what cfg's NAT rules take: source-NAT and
// destination-NAT entries (a rule once per source prefix, once if it has
// none) and source-NAT pools (one per pool rule, one per interface of the
// to_zone for a masquerading rule).
func NATCounts(cfg *dataplane.Config) (snat, dnat, pools int) {
	perZone := map[string]int{}
	for _, it := range cfg.Interfaces {
		perZone[it.Zone]++
	}
	for _, r := range cfg.NAT {
		n := max(1, len(r.Sources))
		switch r.Type {
		case dataplane.NATSource:
			snat += n
			if r.Masquerade {
				pools += perZone[r.ToZone]
			} else {
				pools++
			}
		case dataplane.NATDestination:
			dnat += n
		}
	}
	return snat, dnat, pools
}
