package policy

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

func TestFamily(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint8
	}{
		{"10.0.0.0/8", FamilyIPv4},
		{"0.0.0.0/0", FamilyIPv4},
		{"2001:db8::/32", FamilyIPv6},
		{"::/0", FamilyIPv6},
		// The Config contract: mapped prefixes are IPv6, whatever their
		// length. (The eBPF plan used to unmap /96 and longer.)
		{"::ffff:10.0.0.0/104", FamilyIPv6},
		{"::ffff:10.0.0.0/120", FamilyIPv6},
		{"::ffff:0.0.0.0/96", FamilyIPv6},
		{"::ffff:10.0.0.1", FamilyIPv6},
	} {
		p, err := dataplane.ParsePrefix(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Family(p); got != tc.want {
			t.Errorf("Family(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	rs, err := Normalize(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"lan", "wan", "dmz"}, rs.Zones); diff != "" {
		t.Errorf("zones (-want +got):\n%s", diff)
	}
	// Pairs in order of first appearance; rules of a pair in config
	// order even when other pairs' policies sit between them.
	type pr struct {
		Pair     ZonePair
		Policies []int
	}
	var got []pr
	for _, k := range rs.Pairs() {
		var idx []int
		for _, r := range rs.Pair(k) {
			idx = append(idx, r.Policy)
		}
		got = append(got, pr{k, idx})
	}
	want := []pr{
		{ZonePair{0, 1}, []int{0, 1, 2, 3, 4}},
		{ZonePair{1, 2}, []int{5, 6}},
		{ZonePair{0, 0}, []int{7}},
		{ZonePair{2, 1}, []int{8, 9}},
		{ZonePair{1, 0}, []int{10, 11}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pairs (-want +got):\n%s", diff)
	}
	if rs.Pair(ZonePair{2, 2}) != nil {
		t.Error("a pair without policies has rules")
	}
	mapped := rs.Pair(ZonePair{1, 2})[0]
	if len(mapped.Src.V4) != 0 || len(mapped.Src.V6) != 1 || mapped.Src.Any {
		t.Errorf("mapped source prefix normalised to %+v, want one IPv6 prefix", mapped.Src)
	}
	if _, err := Normalize(&dataplane.Config{}); err == nil {
		t.Error("invalid config normalised")
	}
}

func TestTerms(t *testing.T) {
	pfx := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	tests := []struct {
		name string
		pol  dataplane.Policy
		want []Term
	}{
		{"any", dataplane.Policy{Action: dataplane.ActionAllow},
			[]Term{{Family: 0, Ports: dataplane.PortRange{First: 0, Last: 65535}, Allow: true}}},
		{"family mismatch dropped, ports expanded",
			dataplane.Policy{Sources: []string{"10.0.0.0/8", "2001:db8::/32"}, Destinations: []string{"192.0.2.1"}, Protocol: dataplane.ProtoTCP,
				DestinationPorts: []dataplane.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8080}}, Action: dataplane.ActionDeny},
			[]Term{
				{Family: 4, Src: pfx("10.0.0.0/8"), Dst: pfx("192.0.2.1/32"), Ports: dataplane.PortRange{First: 80, Last: 80}, Proto: 6},
				{Family: 4, Src: pfx("10.0.0.0/8"), Dst: pfx("192.0.2.1/32"), Ports: dataplane.PortRange{First: 8000, Last: 8080}, Proto: 6},
			}},
		{"one side any: a term per family the other side has",
			dataplane.Policy{Destinations: []string{"2001:db8::/32", "10.0.0.0/8"}, Protocol: dataplane.ProtoUDP, Action: dataplane.ActionAllow},
			[]Term{
				{Family: 4, Dst: pfx("10.0.0.0/8"), Ports: dataplane.PortRange{First: 0, Last: 65535}, Proto: 17, Allow: true},
				{Family: 6, Dst: pfx("2001:db8::/32"), Ports: dataplane.PortRange{First: 0, Last: 65535}, Proto: 17, Allow: true},
			}},
		{"mapped prefix stays IPv6",
			dataplane.Policy{Sources: []string{"::ffff:198.51.100.0/120"}, Action: dataplane.ActionAllow},
			[]Term{{Family: 6, Src: pfx("::ffff:198.51.100.0/120"), Ports: dataplane.PortRange{First: 0, Last: 65535}, Allow: true}}},
		{"no family in common: no term",
			dataplane.Policy{Sources: []string{"10.0.0.0/8"}, Destinations: []string{"2001:db8::/32"}, Action: dataplane.ActionAllow}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &dataplane.Config{Zones: []dataplane.Zone{{Name: "a"}}, Interfaces: []dataplane.Interface{{Name: "x", Zone: "a"}}}
			tt.pol.FromZone, tt.pol.ToZone = "a", "a"
			cfg.Policies = []dataplane.Policy{tt.pol}
			rs, err := Normalize(cfg)
			if err != nil {
				t.Fatal(err)
			}
			r := rs.Rules[0]
			got := r.AppendTerms(nil)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("terms (-want +got):\n%s", diff)
			}
			if r.TermCount() != len(got) {
				t.Errorf("TermCount = %d, AppendTerms made %d", r.TermCount(), len(got))
			}
		})
	}
}

// decideByTerms evaluates the rule set the way a term-based datapath does
// (the eBPF backend's fw_rule loop): the terms of the pair in order, first
// match wins.
func decideByTerms(rs *Ruleset, from, to int, tu Tuple) verdict {
	for _, r := range rs.Pair(ZonePair{from, to}) {
		for _, term := range r.AppendTerms(nil) {
			if term.Match(tu) {
				return verdict{term.Allow, r.Policy}
			}
		}
	}
	return verdict{false, -1}
}

// TestTermsMatchSet: the term expansion (what the eBPF backend programs)
// and the compiled matcher (what the userspace backend asks) give the same
// verdict as the reference model on random tuples: the two datapaths
// consume one rule set and cannot drift.
func TestTermsMatchSet(t *testing.T) {
	cfg := testConfig()
	rs, err := Normalize(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Compile(cfg, resolve)
	if err != nil {
		t.Fatal(err)
	}
	zoneOf := map[int]int{2: 0, 3: 0, 4: 1, 70000: 2}
	r := rand.New(rand.NewPCG(3, 4))
	v4 := []string{"10.0.9.1", "10.0.8.1", "192.0.2.53", "10.1.1.4", "10.1.1.6", "198.51.100.9", "1.2.3.4"}
	v6 := []string{"2001:db8::53", "2001:db8:1::1", "::ffff:198.51.100.7", "::ffff:10.0.9.1", "2001:db8::1", "2001:db8::8000:0:0:1"}
	protos := []uint8{1, 6, 17, 58, 132}
	ports := []uint16{0, 53, 80, 81, 8000, 8080, 8081, 65535}
	ifs := []int{2, 3, 4, 70000}
	pick := func(l []string) netip.Addr { return netip.MustParseAddr(l[r.IntN(len(l))]) }
	for range 20000 {
		fam := v4
		if r.IntN(2) == 0 {
			fam = v6
		}
		tu := MakeTuple(pick(fam), pick(fam), protos[r.IntN(len(protos))], ports[r.IntN(len(ports))], ports[r.IntN(len(ports))])
		in, out := ifs[r.IntN(len(ifs))], ifs[r.IntN(len(ifs))]
		allow, rule := s.Decide(in, out, tu)
		byTerms := decideByTerms(rs, zoneOf[in], zoneOf[out], tu)
		ref := reference(cfg, in, out, tu)
		if byTerms != ref || (verdict{allow, rule}) != ref {
			t.Fatalf("%v from %d to %d: terms %+v, Set %v/%d, reference %+v", tu, in, out, byTerms, allow, rule, ref)
		}
	}
}

func TestTermCounts(t *testing.T) {
	cfg := testConfig()
	rs, err := Normalize(cfg)
	if err != nil {
		t.Fatal(err)
	}
	per, largest, total := rs.TermCounts()
	sum := 0
	for k, n := range per {
		built := 0
		for _, r := range rs.Pair(k) {
			built += len(r.AppendTerms(nil))
		}
		if built != n {
			t.Errorf("pair %v: counted %d terms, built %d", k, n, built)
		}
		sum += n
		if n > per[largest] {
			t.Errorf("largest pair %v has %d terms, %v has %d", largest, per[largest], k, n)
		}
	}
	if sum != total {
		t.Errorf("total %d, pairs sum to %d", total, sum)
	}
}

func TestDecideZones(t *testing.T) {
	s, err := Compile(testConfig(), resolve)
	if err != nil {
		t.Fatal(err)
	}
	lan, _ := s.ZoneID("lan")
	wan, _ := s.ZoneID("wan")
	if _, ok := s.ZoneID("nowhere"); ok {
		t.Error("unknown zone found")
	}
	tu := tup("10.0.8.5", "192.0.2.53", 17, 1000, 53)
	a1, r1 := s.Decide(2, 4, tu)
	a2, r2 := s.DecideZones(lan, wan, tu)
	if a1 != a2 || r1 != r2 || !a2 || r2 != 2 {
		t.Errorf("Decide %v/%d, DecideZones %v/%d; want allow by rule 2", a1, r1, a2, r2)
	}
	for _, z := range [][2]int{{-1, wan}, {lan, 3}, {7, 0}} {
		if a, r := s.DecideZones(z[0], z[1], tu); a || r != -1 {
			t.Errorf("DecideZones(%d, %d) = %v/%d, want deny -1", z[0], z[1], a, r)
		}
	}
}

// manyPolicies is a config of n /32-source policies in one zone pair,
// shaped like the gate's 100 000-policy test.
func manyPolicies(n int) *dataplane.Config {
	c := &dataplane.Config{
		Zones:      []dataplane.Zone{{Name: "a"}, {Name: "b"}},
		Interfaces: []dataplane.Interface{{Name: "lan0", Zone: "a"}, {Name: "wan0", Zone: "b"}},
	}
	for i := range n {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		c.Policies = append(c.Policies, dataplane.Policy{FromZone: "a", ToZone: "b", Sources: []string{src.String() + "/32"},
			Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: 53, Last: 53}}, Action: dataplane.ActionAllow})
	}
	return c
}

// BenchmarkNormalize100k: what the gate and Apply pay to normalise (and
// validate) 100 000 policies, and to compile the userspace matcher.
func BenchmarkNormalize100k(b *testing.B) {
	cfg := manyPolicies(100_000)
	b.Run("normalize", func(b *testing.B) {
		for b.Loop() {
			if _, err := Normalize(cfg); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)*100_000/b.Elapsed().Seconds()/1e6, "Mpolicies/s")
	})
	b.Run("compile", func(b *testing.B) {
		res := func(name string) (int, error) { return map[string]int{"lan0": 2, "wan0": 3}[name], nil }
		for b.Loop() {
			if _, err := Compile(cfg, res); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)*100_000/b.Elapsed().Seconds()/1e6, "Mpolicies/s")
	})
}
