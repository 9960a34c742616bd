package ebpfbackend

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

// Pure translation tests: no privileges needed.

func TestPrefixWords(t *testing.T) {
	tests := []struct {
		in         string
		addr, mask [4]uint32
	}{
		{"10.1.0.0/16", [4]uint32{0x0000010a}, [4]uint32{0x0000ffff}},
		{"192.0.2.1", [4]uint32{0x010200c0}, [4]uint32{0xffffffff}},
		{"0.0.0.0/0", [4]uint32{}, [4]uint32{}},
		{"2001:db8::/32", [4]uint32{0xb80d0120}, [4]uint32{0xffffffff}},
		{"fd00::1/127", [4]uint32{0x000000fd, 0, 0, 0}, [4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xfeffffff}},
		{"10.1.2.3/8", [4]uint32{0x0000000a}, [4]uint32{0x000000ff}}, // masked
		// IPv4-mapped IPv6 stays IPv6: all four words (the plan used to
		// unmap it into an IPv4 prefix, which the Config contract forbids).
		{"::ffff:198.51.100.0/120", [4]uint32{0, 0, 0xffff0000, 0x006433c6}, [4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0x00ffffff}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := dataplane.ParsePrefix(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if tt.in == "10.1.2.3/8" {
				p = p.Masked()
			}
			a, m := prefixWords(p)
			if diff := cmp.Diff([2][4]uint32{tt.addr, tt.mask}, [2][4]uint32{a, m}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanRules: the plan's fw_rule entries are the normalised rule set's
// terms (internal/policy), with the family the Config contract gives.
func TestPlanRules(t *testing.T) {
	type term struct {
		Family, Proto, Action uint8
		PortLo, PortHi        uint16
		Src, Dst              [4]uint32
	}
	tests := []struct {
		name string
		pol  dataplane.Policy
		want []term
	}{
		{"any", dataplane.Policy{Action: dataplane.ActionAllow}, []term{{0, 0, 1, 0, 65535, [4]uint32{}, [4]uint32{}}}},
		{"family mismatch dropped, ports expanded",
			dataplane.Policy{Sources: []string{"10.0.0.0/8", "2001:db8::/32"}, Destinations: []string{"192.0.2.1"}, Protocol: dataplane.ProtoTCP,
				DestinationPorts: []dataplane.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8080}}, Action: dataplane.ActionDeny},
			[]term{{4, 6, 0, 80, 80, [4]uint32{0x0a}, [4]uint32{0x010200c0}}, {4, 6, 0, 8000, 8080, [4]uint32{0x0a}, [4]uint32{0x010200c0}}}},
		{"v6 only by destination", dataplane.Policy{Destinations: []string{"2001:db8::/32"}, Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow},
			[]term{{6, 58, 1, 0, 65535, [4]uint32{}, [4]uint32{0xb80d0120}}}},
		{"mapped source is an IPv6 rule", dataplane.Policy{Sources: []string{"::ffff:198.51.100.0/120"}, Action: dataplane.ActionAllow},
			[]term{{6, 0, 1, 0, 65535, [4]uint32{0, 0, 0xffff0000, 0x006433c6}, [4]uint32{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.pol.FromZone, tt.pol.ToZone = "a", "b"
			cfg := &dataplane.Config{
				Zones:      []dataplane.Zone{{Name: "a"}, {Name: "b"}},
				Interfaces: []dataplane.Interface{{Name: "x", Zone: "a"}},
				Policies:   []dataplane.Policy{tt.pol},
			}
			zones, _ := nextZoneIDs(nil, cfg, false)
			p, reasons := buildPlan(cfg, zones)
			if len(reasons) != 0 {
				t.Fatal(reasons)
			}
			var got []term
			for _, r := range p.rules {
				got = append(got, term{r.Family, r.Proto, r.Action, r.PortLo, r.PortHi, r.SrcAddr, r.DstAddr})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestBuildPlanOrder: rules of one zone pair keep the config order even
// when policies of other pairs sit between them, and limits are refused
// with reasons.
func TestBuildPlanOrder(t *testing.T) {
	cfg := &dataplane.Config{
		Zones:      []dataplane.Zone{{Name: "a"}, {Name: "b"}},
		Interfaces: []dataplane.Interface{{Name: "x", Zone: "a"}},
		Policies: []dataplane.Policy{
			{FromZone: "a", ToZone: "b", Protocol: dataplane.ProtoTCP, Action: dataplane.ActionDeny},
			{FromZone: "b", ToZone: "a", Action: dataplane.ActionAllow},
			{FromZone: "a", ToZone: "b", Action: dataplane.ActionAllow},
		},
	}
	zones, _ := nextZoneIDs(nil, cfg, false)
	p, reasons := buildPlan(cfg, zones)
	if len(reasons) != 0 {
		t.Fatal(reasons)
	}
	ab, ba := p.pairs[1*maxZones+2], p.pairs[2*maxZones+1]
	if ab.Count != 2 || ba.Count != 1 {
		t.Fatalf("pairs a->b %+v b->a %+v", ab, ba)
	}
	if r0, r1 := p.rules[ab.Start], p.rules[ab.Start+1]; r0.Proto != 6 || r0.Action != 0 || r1.Action != 1 {
		t.Errorf("a->b order lost: %+v, %+v", r0, r1)
	}

	for range maxRulesPerPair {
		cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "b", ToZone: "a", Action: dataplane.ActionDeny})
	}
	if _, reasons := buildPlan(cfg, zones); len(reasons) != 1 || !strings.Contains(reasons[0], "zone pair b -> a expands to 257 terms") {
		t.Errorf("over the per-pair limit: reasons %v, want one naming b -> a and 257 terms", reasons)
	}
}

// TestNextZoneIDs: zone ids stay what they were across configs, new zones
// take free ids, removed ones free theirs unless sessions are kept.
func TestNextZoneIDs(t *testing.T) {
	cfg := func(names ...string) *dataplane.Config {
		c := &dataplane.Config{}
		for _, n := range names {
			c.Zones = append(c.Zones, dataplane.Zone{Name: n})
		}
		return c
	}
	ids, _ := nextZoneIDs(nil, cfg("a", "b", "c"), false)
	if diff := cmp.Diff(map[string]uint32{"a": 1, "b": 2, "c": 3}, ids); diff != "" {
		t.Fatal(diff)
	}
	// b goes, d comes: d takes b's freed id; a and c keep theirs.
	next, _ := nextZoneIDs(ids, cfg("d", "c", "a"), false)
	if diff := cmp.Diff(map[string]uint32{"a": 1, "c": 3, "d": 2}, next); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	// With sessions kept, b's id stays reserved.
	kept, _ := nextZoneIDs(ids, cfg("d", "c", "a"), true)
	if diff := cmp.Diff(map[string]uint32{"a": 1, "b": 2, "c": 3, "d": 4}, kept); diff != "" {
		t.Errorf("keep (-want +got)\n%s", diff)
	}
	var many []string
	for i := range maxZones {
		many = append(many, fmt.Sprintf("z%d", i))
	}
	if _, reasons := nextZoneIDs(nil, cfg(many...), false); len(reasons) != 1 {
		t.Errorf("%d zones: reasons %v, want one", maxZones, reasons)
	}
}
