package limits

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

func cfgWith(policies, zones, ifaces int) *dataplane.Config {
	c := &dataplane.Config{}
	for i := range zones {
		c.Zones = append(c.Zones, dataplane.Zone{Name: fmt.Sprintf("z%d", i)})
	}
	for i := range ifaces {
		c.Interfaces = append(c.Interfaces, dataplane.Interface{Name: fmt.Sprintf("eth%d", i), Zone: "z0"})
	}
	for i := range policies {
		c.Policies = append(c.Policies, dataplane.Policy{FromZone: "z0", ToZone: "z1",
			Sources: []string{"10.0.0.0/8", "2001:db8::/32"}, Protocol: dataplane.ProtoUDP,
			DestinationPorts: []dataplane.PortRange{{First: uint16(1 + i), Last: uint16(1 + i)}}, Action: dataplane.ActionAllow})
	}
	return c
}

func TestCheck(t *testing.T) {
	l := dataplane.Limits{Zones: 3, Interfaces: 2, PolicyTermsPerZonePair: 10, PolicyTerms: 12, MirrorRules: 1,
		Sessions:  dataplane.TableLimit{Max: 100000},
		FlowCache: dataplane.TableLimit{Fixed: 4096},
		Neighbors: dataplane.TableLimit{NotSized: "kernel table"}}
	tests := []struct {
		name string
		cfg  func() *dataplane.Config
		want []string // substrings, one per reason, in order
	}{
		{"fits", func() *dataplane.Config { return cfgWith(5, 3, 2) }, nil}, // 5 policies x 2 families = 10 terms
		{"at every limit", func() *dataplane.Config {
			c := cfgWith(5, 3, 2)
			c.Tables = dataplane.Tables{Sessions: 100000, FlowCache: 4096}
			return c
		}, nil},
		{"over everything", func() *dataplane.Config {
			c := cfgWith(7, 4, 3)
			c.PortMirroring = []dataplane.MirrorRule{{Input: "eth0", Output: "m0"}, {Input: "eth1", Output: "m0"}}
			c.Tables = dataplane.Tables{Sessions: 100001, FlowCache: 100, Neighbors: 5}
			return c
		}, []string{
			"zones: 4 zones, the test backend supports at most 3",
			"interfaces: 3 interfaces, the test backend supports at most 2",
			"port_mirroring: 2 rules, the test backend supports at most 1",
			"policies: zone pair z0 -> z1 expands to 14 terms (one per source x destination x port range), the test backend evaluates at most 10 per zone pair (1 zone pair(s) over the limit)",
			"policies: 7 policies expand to 14 terms, the test backend holds at most 12",
			"tables.sessions: 100001 entries, the test backend supports at most 100000",
			"tables.flow_cache: 100 entries asked, the test backend's table has a fixed size of 4096",
			"tables.neighbors: set to 5, but the test backend has no such table: kernel table",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			got := Check(cfg, nil, l, "test")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("reasons (-want +got):\n%s", diff)
			}
		})
	}
	// The default session size (65536) counts against Max even when the
	// field is not set.
	small := l
	small.Sessions.Max = 100
	if got := Check(cfgWith(0, 3, 1), nil, small, "test"); len(got) != 1 || !strings.Contains(got[0], "tables.sessions: 65536 entries") {
		t.Errorf("default sessions over max: %v", got)
	}
	if got := Check(cfgWith(300, 2, 1), nil, dataplane.Limits{}, "test"); got != nil {
		t.Errorf("no limits declared, got %v", got)
	}
}

func TestCheckNAT(t *testing.T) {
	cfg := cfgWith(0, 2, 3) // eth0..eth2, all in z0
	cfg.Interfaces[2].Zone = "z1"
	cfg.NAT = []dataplane.NATRule{
		{Type: dataplane.NATSource, FromZone: "z1", ToZone: "z0", Masquerade: true, Sources: []string{"10.0.0.0/8", "192.168.0.0/16"}}, // 2 entries, 2 pools (eth0, eth1)
		{Type: dataplane.NATSource, FromZone: "z1", ToZone: "z0", Pool: []string{"198.51.100.1"}},                                      // 1 entry, 1 pool
		{Type: dataplane.NATDestination, Destination: "198.51.100.1", TranslateTo: "10.0.0.1"},                                         // 1 entry
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	snat, dnat, pools := NATCounts(cfg)
	if snat != 3 || dnat != 1 || pools != 3 {
		t.Errorf("NATCounts = %d, %d, %d, want 3, 1, 3", snat, dnat, pools)
	}
	if got := Check(cfg, nil, dataplane.Limits{NATRules: 3, NATPools: 3}, "test"); got != nil {
		t.Errorf("at the limits: %v", got)
	}
	got := Check(cfg, nil, dataplane.Limits{NATRules: 2, NATPools: 2}, "test")
	want := []string{
		"nat: source rules expand to 3 entries (one per source prefix), the test backend holds at most 2",
		"nat: 3 source-NAT pools (one per pool rule, one per interface of the to_zone of a masquerading rule), the test backend holds at most 2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reasons (-want +got):\n%s", diff)
	}
}
