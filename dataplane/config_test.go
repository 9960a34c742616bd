package dataplane

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// validConfig exercises every field with a valid value.
func validConfig() *Config {
	return &Config{
		Interfaces: []Interface{{Name: "eth0", Zone: "trust"}, {Name: "eth1", Zone: "untrust"}},
		Zones:      []Zone{{Name: "trust"}, {Name: "untrust"}},
		Policies: []Policy{
			{Name: "web", FromZone: "trust", ToZone: "untrust", Sources: []string{"10.0.0.0/8", "2001:db8::/32"},
				Destinations: []string{"192.0.2.1"}, Protocol: ProtoTCP,
				DestinationPorts: []PortRange{{80, 80}, {8000, 8080}}, Action: ActionAllow},
			{FromZone: "trust", ToZone: "untrust", Protocol: ProtoICMP, Action: ActionAllow},
			{FromZone: "untrust", ToZone: "trust", Action: ActionDeny},
		},
		Forwarding: Forwarding{Routes: []Route{{Destination: "198.51.100.0/24", Interface: "eth1", Gateway: "192.0.2.254"}}},
		Tables:     Tables{Sessions: 1 << 20, FlowCache: 8192, Neighbors: 1024},
		Timeouts:   Timeouts{TCP: Duration(time.Hour), UDP: Duration(30 * time.Second), ICMP: Duration(10 * time.Second), Other: Duration(time.Minute)},
		PortMirroring: []MirrorRule{
			{Input: "eth0", Output: "mirror0", Rate: 0},
			{Input: "eth1", Output: "mirror0", Rate: 100},
		},
		Userspace: UserspaceOpts{FramesPerBinding: 8192, RingSize: 2048, Queues: []int{0, 1}, SessionShards: 64, BatchSize: 64},
	}
}

func TestValidateAcceptsValidConfig(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	minimal := &Config{Interfaces: []Interface{{Name: "lo", Zone: "z"}}, Zones: []Zone{{Name: "z"}}}
	if err := minimal.Validate(); err != nil {
		t.Fatalf("minimal config rejected: %v", err)
	}
}

func TestValidateNil(t *testing.T) {
	var c *Config
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil config: got %v", err)
	}
}

// TestValidateFields breaks one field at a time and checks that exactly the
// expected problems, with their field paths, are reported.
func TestValidateFields(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(c *Config)
		want   []string // field paths
	}{
		{"no interfaces", func(c *Config) { c.Interfaces = nil; c.Forwarding.Routes = nil; c.PortMirroring = nil }, []string{"interfaces"}},
		{"empty interface name", func(c *Config) { c.Interfaces[0].Name = "" }, []string{"interfaces[0].name", "port_mirroring[0].input"}},
		{"long interface name", func(c *Config) { c.Interfaces[1].Name = "abcdefghijklmnop" }, []string{"interfaces[1].name", "forwarding.routes[0].interface", "port_mirroring[1].input"}},
		{"bad char in interface", func(c *Config) { c.Interfaces[1].Name = "eth/1" }, []string{"interfaces[1].name", "forwarding.routes[0].interface", "port_mirroring[1].input"}},
		{"duplicate interface", func(c *Config) { c.Interfaces[1].Name = "eth0"; c.Forwarding.Routes = nil; c.PortMirroring = nil }, []string{"interfaces[1].name"}},
		{"interface without zone", func(c *Config) { c.Interfaces[0].Zone = "" }, []string{"interfaces[0].zone"}},
		{"interface unknown zone", func(c *Config) { c.Interfaces[0].Zone = "dmz" }, []string{"interfaces[0].zone"}},
		{"no zones", func(c *Config) { c.Zones = nil }, []string{"zones", "interfaces[0].zone", "interfaces[1].zone",
			"policies[0].from_zone", "policies[0].to_zone", "policies[1].from_zone", "policies[1].to_zone", "policies[2].from_zone", "policies[2].to_zone"}},
		{"empty zone name", func(c *Config) { c.Zones = append(c.Zones, Zone{}) }, []string{"zones[2].name"}},
		{"duplicate zone", func(c *Config) { c.Zones = append(c.Zones, Zone{Name: "trust"}) }, []string{"zones[2].name"}},
		{"policy missing zones", func(c *Config) { c.Policies[0].FromZone = ""; c.Policies[0].ToZone = "" }, []string{"policies[0].from_zone", "policies[0].to_zone"}},
		{"policy unknown zones", func(c *Config) { c.Policies[2].FromZone = "x"; c.Policies[2].ToZone = "y" }, []string{"policies[2].from_zone", "policies[2].to_zone"}},
		{"bad source", func(c *Config) { c.Policies[0].Sources[1] = "2001:db8::/129" }, []string{"policies[0].sources[1]"}},
		{"bad destination", func(c *Config) { c.Policies[0].Destinations = []string{"example.com"} }, []string{"policies[0].destinations[0]"}},
		{"zoned address", func(c *Config) { c.Policies[0].Destinations = []string{"fe80::1%eth0"} }, []string{"policies[0].destinations[0]"}},
		{"bad protocol", func(c *Config) { c.Policies[1].Protocol = "sctp" }, []string{"policies[1].protocol"}},
		{"ports without tcp/udp", func(c *Config) { c.Policies[1].DestinationPorts = []PortRange{{1, 2}} }, []string{"policies[1].destination_ports"}},
		{"port zero", func(c *Config) { c.Policies[0].DestinationPorts[0] = PortRange{0, 10} }, []string{"policies[0].destination_ports[0]"}},
		{"reversed range", func(c *Config) { c.Policies[0].DestinationPorts[1] = PortRange{9000, 8000} }, []string{"policies[0].destination_ports[1]"}},
		{"missing action", func(c *Config) { c.Policies[2].Action = "" }, []string{"policies[2].action"}},
		{"bad action", func(c *Config) { c.Policies[2].Action = "reject" }, []string{"policies[2].action"}},
		{"bad route destination", func(c *Config) { c.Forwarding.Routes[0].Destination = "nope" }, []string{"forwarding.routes[0].destination"}},
		{"route missing interface", func(c *Config) { c.Forwarding.Routes[0].Interface = "" }, []string{"forwarding.routes[0].interface"}},
		{"route unmanaged interface", func(c *Config) { c.Forwarding.Routes[0].Interface = "eth9" }, []string{"forwarding.routes[0].interface"}},
		{"route bad gateway", func(c *Config) { c.Forwarding.Routes[0].Gateway = "300.1.1.1" }, []string{"forwarding.routes[0].gateway"}},
		{"route gateway family", func(c *Config) { c.Forwarding.Routes[0].Gateway = "2001:db8::1" }, []string{"forwarding.routes[0].gateway"}},
		{"tables too large", func(c *Config) {
			c.Tables = Tables{Sessions: MaxTableEntries + 1, FlowCache: MaxTableEntries + 1, Neighbors: MaxTableEntries + 1}
		},
			[]string{"tables.sessions", "tables.flow_cache", "tables.neighbors"}},
		{"negative timeouts", func(c *Config) { c.Timeouts = Timeouts{TCP: -1, UDP: -1, ICMP: -1, Other: -1} },
			[]string{"timeouts.tcp", "timeouts.udp", "timeouts.icmp", "timeouts.other"}},
		{"mirror missing input", func(c *Config) { c.PortMirroring[0].Input = "" }, []string{"port_mirroring[0].input"}},
		{"mirror unmanaged input", func(c *Config) { c.PortMirroring[0].Input = "eth7" }, []string{"port_mirroring[0].input"}},
		{"mirror duplicate ingress", func(c *Config) { c.PortMirroring[1].Input = "eth0" }, []string{"port_mirroring[1].input"}},
		{"mirror missing output", func(c *Config) { c.PortMirroring[0].Output = "" }, []string{"port_mirroring[0].output"}},
		{"mirror output is input", func(c *Config) { c.PortMirroring[0].Output = "eth0" }, []string{"port_mirroring[0].output"}},
		{"mirror negative rate", func(c *Config) { c.PortMirroring[1].Rate = -1 }, []string{"port_mirroring[1].rate"}},
		{"mirror rate beyond 32 bits", func(c *Config) { c.PortMirroring[1].Rate = 1 << 32 }, []string{"port_mirroring[1].rate"}},
		{"too many frames", func(c *Config) { c.Userspace.FramesPerBinding = MaxUMEMFrames + 1 }, []string{"userspace.frames_per_binding"}},
		{"too few frames", func(c *Config) { c.Userspace.FramesPerBinding = 1024 }, []string{"userspace.frames_per_binding"}},
		{"ring not power of two", func(c *Config) { c.Userspace.RingSize = 1000 }, []string{"userspace.ring_size"}},
		{"ring too small", func(c *Config) { c.Userspace.RingSize = 4 }, []string{"userspace.ring_size"}},
		{"bad queues", func(c *Config) { c.Userspace.Queues = []int{-1, 3, 3, 5000} }, []string{"userspace.queues[0]", "userspace.queues[2]", "userspace.queues[3]"}},
		{"shards not power of two", func(c *Config) { c.Userspace.SessionShards = 48 }, []string{"userspace.session_shards"}},
		{"shards too many", func(c *Config) { c.Userspace.SessionShards = 8192 }, []string{"userspace.session_shards"}},
		{"batch beyond ring", func(c *Config) { c.Userspace.BatchSize = 4096 }, []string{"userspace.batch_size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.break_(c)
			err := c.Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Validate() = %v, want a *ConfigError", err)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("errors.Is(err, ErrInvalidConfig) = false")
			}
			var got []string
			for _, p := range ce.Problems {
				got = append(got, p.Field)
				if p.Message == "" {
					t.Errorf("problem %s has no message", p.Field)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problem fields (-want +got):\n%s\nfull error: %v", diff, err)
			}
		})
	}
}

// TestValidateReportsEverythingAtOnce breaks many fields together: every one
// must be reported in one error.
func TestValidateReportsEverythingAtOnce(t *testing.T) {
	c := validConfig()
	c.Interfaces[0].Zone = "nowhere"
	c.Policies[0].Action = "maybe"
	c.PortMirroring[1].Rate = -5
	c.PortMirroring = append(c.PortMirroring, MirrorRule{Input: "eth0", Output: "mirror1"})
	c.Userspace.RingSize = 3
	err := c.Validate()
	want := []Problem{
		{"interfaces[0].zone", `unknown zone "nowhere"`},
		{"policies[0].action", `unknown action "maybe" (want allow or deny)`},
		{"port_mirroring[1].rate", "must be >= 0, got -5"},
		{"port_mirroring[2].input", `duplicate ingress "eth0": port_mirroring[0] already mirrors it (one output per ingress)`},
		{"userspace.ring_size", "must be a power of two from 8 to 65536, got 3"},
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v", err)
	}
	if diff := cmp.Diff(want, ce.Problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	if !strings.Contains(err.Error(), "5 problems; interfaces[0].zone: unknown zone") {
		t.Errorf("error text: %q", err.Error())
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := validConfig()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("ParseConfig(%s): %v", b, err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("round trip (-in +out):\n%s", diff)
	}
}

// TestJSONFieldNames pins the wire names: they are an API.
func TestJSONFieldNames(t *testing.T) {
	const doc = `{
	  "interfaces": [{"name": "eth0", "zone": "a"}, {"name": "eth1", "zone": "b"}],
	  "zones": [{"name": "a"}, {"name": "b"}],
	  "policies": [{"name": "p", "from_zone": "a", "to_zone": "b", "sources": ["10.0.0.0/8"],
	    "destinations": ["10.1.0.1"], "protocol": "udp", "destination_ports": [53, "1000-2000"], "action": "allow"}],
	  "forwarding": {"routes": [{"destination": "10.9.0.0/16", "interface": "eth1", "gateway": "10.1.0.254"}]},
	  "tables": {"sessions": 1000, "flow_cache": 64, "neighbors": 32},
	  "timeouts": {"tcp": "1h", "udp": "30s", "icmp": "5s", "other": "1m"},
	  "port_mirroring": [{"input": "eth0", "output": "span0", "rate": 10}],
	  "userspace": {"frames_per_binding": 4096, "ring_size": 1024, "queues": [0], "session_shards": 16, "batch_size": 32}
	}`
	got, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Interfaces: []Interface{{Name: "eth0", Zone: "a"}, {Name: "eth1", Zone: "b"}},
		Zones:      []Zone{{"a"}, {"b"}},
		Policies: []Policy{{Name: "p", FromZone: "a", ToZone: "b", Sources: []string{"10.0.0.0/8"}, Destinations: []string{"10.1.0.1"},
			Protocol: ProtoUDP, DestinationPorts: []PortRange{{53, 53}, {1000, 2000}}, Action: ActionAllow}},
		Forwarding:    Forwarding{Routes: []Route{{"10.9.0.0/16", "eth1", "10.1.0.254"}}},
		Tables:        Tables{1000, 64, 32},
		Timeouts:      Timeouts{TCP: Duration(time.Hour), UDP: Duration(30 * time.Second), ICMP: Duration(5 * time.Second), Other: Duration(time.Minute)},
		PortMirroring: []MirrorRule{{"eth0", "span0", 10}},
		Userspace:     UserspaceOpts{4096, 1024, []int{0}, 16, 32},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decode (-want +got):\n%s", diff)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"unknown field", `{"interfacez": []}`, `unknown field "interfacez"`},
		{"bad port", `{"policies": [{"destination_ports": ["http"]}]}`, `not a port number`},
		{"port overflow", `{"policies": [{"destination_ports": [70000]}]}`, `not a port number`},
		{"bad duration", `{"timeouts": {"tcp": "soon"}}`, `duration`},
		{"trailing", `{"zones": []} {}`, `trailing data`},
		{"not an object", `[]`, `cannot unmarshal`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.doc))
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseConfig(%s) = %v, want an invalid-config error containing %q", tt.doc, err, tt.want)
			}
		})
	}
}

func TestFeatures(t *testing.T) {
	base := func() *Config {
		return &Config{Interfaces: []Interface{{Name: "eth0", Zone: "z"}}, Zones: []Zone{{"z"}}}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want []Feature
	}{
		{"minimal", func(*Config) {}, []Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding}},
		{"policy", func(c *Config) { c.Policies = []Policy{{FromZone: "z", ToZone: "z", Action: ActionAllow}} },
			[]Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeatureStatefulPolicy}},
		{"ports", func(c *Config) {
			c.Policies = []Policy{{FromZone: "z", ToZone: "z", Protocol: ProtoTCP, DestinationPorts: []PortRange{{1, 1}}, Action: ActionAllow}}
		}, []Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeaturePortPolicy, FeatureStatefulPolicy}},
		{"routes", func(c *Config) { c.Forwarding.Routes = []Route{{"10.0.0.0/8", "eth0", ""}} },
			[]Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeatureStaticRoutes}},
		{"mirror all", func(c *Config) { c.PortMirroring = []MirrorRule{{"eth0", "m", 1}} },
			[]Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeaturePortMirroring}},
		{"mirror sampled", func(c *Config) { c.PortMirroring = []MirrorRule{{"eth0", "m", 2}} },
			[]Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeatureMirrorSampling, FeaturePortMirroring}},
		{"queues", func(c *Config) { c.Userspace.Queues = []int{0} },
			[]Feature{FeatureIPv4Forwarding, FeatureIPv6Forwarding, FeatureQueueSelection}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(c)
			if diff := cmp.Diff(tt.want, c.Features()); diff != "" {
				t.Errorf("Features (-want +got):\n%s", diff)
			}
		})
	}
	// Every feature is reachable from some config, so the gate's tables
	// can cover them all.
	full := validConfig().Features()
	for _, f := range AllFeatures {
		if f == FeatureStatefulPolicy || f == FeaturePortPolicy || f == FeatureStaticRoutes ||
			f == FeaturePortMirroring || f == FeatureMirrorSampling || f == FeatureQueueSelection ||
			f == FeatureIPv4Forwarding || f == FeatureIPv6Forwarding {
			found := false
			for _, g := range full {
				found = found || g == f
			}
			if !found {
				t.Errorf("feature %s not produced by the full config", f)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	var c Config
	got := []uint64{uint64(c.Tables.SessionsOrDefault()), uint64(c.Tables.FlowCacheOrDefault()), uint64(c.Tables.NeighborsOrDefault()),
		uint64(c.Userspace.FramesOrDefault()), uint64(c.Userspace.RingSizeOrDefault()), uint64(c.Userspace.ShardsOrDefault()), uint64(c.Userspace.BatchOrDefault()),
		uint64(c.Timeouts.For(6)), uint64(c.Timeouts.For(17)), uint64(c.Timeouts.For(1)), uint64(c.Timeouts.For(58)), uint64(c.Timeouts.For(47))}
	want := []uint64{DefaultSessions, DefaultFlowCache, DefaultNeighbors, DefaultUMEMFrames, DefaultRingSize, DefaultSessionShards, DefaultBatchSize,
		uint64(DefaultTCPTimeout), uint64(DefaultUDPTimeout), uint64(DefaultICMPTimeout), uint64(DefaultICMPTimeout), uint64(DefaultOtherTimeout)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	c.Timeouts.UDP = Duration(time.Second)
	if c.Timeouts.For(17) != time.Second {
		t.Errorf("UDP timeout override ignored")
	}
}

func TestCloneIsDeep(t *testing.T) {
	a := validConfig()
	b := a.Clone()
	b.Policies[0].Sources[0] = "changed"
	b.Interfaces[0].Name = "changed"
	b.Userspace.Queues[0] = 9
	b.PortMirroring[0].Rate = 9
	if diff := cmp.Diff(validConfig(), a); diff != "" {
		t.Errorf("mutating the clone changed the original (-want +got):\n%s", diff)
	}
	var nilCfg *Config
	if nilCfg.Clone() != nil {
		t.Error("Clone of nil is not nil")
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3/8": "10.0.0.0/8", "10.1.2.3": "10.1.2.3/32", "2001:db8::1": "2001:db8::1/128", "2001:db8::1/32": "2001:db8::/32",
	} {
		p, err := ParsePrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	seed, _ := json.Marshal(validConfig())
	f.Add(seed)
	f.Add([]byte(`{"interfaces":[{"name":"a","zone":"z"}],"zones":[{"name":"z"}],"port_mirroring":[{"input":"a","output":"b","rate":-1}]}`))
	f.Add([]byte(`{"policies":[{"destination_ports":["1-","-2",65535]}]}`))
	f.Add([]byte(`{"userspace":{"ring_size":0,"frames_per_binding":4294967295}}`))
	f.Add([]byte(`{"interfaces":[{"name":"a","zone":"z"}],"zones":[{"name":"z"}],"nat":[{"type":"source","from_zone":"z","to_zone":"z","pool":["10.0.0.0/30"],"ports":"1-9"},{"type":"destination","destination":"1.2.3.4","protocol":"tcp","destination_ports":80,"translate_to":"10.0.0.1","translate_port":8080}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			for _, p := range ce.Problems {
				if p.Field == "" || p.Message == "" {
					t.Fatalf("problem without field or message: %+v", p)
				}
			}
			return
		}
		// A valid config survives a round trip and stays valid.
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("re-parse of a valid config failed: %v\n%s", err, b)
		}
		// omitempty turns an empty list into an absent one: same meaning.
		if diff := cmp.Diff(c, c2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip changed the config (-a +b):\n%s", diff)
		}
		_ = c.Features()
	})
}

// TestValidateNAT breaks NAT rules one field at a time.
func TestValidateNAT(t *testing.T) {
	base := func() *Config {
		c := validConfig()
		c.NAT = []NATRule{
			{Name: "out", Type: NATSource, FromZone: "trust", ToZone: "untrust", Masquerade: true},
			{Type: NATSource, FromZone: "trust", ToZone: "untrust", Sources: []string{"10.1.0.0/16"}, Pool: []string{"198.51.100.0/30", "198.51.100.9"}, Ports: PortRange{2000, 2015}, Protocol: ProtoUDP},
			{Name: "web", Type: NATDestination, FromZone: "untrust", Destination: "198.51.100.1", Protocol: ProtoTCP, DestinationPorts: PortRange{8080, 8080}, TranslateTo: "10.0.0.80", TranslatePort: 80},
			{Type: NATDestination, Destination: "198.51.100.2", TranslateTo: "10.0.0.2"},
		}
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid NAT rejected: %v", err)
	}
	if got := base().NAT[1]; len(PoolAddresses(got.Pool)) != 3 {
		t.Errorf("pool %v expands to %v, want 198.51.100.1, .2 and .9", got.Pool, PoolAddresses(got.Pool))
	}
	tests := []struct {
		name   string
		break_ func(c *Config)
		want   []string
	}{
		{"no type", func(c *Config) { c.NAT[0].Type = "" }, []string{"nat[0].type"}},
		{"bad type", func(c *Config) { c.NAT[0].Type = "both" }, []string{"nat[0].type"}},
		{"snat without zones", func(c *Config) { c.NAT[0].FromZone, c.NAT[0].ToZone = "", "nowhere" }, []string{"nat[0].from_zone", "nat[0].to_zone"}},
		{"snat pool and masquerade", func(c *Config) { c.NAT[0].Pool = []string{"198.51.100.5"} }, []string{"nat[0].pool"}},
		{"snat neither", func(c *Config) { c.NAT[0].Masquerade = false }, []string{"nat[0].pool"}},
		{"snat bad pool", func(c *Config) { c.NAT[1].Pool = []string{"x"} }, []string{"nat[1].pool[0]"}},
		{"snat huge pool", func(c *Config) { c.NAT[1].Pool = []string{"10.0.0.0/16"} }, []string{"nat[1].pool"}},
		{"snat reversed ports", func(c *Config) { c.NAT[1].Ports = PortRange{9, 1} }, []string{"nat[1].ports"}},
		{"snat with dnat fields", func(c *Config) { c.NAT[0].TranslateTo = "10.0.0.1" }, []string{"nat[0].translate_to"}},
		{"dnat without addresses", func(c *Config) { c.NAT[2].Destination, c.NAT[2].TranslateTo = "", "x" }, []string{"nat[2].destination", "nat[2].translate_to"}},
		{"dnat ports without proto", func(c *Config) { c.NAT[3].DestinationPorts = PortRange{1, 2} }, []string{"nat[3].destination_ports"}},
		{"dnat tcp without ports", func(c *Config) { c.NAT[2].DestinationPorts = PortRange{} }, []string{"nat[2].destination_ports"}},
		{"dnat new port for a range", func(c *Config) { c.NAT[2].DestinationPorts = PortRange{8080, 8081} }, []string{"nat[2].translate_port"}},
		{"dnat to_zone", func(c *Config) { c.NAT[2].ToZone = "trust" }, []string{"nat[2].to_zone"}},
		{"dnat families", func(c *Config) { c.NAT[3].TranslateTo = "2001:db8::1" }, []string{"nat[3].translate_to"}},
		{"dnat with a pool", func(c *Config) { c.NAT[2].Masquerade = true }, []string{"nat[2].pool"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.break_(c)
			var ce *ConfigError
			if err := c.Validate(); !errors.As(err, &ce) {
				t.Fatalf("Validate = %v", err)
			}
			var got []string
			for _, p := range ce.Problems {
				got = append(got, p.Field)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("fields (-want +got):\n%s\n%v", diff, ce)
			}
		})
	}
	// IPv6 in a rule is valid config, but a feature no backend has.
	c := base()
	c.NAT[3].Destination, c.NAT[3].TranslateTo = "2001:db8::1", "fd00::1"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.Features(), FeatureNATv6) || !slices.Contains(c.Features(), FeatureSourceNAT) || !slices.Contains(c.Features(), FeatureDestinationNAT) {
		t.Errorf("features %v lack the NAT ones", c.Features())
	}
}
