package dataplane

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"time"
)

// maxIfNameLen is IFNAMSIZ-1: the kernel's longest interface name.
const maxIfNameLen = 15

// Validate checks the whole config and returns a *ConfigError with every
// problem found, each naming its JSON field path, or nil.
func (c *Config) Validate() error {
	if c == nil {
		return &ConfigError{Problems: []Problem{{Field: "(config)", Message: "config is nil"}}}
	}
	v := &validator{}
	zones := v.zones(c.Zones)
	ifaces := v.interfaces(c.Interfaces, zones)
	for i, p := range c.Policies {
		v.policy(fmt.Sprintf("policies[%d]", i), p, zones)
	}
	for i, r := range c.Forwarding.Routes {
		v.route(fmt.Sprintf("forwarding.routes[%d]", i), r, ifaces)
	}
	v.tables(c.Tables)
	v.timeouts(c.Timeouts)
	v.mirrors(c.PortMirroring, ifaces)
	for i, r := range c.NAT {
		v.nat(fmt.Sprintf("nat[%d]", i), r, zones)
	}
	v.userspace(c.Userspace)
	if len(v.problems) == 0 {
		return nil
	}
	return &ConfigError{Problems: v.problems}
}

type validator struct{ problems []Problem }

func (v *validator) addf(field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) name(field, kind, s string, maxLen int) bool {
	switch {
	case s == "":
		v.addf(field, "%s name is required", kind)
	case maxLen > 0 && len(s) > maxLen:
		v.addf(field, "%s name %q is longer than %d bytes", kind, s, maxLen)
	case strings.ContainsAny(s, "/ \t\n\r\x00:"):
		v.addf(field, "%s name %q contains a space, '/', ':' or a control character", kind, s)
	default:
		return true
	}
	return false
}

func (v *validator) zones(zs []Zone) map[string]bool {
	seen := make(map[string]bool, len(zs))
	if len(zs) == 0 {
		v.addf("zones", "at least one zone is required")
	}
	for i, z := range zs {
		f := fmt.Sprintf("zones[%d].name", i)
		if !v.name(f, "zone", z.Name, 64) {
			continue
		}
		if seen[z.Name] {
			v.addf(f, "duplicate zone %q", z.Name)
		}
		seen[z.Name] = true
	}
	return seen
}

func (v *validator) interfaces(is []Interface, zones map[string]bool) map[string]bool {
	seen := make(map[string]bool, len(is))
	if len(is) == 0 {
		v.addf("interfaces", "at least one interface is required")
	}
	for i, it := range is {
		f := fmt.Sprintf("interfaces[%d]", i)
		if v.name(f+".name", "interface", it.Name, maxIfNameLen) {
			if seen[it.Name] {
				v.addf(f+".name", "duplicate interface %q", it.Name)
			}
			seen[it.Name] = true
		}
		switch {
		case it.Zone == "":
			v.addf(f+".zone", "zone is required")
		case !zones[it.Zone]:
			v.addf(f+".zone", "unknown zone %q", it.Zone)
		}
		switch it.Attach {
		case "", AttachAuto, AttachXDP, AttachTC:
		default:
			v.addf(f+".attach", "unknown attach mode %q (want auto, xdp or tc)", it.Attach)
		}
	}
	return seen
}

func (v *validator) policy(f string, p Policy, zones map[string]bool) {
	for _, side := range []struct{ field, zone string }{{".from_zone", p.FromZone}, {".to_zone", p.ToZone}} {
		switch {
		case side.zone == "":
			v.addf(f+side.field, "zone is required")
		case !zones[side.zone]:
			v.addf(f+side.field, "unknown zone %q", side.zone)
		}
	}
	v.prefixes(f+".sources", p.Sources)
	v.prefixes(f+".destinations", p.Destinations)
	switch p.Protocol {
	case "", ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6:
	default:
		v.addf(f+".protocol", "unknown protocol %q (want any, tcp, udp, icmp or icmpv6)", p.Protocol)
	}
	if len(p.DestinationPorts) > 0 && p.Protocol != ProtoTCP && p.Protocol != ProtoUDP {
		v.addf(f+".destination_ports", "ports need protocol tcp or udp, not %q", protoName(p.Protocol))
	}
	for j, r := range p.DestinationPorts {
		pf := fmt.Sprintf("%s.destination_ports[%d]", f, j)
		if r.First == 0 {
			v.addf(pf, "port 0 is not a valid destination port")
		}
		if r.First > r.Last {
			v.addf(pf, "range %d-%d is reversed", r.First, r.Last)
		}
	}
	switch p.Action {
	case ActionAllow, ActionDeny:
	case "":
		v.addf(f+".action", "action is required (allow or deny)")
	default:
		v.addf(f+".action", "unknown action %q (want allow or deny)", p.Action)
	}
}

func protoName(p Protocol) string {
	if p == "" {
		return string(ProtoAny)
	}
	return string(p)
}

func (v *validator) prefixes(f string, ps []string) {
	for j, s := range ps {
		if _, err := ParsePrefix(s); err != nil {
			v.addf(fmt.Sprintf("%s[%d]", f, j), "%q is not an address or CIDR prefix", s)
		}
	}
}

func (v *validator) route(f string, r Route, ifaces map[string]bool) {
	dst, err := ParsePrefix(r.Destination)
	if err != nil {
		v.addf(f+".destination", "%q is not a CIDR prefix", r.Destination)
	}
	switch {
	case r.Interface == "":
		v.addf(f+".interface", "interface is required")
	case !ifaces[r.Interface]:
		v.addf(f+".interface", "%q is not a managed interface", r.Interface)
	}
	if r.Gateway != "" {
		gw, gerr := netip.ParseAddr(r.Gateway)
		switch {
		case gerr != nil:
			v.addf(f+".gateway", "%q is not an IP address", r.Gateway)
		case err == nil && gw.Is4() != dst.Addr().Is4():
			v.addf(f+".gateway", "gateway %s and destination %s are of different address families", gw, dst)
		}
	}
}

func (v *validator) tables(t Tables) {
	for _, e := range []struct {
		field string
		n     uint32
	}{{"tables.sessions", t.Sessions}, {"tables.flow_cache", t.FlowCache}, {"tables.neighbors", t.Neighbors}} {
		if e.n > MaxTableEntries {
			v.addf(e.field, "must be <= %d, got %d", MaxTableEntries, e.n)
		}
	}
}

func (v *validator) timeouts(t Timeouts) {
	for _, e := range []struct {
		field string
		d     Duration
	}{
		{"timeouts.tcp", t.TCP}, {"timeouts.tcp_opening", t.TCPOpening}, {"timeouts.tcp_closing", t.TCPClosing},
		{"timeouts.tcp_closed", t.TCPClosed}, {"timeouts.udp", t.UDP}, {"timeouts.udp_unreplied", t.UDPUnreplied},
		{"timeouts.icmp", t.ICMP}, {"timeouts.icmp_unreplied", t.ICMPUnreplied}, {"timeouts.other", t.Other},
		{"timeouts.other_unreplied", t.OtherUnreplied},
	} {
		switch {
		case e.d < 0:
			v.addf(e.field, "must be >= 0, got %s", time.Duration(e.d))
		case time.Duration(e.d) > MaxTimeout:
			v.addf(e.field, "must be <= %s, got %s", MaxTimeout, time.Duration(e.d))
		}
	}
	if t.EarlyAgingFactor > MaxEarlyAgingFactor {
		v.addf("timeouts.early_aging_factor", "must be <= %d, got %d", MaxEarlyAgingFactor, t.EarlyAgingFactor)
	}
}

func (v *validator) mirrors(rs []MirrorRule, ifaces map[string]bool) {
	firstByInput := make(map[string]int, len(rs))
	for i, r := range rs {
		f := fmt.Sprintf("port_mirroring[%d]", i)
		switch {
		case r.Input == "":
			v.addf(f+".input", "input interface is required")
		case !ifaces[r.Input]:
			v.addf(f+".input", "%q is not a managed interface", r.Input)
		default:
			if j, dup := firstByInput[r.Input]; dup {
				v.addf(f+".input", "duplicate ingress %q: port_mirroring[%d] already mirrors it (one output per ingress)", r.Input, j)
			} else {
				firstByInput[r.Input] = i
			}
		}
		if v.name(f+".output", "output interface", r.Output, maxIfNameLen) && r.Output == r.Input {
			v.addf(f+".output", "output %q is the same interface as the input", r.Output)
		}
		switch {
		case r.Rate < 0:
			v.addf(f+".rate", "must be >= 0, got %d", r.Rate)
		case r.Rate > MaxMirrorRate:
			v.addf(f+".rate", "must be <= %d (32-bit), got %d", int64(MaxMirrorRate), r.Rate)
		}
	}
}

func (v *validator) userspace(u UserspaceOpts) {
	if u.FramesPerBinding > MaxUMEMFrames {
		v.addf("userspace.frames_per_binding", "must be <= %d, got %d", MaxUMEMFrames, u.FramesPerBinding)
	}
	ringOK := true
	if u.RingSize != 0 && (u.RingSize < 8 || u.RingSize > MaxRingSize || bits.OnesCount32(u.RingSize) != 1) {
		v.addf("userspace.ring_size", "must be a power of two from 8 to %d, got %d", MaxRingSize, u.RingSize)
		ringOK = false
	}
	if ringOK && u.FramesPerBinding <= MaxUMEMFrames && u.FramesOrDefault() < 2*u.RingSizeOrDefault() {
		v.addf("userspace.frames_per_binding", "%d frames cannot back a fill ring and a TX ring of %d each: need >= %d",
			u.FramesOrDefault(), u.RingSizeOrDefault(), 2*u.RingSizeOrDefault())
	}
	seen := map[int]bool{}
	for i, q := range u.Queues {
		f := fmt.Sprintf("userspace.queues[%d]", i)
		switch {
		case q < 0 || q > 4095:
			v.addf(f, "queue must be from 0 to 4095, got %d", q)
		case seen[q]:
			v.addf(f, "duplicate queue %d", q)
		}
		seen[q] = true
	}
	if s := u.SessionShards; s != 0 && (s > 4096 || bits.OnesCount32(s) != 1) {
		v.addf("userspace.session_shards", "must be a power of two from 1 to 4096, got %d", s)
	}
	if b := u.BatchSize; b != 0 && ringOK && b > u.RingSizeOrDefault() {
		v.addf("userspace.batch_size", "must be <= the ring size %d, got %d", u.RingSizeOrDefault(), b)
	}
}

func (v *validator) nat(f string, r NATRule, zones map[string]bool) {
	zone := func(field, z string, required bool) {
		switch {
		case z == "" && required:
			v.addf(f+field, "zone is required")
		case z != "" && !zones[z]:
			v.addf(f+field, "unknown zone %q", z)
		}
	}
	v.prefixes(f+".sources", r.Sources)
	switch r.Protocol {
	case "", ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6:
	default:
		v.addf(f+".protocol", "unknown protocol %q (want any, tcp, udp, icmp or icmpv6)", r.Protocol)
	}
	addr := func(field, s string) {
		if s == "" {
			v.addf(f+field, "address is required")
			return
		}
		if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" {
			v.addf(f+field, "%q is not an IP address", s)
		}
	}
	portRange := func(field string, pr PortRange) {
		if pr.First == 0 || pr.First > pr.Last {
			v.addf(f+field, "range %s must be from 1 up, first <= last", pr)
		}
	}
	switch r.Type {
	case NATSource:
		zone(".from_zone", r.FromZone, true)
		zone(".to_zone", r.ToZone, true)
		switch {
		case r.Masquerade && len(r.Pool) > 0:
			v.addf(f+".pool", "masquerade and a pool exclude each other")
		case !r.Masquerade && len(r.Pool) == 0:
			v.addf(f+".pool", "a source-NAT rule needs a pool or masquerade")
		}
		v.prefixes(f+".pool", r.Pool)
		if n := len(PoolAddresses(r.Pool)); n > MaxNATPoolAddresses {
			v.addf(f+".pool", "%d addresses, at most %d", n, MaxNATPoolAddresses)
		}
		if r.Ports != (PortRange{}) {
			portRange(".ports", r.Ports)
		}
		for field, set := range map[string]bool{".destination": r.Destination != "", ".destination_ports": r.DestinationPorts != (PortRange{}),
			".translate_to": r.TranslateTo != "", ".translate_port": r.TranslatePort != 0} {
			if set {
				v.addf(f+field, "belongs to destination NAT, not to a source rule")
			}
		}
	case NATDestination:
		zone(".from_zone", r.FromZone, false)
		if r.ToZone != "" {
			v.addf(f+".to_zone", "destination NAT routes by the translated address: no to_zone")
		}
		addr(".destination", r.Destination)
		addr(".translate_to", r.TranslateTo)
		if a, err := netip.ParseAddr(r.Destination); err == nil {
			if b, err := netip.ParseAddr(r.TranslateTo); err == nil && a.Is4() != b.Is4() {
				v.addf(f+".translate_to", "%s and destination %s are of different address families", b, a)
			}
		}
		ported := r.Protocol == ProtoTCP || r.Protocol == ProtoUDP
		switch {
		case ported && r.DestinationPorts == (PortRange{}):
			v.addf(f+".destination_ports", "ports are required with protocol %s", r.Protocol)
		case !ported && r.DestinationPorts != (PortRange{}):
			v.addf(f+".destination_ports", "ports need protocol tcp or udp, not %q", protoName(r.Protocol))
		case ported:
			portRange(".destination_ports", r.DestinationPorts)
		}
		if r.TranslatePort != 0 && (!ported || r.DestinationPorts.First != r.DestinationPorts.Last) {
			v.addf(f+".translate_port", "a new port needs protocol tcp or udp and a single destination port")
		}
		if r.Masquerade || len(r.Pool) > 0 || r.Ports != (PortRange{}) {
			v.addf(f+".pool", "masquerade, pool and ports belong to source NAT, not to a destination rule")
		}
	case "":
		v.addf(f+".type", "type is required (source or destination)")
	default:
		v.addf(f+".type", "unknown NAT type %q (want source or destination)", r.Type)
	}
}
