package dptest

import "github.com/fwplane/fwplane/dataplane"

// Divergence is a known difference between a backend and the contract a
// case checks. The case still runs on that backend: a failure is reported
// as a skip that names the divergence (never silently), and a pass fails
// the test, so the entry is removed in the change that fixes the backend.
type Divergence struct {
	Case  string
	Mode  dataplane.Mode
	Issue string
	Why   string
}

// Divergences is the one list of known differences. Remove an entry when
// its fix lands (the suite fails until you do).
var Divergences = []Divergence{
	{"icmp/related errors", dataplane.ModeUserspace, "issue 14 item 3",
		"ICMP errors are judged as new ICMP flows by policy instead of being related to the session they quote"},
	{"icmp/unrelated errors", dataplane.ModeUserspace, "issue 14 item 3",
		"an ICMP error quoting no flow is forwarded when a policy allows ICMP, instead of dropped and counted (dropped_icmp_unrelated)"},
	{"icmp/ttl 1", dataplane.ModeUserspace, "issue 14 item 3",
		"a packet whose TTL would expire is dropped silently (dropped_ttl_expired) instead of answered with time exceeded"},
	{"icmp/above the mtu", dataplane.ModeUserspace, "issue 14 item 3",
		"no MTU check: a packet above the egress MTU is neither answered with fragmentation needed / packet too big nor delivered"},
	{"neighbour/unresolved next hop", dataplane.ModeUserspace, "issue 14 item 3",
		"the first packet to an unresolved next hop is dropped (dropped_no_neighbor) while the kernel resolves it; the eBPF backend hands it to the kernel, which delivers it"},
}

// divergence returns the entry for a case on a backend.
func divergence(name string, mode dataplane.Mode) (Divergence, bool) {
	for _, d := range Divergences {
		if d.Case == name && d.Mode == mode {
			return d, true
		}
	}
	return Divergence{}, false
}
