package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

var testIfindex = map[string]int{"lan0": 2, "lan1": 3, "wan0": 4, "dmz0": 70000}

func resolve(name string) (int, error) {
	if i, ok := testIfindex[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("no interface %q", name)
}

func testConfig() *dataplane.Config {
	return &dataplane.Config{
		Zones: []dataplane.Zone{{Name: "lan"}, {Name: "wan"}, {Name: "dmz"}},
		Interfaces: []dataplane.Interface{
			{Name: "lan0", Zone: "lan"}, {Name: "lan1", Zone: "lan"},
			{Name: "wan0", Zone: "wan"}, {Name: "dmz0", Zone: "dmz"},
		},
		Policies: []dataplane.Policy{
			// 0: a deny before a broader allow must end the evaluation.
			{FromZone: "lan", ToZone: "wan", Sources: []string{"10.0.9.0/24"}, Action: dataplane.ActionDeny},
			// 1: ports only for tcp.
			{FromZone: "lan", ToZone: "wan", Protocol: dataplane.ProtoTCP,
				DestinationPorts: []dataplane.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8080}},
				Action:           dataplane.ActionAllow},
			// 2: udp 53 to one resolver, v4 and v6.
			{FromZone: "lan", ToZone: "wan", Protocol: dataplane.ProtoUDP,
				Destinations:     []string{"192.0.2.53", "2001:db8::53"},
				DestinationPorts: []dataplane.PortRange{{First: 53, Last: 53}},
				Action:           dataplane.ActionAllow},
			// 3: icmp only (IPv4 protocol 1).
			{FromZone: "lan", ToZone: "wan", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
			// 4: v6 sources only, any protocol.
			{FromZone: "lan", ToZone: "wan", Sources: []string{"2001:db8:1::/48"}, Action: dataplane.ActionAllow},
			// 5: wan -> dmz: an IPv4-mapped IPv6 prefix is an IPv6 prefix.
			{FromZone: "wan", ToZone: "dmz", Sources: []string{"::ffff:198.51.100.0/120"}, Action: dataplane.ActionAllow},
			// 6: wan -> dmz icmpv6, "any" protocol spelled out is tested by 7.
			{FromZone: "wan", ToZone: "dmz", Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow},
			// 7: intra-zone lan -> lan needs a rule; /0 prefixes.
			{FromZone: "lan", ToZone: "lan", Protocol: dataplane.ProtoAny,
				Sources: []string{"0.0.0.0/0"}, Destinations: []string{"10.0.0.0/8", "::/0"}, Action: dataplane.ActionAllow},
			// 8: dmz -> wan deny everything explicitly.
			{FromZone: "dmz", ToZone: "wan", Action: dataplane.ActionDeny},
			// 9: never reached: shadowed by 8.
			{FromZone: "dmz", ToZone: "wan", Action: dataplane.ActionAllow},
			// 10: /128 host and /127 and odd v6 lengths.
			{FromZone: "wan", ToZone: "lan", Sources: []string{"2001:db8::1/128", "2001:db8:0:0:8000::/65"},
				Protocol: dataplane.ProtoUDP, Action: dataplane.ActionAllow},
			// 11: v4 /32 and /31 destinations.
			{FromZone: "wan", ToZone: "lan", Destinations: []string{"10.1.1.1/32", "10.1.1.4/31"},
				Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: 1, Last: 65535}},
				Action: dataplane.ActionAllow},
		},
	}
}

type verdict struct {
	Allow bool
	Rule  int
}

func tup(src, dst string, proto uint8, sport, dport uint16) Tuple {
	return MakeTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), proto, sport, dport)
}

func TestDecide(t *testing.T) {
	s, err := Compile(testConfig(), resolve)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	lan0, lan1, wan0, dmz0 := 2, 3, 4, 70000
	tests := []struct {
		name    string
		in, out int
		t       Tuple
		want    verdict
	}{
		{"deny rule ends evaluation", lan0, wan0, tup("10.0.9.5", "203.0.113.1", 6, 1000, 80), verdict{false, 0}},
		{"deny rule matches only its source", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 6, 1000, 80), verdict{true, 1}},
		{"tcp port range low edge", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 6, 1000, 8000), verdict{true, 1}},
		{"tcp port range high edge", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 6, 1000, 8080), verdict{true, 1}},
		{"tcp port outside ranges", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 6, 80, 8081), verdict{false, -1}},
		{"source port is not compared", lan1, wan0, tup("10.0.8.5", "203.0.113.1", 6, 80, 81), verdict{false, -1}},
		{"udp to the wrong port", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 17, 1000, 80), verdict{false, -1}},
		{"udp 53 to resolver v4", lan0, wan0, tup("10.0.8.5", "192.0.2.53", 17, 1000, 53), verdict{true, 2}},
		{"udp 53 to resolver v6", lan0, wan0, tup("2001:db8:2::1", "2001:db8::53", 17, 1000, 53), verdict{true, 2}},
		{"udp 53 to another host", lan0, wan0, tup("10.0.8.5", "192.0.2.54", 17, 1000, 53), verdict{false, -1}},
		{"tcp 53 to resolver", lan0, wan0, tup("10.0.8.5", "192.0.2.53", 6, 1000, 53), verdict{false, -1}},
		{"icmp v4 echo", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 1, 7, 7), verdict{true, 3}},
		{"icmp rule does not match icmpv6", lan0, wan0, tup("2001:db8:2::1", "2001:db8::99", 58, 7, 7), verdict{false, -1}},
		{"v6 source rule, any proto", lan0, wan0, tup("2001:db8:1:ff::1", "2001:db8::99", 132, 0, 0), verdict{true, 4}},
		{"v6-only source list never matches v4", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 132, 0, 0), verdict{false, -1}},
		{"later fragment has no port", lan0, wan0, tup("10.0.8.5", "203.0.113.1", 6, 0, 0), verdict{false, -1}},
		{"mapped v6 packet matches mapped prefix", wan0, dmz0, tup("::ffff:198.51.100.7", "2001:db8::1", 6, 1, 2), verdict{true, 5}},
		{"v4 packet does not match mapped prefix", wan0, dmz0, tup("198.51.100.7", "10.0.0.1", 6, 1, 2), verdict{false, -1}},
		{"icmpv6 wan to dmz", wan0, dmz0, tup("2001:db8:5::1", "2001:db8::1", 58, 9, 9), verdict{true, 6}},
		{"icmp v4 is not icmpv6", wan0, dmz0, tup("203.0.113.9", "10.0.0.1", 1, 9, 9), verdict{false, -1}},
		{"intra-zone allowed by rule", lan0, lan1, tup("10.0.8.5", "10.2.0.1", 17, 5, 5), verdict{true, 7}},
		{"intra-zone same interface", lan0, lan0, tup("10.0.8.5", "10.2.0.1", 17, 5, 5), verdict{true, 7}},
		{"intra-zone v4-only source list", lan0, lan1, tup("2001:db8::5", "2001:db8::6", 17, 5, 5), verdict{false, -1}},
		{"intra-zone dst outside", lan0, lan1, tup("10.0.8.5", "11.0.0.1", 17, 5, 5), verdict{false, -1}},
		{"explicit deny shadows allow", dmz0, wan0, tup("10.9.9.9", "1.1.1.1", 6, 5, 443), verdict{false, 8}},
		{"no rules for pair", wan0, wan0, tup("1.1.1.1", "2.2.2.2", 6, 5, 443), verdict{false, -1}},
		{"wrong direction has no rule", wan0, lan0, tup("1.1.1.1", "10.0.8.5", 6, 5, 443), verdict{false, -1}},
		{"v6 /128", wan0, lan0, tup("2001:db8::1", "2001:db8:2::1", 17, 5, 5), verdict{true, 10}},
		{"v6 /128 neighbour", wan0, lan0, tup("2001:db8::2", "2001:db8:2::1", 17, 5, 5), verdict{false, -1}},
		{"v6 /65 inside", wan0, lan0, tup("2001:db8::8000:0:0:1", "2001:db8:2::1", 17, 5, 5), verdict{true, 10}},
		{"v6 /65 outside", wan0, lan0, tup("2001:db8::7fff:0:0:1", "2001:db8:2::1", 17, 5, 5), verdict{false, -1}},
		{"v4 /32", wan0, lan0, tup("1.1.1.1", "10.1.1.1", 6, 5, 22), verdict{true, 11}},
		{"v4 /31 upper", wan0, lan0, tup("1.1.1.1", "10.1.1.5", 6, 5, 22), verdict{true, 11}},
		{"v4 /31 outside", wan0, lan0, tup("1.1.1.1", "10.1.1.6", 6, 5, 22), verdict{false, -1}},
		{"unknown ingress", 99, wan0, tup("10.0.8.5", "203.0.113.1", 1, 7, 7), verdict{false, -1}},
		{"unknown egress", lan0, 99, tup("10.0.8.5", "203.0.113.1", 1, 7, 7), verdict{false, -1}},
		{"negative ifindex", -1, wan0, tup("10.0.8.5", "203.0.113.1", 1, 7, 7), verdict{false, -1}},
		{"bad family", lan0, wan0, Tuple{Proto: 1, Family: 5}, verdict{false, -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			allow, rule := s.Decide(tc.in, tc.out, tc.t)
			if diff := cmp.Diff(tc.want, verdict{allow, rule}); diff != "" {
				t.Errorf("Decide(%d, %d, %v) (-want +got):\n%s", tc.in, tc.out, tc.t, diff)
			}
			if got := reference(testConfig(), tc.in, tc.out, tc.t); got != tc.want {
				t.Errorf("reference model disagrees with the table: %+v", got)
			}
		})
	}
}

// reference interprets the config directly with net/netip: a second,
// obviously-correct reading of the semantics to compare the compiled
// matcher with.
func reference(cfg *dataplane.Config, in, out int, t Tuple) verdict {
	zoneOf := func(idx int) string {
		for _, it := range cfg.Interfaces {
			if testIfindex[it.Name] == idx {
				return it.Zone
			}
		}
		return ""
	}
	zin, zout := zoneOf(in), zoneOf(out)
	if zin == "" || zout == "" || (t.Family != FamilyIPv4 && t.Family != FamilyIPv6) {
		return verdict{false, -1}
	}
	anyIn := func(list []string, a netip.Addr) bool {
		if len(list) == 0 {
			return true
		}
		for _, s := range list {
			p, _ := dataplane.ParsePrefix(s)
			if p.Contains(a) { // netip: a v4 prefix never contains a v6 (even mapped) address
				return true
			}
		}
		return false
	}
	for i, p := range cfg.Policies {
		if p.FromZone != zin || p.ToZone != zout {
			continue
		}
		if n := p.Protocol.Number(); n != 0 && n != t.Proto {
			continue
		}
		if !anyIn(p.Sources, t.SrcAddr()) || !anyIn(p.Destinations, t.DstAddr()) {
			continue
		}
		if len(p.DestinationPorts) > 0 {
			ok := false
			for _, r := range p.DestinationPorts {
				ok = ok || r.Contains(t.DstPort)
			}
			if !ok {
				continue
			}
		}
		return verdict{p.Action == dataplane.ActionAllow, i}
	}
	return verdict{false, -1}
}

// TestDecideMatchesReference compares the compiled matcher with the
// reference model on random tuples drawn near the config's prefixes.
func TestDecideMatchesReference(t *testing.T) {
	cfg := testConfig()
	s, err := Compile(cfg, resolve)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	v4 := []string{"10.0.9.1", "10.0.8.1", "192.0.2.53", "10.1.1.4", "10.1.1.5", "10.1.1.6", "198.51.100.9", "1.2.3.4"}
	v6 := []string{"2001:db8::53", "2001:db8:1::1", "::ffff:198.51.100.7", "2001:db8::1", "2001:db8::8000:0:0:1", "fe80::1"}
	ifs := []int{2, 3, 4, 70000, 5}
	protos := []uint8{1, 6, 17, 58, 132}
	ports := []uint16{0, 53, 80, 81, 7999, 8000, 8080, 8081, 65535}
	pick := func(l []string) netip.Addr { return netip.MustParseAddr(l[r.IntN(len(l))]) }
	for range 20000 {
		fam := v4
		if r.IntN(2) == 0 {
			fam = v6
		}
		tu := MakeTuple(pick(fam), pick(fam), protos[r.IntN(len(protos))], ports[r.IntN(len(ports))], ports[r.IntN(len(ports))])
		// Randomise a few low address bits so prefix edges are exercised.
		tu.Src[3] ^= byte(r.IntN(4))
		tu.Dst[15] ^= byte(r.IntN(2))
		if tu.Family == FamilyIPv4 {
			tu.Dst[15] = 0
			tu.Dst[3] ^= byte(r.IntN(2))
		}
		in, out := ifs[r.IntN(len(ifs))], ifs[r.IntN(len(ifs))]
		allow, rule := s.Decide(in, out, tu)
		if want := reference(cfg, in, out, tu); want != (verdict{allow, rule}) {
			t.Fatalf("Decide(%d, %d, %v) = %v/%d, reference %+v", in, out, tu, allow, rule, want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	bad := testConfig()
	bad.Policies[0].Action = "maybe"
	if _, err := Compile(bad, resolve); !errors.Is(err, dataplane.ErrInvalidConfig) {
		t.Errorf("invalid config: got %v, want ErrInvalidConfig", err)
	}
	notFound := errors.New("no such device")
	_, err := Compile(testConfig(), func(string) (int, error) { return 0, notFound })
	if !errors.Is(err, notFound) {
		t.Errorf("resolver error: got %v, want it wrapped", err)
	}
	_, err = Compile(testConfig(), func(string) (int, error) { return 7, nil })
	if !errors.Is(err, ErrResolve) {
		t.Errorf("shared ifindex: got %v, want ErrResolve", err)
	}
	_, err = Compile(testConfig(), func(string) (int, error) { return 0, nil })
	if !errors.Is(err, ErrResolve) {
		t.Errorf("zero ifindex: got %v, want ErrResolve", err)
	}
}

func TestZone(t *testing.T) {
	s, err := Compile(testConfig(), resolve)
	if err != nil {
		t.Fatal(err)
	}
	type zr struct {
		Name string
		OK   bool
	}
	var got []zr
	for _, idx := range []int{2, 4, 70000, 1, 0} {
		n, ok := s.Zone(idx)
		got = append(got, zr{n, ok})
	}
	want := []zr{{"lan", true}, {"wan", true}, {"dmz", true}, {"", false}, {"", false}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Zone (-want +got):\n%s", diff)
	}
	if s.Rules() != len(testConfig().Policies) {
		t.Errorf("Rules() = %d", s.Rules())
	}
}

func TestTuple(t *testing.T) {
	a := tup("10.0.0.1", "10.0.0.2", 6, 1, 2)
	if diff := cmp.Diff(tup("10.0.0.2", "10.0.0.1", 6, 2, 1), a.Reverse()); diff != "" {
		t.Errorf("Reverse (-want +got):\n%s", diff)
	}
	m := tup("::ffff:10.0.0.1", "::ffff:10.0.0.2", 6, 1, 2)
	if m.Family != FamilyIPv6 || m == a || m.SrcAddr() != netip.MustParseAddr("::ffff:10.0.0.1") {
		t.Errorf("mapped tuple %v must stay IPv6", m)
	}
	if got, want := a.String(), "proto 6 10.0.0.1:1 -> 10.0.0.2:2"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestDecideAllocs(t *testing.T) {
	s, err := Compile(testConfig(), resolve)
	if err != nil {
		t.Fatal(err)
	}
	tu := tup("2001:db8:2::1", "2001:db8::53", 17, 1000, 53)
	if n := testing.AllocsPerRun(1000, func() { s.Decide(2, 70000, tu); s.Decide(2, 4, tu) }); n != 0 {
		t.Errorf("Decide allocates %.1f times", n)
	}
}

func BenchmarkDecide(b *testing.B) {
	s, err := Compile(testConfig(), resolve)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		t    Tuple
	}{
		{"v4_first_rule", tup("10.0.9.5", "203.0.113.1", 6, 1000, 80)},
		{"v4_default_deny", tup("10.0.8.5", "203.0.113.1", 132, 1000, 80)},
		{"v6_rule4", tup("2001:db8:1:ff::1", "2001:db8::99", 132, 0, 0)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Decide(2, 4, bc.t)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mdecisions/s")
		})
	}
}
