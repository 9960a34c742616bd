package dataplane

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is the whole desired state of a dataplane. The zero value of every
// optional field means "use the default"; see the Default* constants.
//
// Semantics every backend implements (a conformance test runs the same
// traffic through both backends and compares the verdicts):
//   - Each managed interface belongs to exactly one zone. Interfaces are
//     named as the kernel names them and resolved when the config is
//     applied; a name that does not resolve fails Apply with a
//     *ConfigError naming interfaces[i].name.
//   - A packet from an interface in zone A that is routed out of an
//     interface in zone B is checked against the policies with FromZone A
//     and ToZone B, in config order; the first match decides, allow or
//     deny. No match: deny. Intra-zone traffic (A == B) needs its own
//     A -> A policy. Traffic routed out of an unmanaged interface is
//     dropped: routing around the zones would bypass the policy.
//   - Sources and Destinations: empty matches any address; otherwise at
//     least one prefix of the packet's address family must contain the
//     address. The family is the IP version of the packet: an IPv4-mapped
//     IPv6 address is IPv6.
//   - Protocol: empty or any matches all; icmp is protocol 1 only (never
//     IPv6), icmpv6 is 58. Ports apply to tcp and udp only; ICMP echo ids
//     are never compared with ports; a non-first fragment has no ports and
//     never matches a policy with ports.
//   - An allowed packet that starts a flow creates a session; packets of
//     that flow in either direction then pass without a policy lookup until
//     the session ends (session.go: TCP states, timeouts per state, a full
//     table). An Apply ends the sessions its policy would deny, unless
//     sessions.keep_on_policy_change keeps them until they idle out.
//   - Non-IP traffic (ARP, IPv6 neighbour discovery) and traffic addressed
//     to the firewall itself go to the kernel.
type Config struct {
	Interfaces    []Interface   `json:"interfaces"`
	Zones         []Zone        `json:"zones"`
	Policies      []Policy      `json:"policies,omitempty"`
	Forwarding    Forwarding    `json:"forwarding,omitzero"`
	Tables        Tables        `json:"tables,omitzero"`
	Timeouts      Timeouts      `json:"timeouts,omitzero"`
	PortMirroring []MirrorRule  `json:"port_mirroring,omitempty"`
	NAT           []NATRule     `json:"nat,omitempty"`
	Sessions      SessionOpts   `json:"sessions,omitzero"`
	Userspace     UserspaceOpts `json:"userspace,omitzero"`
}

// Interface is a managed network interface, named as the kernel names it.
// It is resolved to an ifindex when the config is applied.
type Interface struct {
	Name string `json:"name"`
	Zone string `json:"zone"`
	// Attach forces how the eBPF backend hooks into this interface:
	// "xdp" (native XDP), "tc" (clsact, skb-based) or "auto" / empty, the
	// default: the capability gate chooses per interface and says why
	// (XDP where frames survive it and it wins, TC where offloaded
	// checksums, GSO or a peer without NAPI would break it). The userspace
	// backend always attaches an XDP shim and refuses "tc".
	Attach AttachMode `json:"attach,omitempty"`
}

// AttachMode says how a program is hooked into an interface.
type AttachMode string

const (
	AttachAuto AttachMode = "auto"
	AttachXDP  AttachMode = "xdp"
	AttachTC   AttachMode = "tc"
)

// Zone is a named group of interfaces that policies refer to.
type Zone struct {
	Name string `json:"name"`
}

// Action is what a policy does with a matching flow.
type Action string

const (
	ActionAllow Action = "allow"
	ActionDeny  Action = "deny"
)

// Protocol restricts a policy to one transport protocol.
type Protocol string

const (
	ProtoAny    Protocol = "any"
	ProtoTCP    Protocol = "tcp"
	ProtoUDP    Protocol = "udp"
	ProtoICMP   Protocol = "icmp"
	ProtoICMPv6 Protocol = "icmpv6"
)

// Number returns the IP protocol number, 0 for ProtoAny.
func (p Protocol) Number() uint8 {
	switch p {
	case ProtoTCP:
		return 6
	case ProtoUDP:
		return 17
	case ProtoICMP:
		return 1
	case ProtoICMPv6:
		return 58
	}
	return 0
}

// Policy is one ordered rule for a zone pair. Empty prefix lists match any
// address; an empty port list matches any port. Ports apply to TCP and UDP
// only, so a policy with ports needs protocol tcp or udp.
type Policy struct {
	Name             string      `json:"name,omitempty"`
	FromZone         string      `json:"from_zone"`
	ToZone           string      `json:"to_zone"`
	Sources          []string    `json:"sources,omitempty"`
	Destinations     []string    `json:"destinations,omitempty"`
	Protocol         Protocol    `json:"protocol,omitempty"` // empty = any
	DestinationPorts []PortRange `json:"destination_ports,omitempty"`
	Action           Action      `json:"action"`
}

// PortRange is an inclusive range of ports. In JSON it is a number (80) or a
// string ("80" or "8000-8080").
type PortRange struct {
	First, Last uint16
}

func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether port p is in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// MarshalJSON encodes the range as a string.
func (r PortRange) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON accepts 80, "80" or "8000-8080". Range checks (First <= Last,
// non-zero) are left to Validate so that every problem is reported together;
// only values that cannot be a port at all fail here.
func (r *PortRange) UnmarshalJSON(b []byte) error {
	var s string
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	} else {
		s = string(b)
	}
	pr, err := ParsePortRange(s)
	if err != nil {
		return err
	}
	*r = pr
	return nil
}

// ParsePortRange parses "80" or "8000-8080".
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := strconv.ParseUint(strings.TrimSpace(first), 10, 16)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: not a port number", s)
	}
	b := a
	if isRange {
		b, err = strconv.ParseUint(strings.TrimSpace(last), 10, 16)
		if err != nil {
			return PortRange{}, fmt.Errorf("port range %q: not a port number", s)
		}
	}
	return PortRange{First: uint16(a), Last: uint16(b)}, nil
}

// Forwarding says how egress is chosen for allowed packets.
//
// By default the host's routing and neighbour tables decide (the kernel FIB
// in the dataplane's network namespace). Routes adds static routes that win
// over the host's; a backend that cannot do them refuses the config.
type Forwarding struct {
	Routes []Route `json:"routes,omitempty"`
}

// Route sends Destination out of Interface, through Gateway when set.
type Route struct {
	Destination string `json:"destination"`
	Interface   string `json:"interface"`
	Gateway     string `json:"gateway,omitempty"`
}

// Table size defaults and limits.
const (
	DefaultSessions  = 65536
	DefaultFlowCache = 4096
	DefaultNeighbors = 4096
	// MaxTableEntries bounds every table so a typo cannot ask the kernel
	// for terabytes.
	MaxTableEntries = 1 << 26
)

// Tables sizes the bounded tables. Zero means the default. Sessions is the
// session table's capacity in flows; the eBPF backend keeps one hash table
// of that size per address family (so an IPv6 flood cannot take IPv4
// sessions' room), the userspace backend one table for both families,
// split in userspace.session_shards shards that fill independently.
type Tables struct {
	Sessions  uint32 `json:"sessions,omitempty"`
	FlowCache uint32 `json:"flow_cache,omitempty"`
	Neighbors uint32 `json:"neighbors,omitempty"`
}

// SessionsOrDefault returns the session capacity to use.
func (t Tables) SessionsOrDefault() uint32 { return orDefault(t.Sessions, DefaultSessions) }

// FlowCacheOrDefault returns the flow cache capacity to use.
func (t Tables) FlowCacheOrDefault() uint32 { return orDefault(t.FlowCache, DefaultFlowCache) }

// NeighborsOrDefault returns the neighbour table capacity to use.
func (t Tables) NeighborsOrDefault() uint32 { return orDefault(t.Neighbors, DefaultNeighbors) }

func orDefault(v, d uint32) uint32 {
	if v == 0 {
		return d
	}
	return v
}

func orDefaultDur(v Duration, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return time.Duration(v)
}

// Duration is a time.Duration written in JSON as a Go duration string
// ("90s", "2h").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// MaxMirrorRate is the largest sampling rate: the kernel-side field is 32
// bits wide and a larger value must be an error, not a silent wrap.
const MaxMirrorRate = 1<<32 - 1

// MirrorRule clones packets arriving on Input to Output (port mirroring).
// Rate 0 or 1 mirrors every packet; N mirrors about one in N, counted per
// binding (userspace) or per CPU and ingress (eBPF). The clone is the whole
// L2 frame as received. Each input has at most one rule.
type MirrorRule struct {
	Input  string `json:"input"`
	Output string `json:"output"`
	Rate   int64  `json:"rate,omitempty"`
}

// Userspace defaults and limits.
const (
	DefaultUMEMFrames    = 4096
	DefaultRingSize      = 2048
	DefaultSessionShards = 64
	DefaultBatchSize     = 64
	MaxUMEMFrames        = 1 << 20
	MaxRingSize          = 1 << 16
)

// UserspaceOpts tunes the AF_XDP backend; the eBPF backend ignores it.
type UserspaceOpts struct {
	// FramesPerBinding is the UMEM size, in frames, of each socket.
	FramesPerBinding uint32 `json:"frames_per_binding,omitempty"`
	// RingSize is the size of each fill, RX, TX and completion ring.
	// A power of two.
	RingSize uint32 `json:"ring_size,omitempty"`
	// Queues lists the RX queues to bind on each interface; empty means
	// every queue the interface has.
	Queues []int `json:"queues,omitempty"`
	// SessionShards is the number of session table shards, a power of two.
	SessionShards uint32 `json:"session_shards,omitempty"`
	// BatchSize is how many frames a worker takes from a ring at once.
	BatchSize uint32 `json:"batch_size,omitempty"`
}

// FramesOrDefault returns the UMEM frames per binding to use.
func (u UserspaceOpts) FramesOrDefault() uint32 {
	return orDefault(u.FramesPerBinding, DefaultUMEMFrames)
}

// RingSizeOrDefault returns the ring size to use.
func (u UserspaceOpts) RingSizeOrDefault() uint32 { return orDefault(u.RingSize, DefaultRingSize) }

// ShardsOrDefault returns the number of session shards to use.
func (u UserspaceOpts) ShardsOrDefault() uint32 {
	return orDefault(u.SessionShards, DefaultSessionShards)
}

// BatchOrDefault returns the RX batch size to use.
func (u UserspaceOpts) BatchOrDefault() uint32 { return orDefault(u.BatchSize, DefaultBatchSize) }

// ParseConfig decodes a JSON config strictly (unknown fields are errors) and
// validates it. Decoding errors and validation problems both come back as a
// *ConfigError.
func ParseConfig(data []byte) (*Config, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, &ConfigError{Problems: []Problem{{Field: "(json)", Message: err.Error()}}}
	}
	if dec.More() {
		return nil, &ConfigError{Problems: []Problem{{Field: "(json)", Message: "trailing data after the config object"}}}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Clone returns a deep copy, so a backend can keep the config it applied.
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	out := *c
	out.Interfaces = append([]Interface(nil), c.Interfaces...)
	out.Zones = append([]Zone(nil), c.Zones...)
	out.Policies = make([]Policy, len(c.Policies))
	for i, p := range c.Policies {
		p.Sources = append([]string(nil), p.Sources...)
		p.Destinations = append([]string(nil), p.Destinations...)
		p.DestinationPorts = append([]PortRange(nil), p.DestinationPorts...)
		out.Policies[i] = p
	}
	if c.Policies == nil {
		out.Policies = nil
	}
	out.Forwarding.Routes = append([]Route(nil), c.Forwarding.Routes...)
	out.PortMirroring = append([]MirrorRule(nil), c.PortMirroring...)
	if c.NAT != nil {
		out.NAT = make([]NATRule, len(c.NAT))
		for i, r := range c.NAT {
			r.Sources = append([]string(nil), r.Sources...)
			r.Pool = append([]string(nil), r.Pool...)
			out.NAT[i] = r
		}
	}
	out.Userspace.Queues = append([]int(nil), c.Userspace.Queues...)
	return &out
}

// ParsePrefix parses a policy address: a CIDR prefix or a bare address
// (a host prefix). The prefix is returned masked.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address %q: zones are not allowed", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
